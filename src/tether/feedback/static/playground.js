// The playground: post a prompt (a `generate` job for the worker), poll the job, show each model's answer as
// it comes, move the KL slider between the models saved along the way, and send thumbs.
// Model text is untrusted: it is only ever set with textContent.
"use strict";

(function () {
  const form = document.getElementById("playground-form");
  const answersEl = document.getElementById("answers");
  if (!form || !answersEl) return;

  const promptEl = document.getElementById("prompt");
  const button = document.getElementById("generate");
  const statusEl = document.getElementById("pg-status");
  const progressBox = document.getElementById("pg-progress");
  const bar = document.getElementById("pg-bar");
  const messageEl = document.getElementById("pg-message");
  const slider = document.getElementById("kl-slider");
  const sliderLabel = document.getElementById("slider-label");
  const sliderModels = JSON.parse(answersEl.dataset.models || "[]");
  const state = { job: null, answers: {}, done: false, thumbs: {} };

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", !!isError);
  }

  function fmt(x) {
    return x === null || x === undefined ? "n/a" : Number(x).toPrecision(3);
  }

  async function call(method, url, body) {
    const response = await fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: body ? { "Content-Type": "application/json", Accept: "application/json" } : { Accept: "application/json" },
      body: body ? JSON.stringify(body) : undefined,
    });
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    if (!response.ok) {
      const detail = data && data.detail;
      const message = typeof detail === "string" ? detail : (detail ? JSON.stringify(detail) : response.statusText);
      throw new Error(message + " (HTTP " + response.status + ")");
    }
    return data;
  }

  function render(card) {
    const name = card.dataset.model;
    const answer = state.answers[name];
    const model = sliderModels.find((m) => m.name === name);
    card.querySelector(".name").textContent = name;
    card.querySelector(".kl").textContent = "KL " + fmt(model ? model.kl : null);
    card.querySelector(".reward").textContent = answer && answer.reward !== null ? "reward " + fmt(answer.reward) : "";
    card.querySelector(".judge").textContent = answer && answer.judge !== null ? "judge " + fmt(answer.judge) : "";
    const text = card.querySelector(".text");
    text.textContent = answer && answer.text !== null ? answer.text : (state.job && !state.done ? "waiting for the worker…" : "");
    const key = state.job + ":" + name;
    card.querySelectorAll(".thumb").forEach((b) => {
      b.disabled = !(state.done && answer && answer.text !== null);
      b.setAttribute("aria-pressed", String(state.thumbs[key] === Number(b.dataset.thumb)));
    });
    card.querySelector(".thumb-status").textContent = state.thumbs[key] !== undefined ? "saved" : "";
  }

  function renderAll() {
    answersEl.querySelectorAll(".answer").forEach(render);
  }

  function onSlide() {
    const model = sliderModels[Number(slider.value)];
    if (!model) return;
    const card = answersEl.querySelector(".answer[data-slot=slider]");
    card.dataset.model = model.name;
    sliderLabel.textContent = model.name + " (KL " + fmt(model.kl) + ")";
    render(card);
  }

  async function poll(jobId) {
    if (state.job !== jobId) return; // a newer prompt took over
    let job;
    try {
      job = await call("GET", "/api/jobs/" + encodeURIComponent(jobId));
    } catch (err) {
      setStatus(err.message, true);
      window.setTimeout(() => poll(jobId), 2000);
      return;
    }
    if (state.job !== jobId) return;
    bar.value = job.progress;
    messageEl.textContent = job.status === "queued" ? "queued: waiting for a worker (tether label worker)" : job.message;
    ((job.result && job.result.answers) || []).forEach((a) => { state.answers[a.name] = a; });
    if (job.status === "done" || job.status === "failed") {
      state.done = true;
      button.disabled = false;
      progressBox.hidden = job.status === "done";
      setStatus(job.status === "done" ? "done" : "failed: " + job.error, job.status === "failed");
      renderAll();
      return;
    }
    renderAll();
    window.setTimeout(() => poll(jobId), 700);
  }

  async function generate(event) {
    if (event) event.preventDefault();
    const prompt = promptEl.value;
    if (!prompt.trim()) {
      setStatus("type a prompt first", true);
      return;
    }
    button.disabled = true;
    setStatus("sending…");
    try {
      const job = await call("POST", "/api/playground/generate", { prompt: prompt, mine: form.dataset.mine === "1" });
      state.job = job.id;
      state.answers = {};
      state.done = false;
      bar.value = 0;
      progressBox.hidden = false;
      setStatus("job " + job.id + " queued");
      renderAll();
      poll(job.id);
    } catch (err) {
      button.disabled = false;
      setStatus(err.message, true);
    }
  }

  async function thumb(event) {
    const b = event.target.closest(".thumb");
    if (!b || b.disabled) return;
    const card = b.closest(".answer");
    const name = card.dataset.model;
    const value = Number(b.dataset.thumb);
    const status = card.querySelector(".thumb-status");
    status.textContent = "saving…";
    try {
      const ack = await call("POST", "/api/playground/thumbs", { job_id: state.job, model: name, thumb: value });
      state.thumbs[state.job + ":" + name] = value;
      renderAll();
      card.querySelector(".thumb-status").textContent = "saved to " + ack.campaign;
    } catch (err) {
      status.textContent = err.message;
      status.classList.add("error");
    }
  }

  form.addEventListener("submit", generate);
  promptEl.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) generate(event);
  });
  answersEl.addEventListener("click", thumb);
  if (slider) {
    slider.addEventListener("input", onSlide);
    onSlide();
  }
  renderAll();
})();
