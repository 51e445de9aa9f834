// Task pages: collect the answer (mouse or keys), post it to the JSON API, then load the next task.
// Model text is never inserted as HTML: the server renders it escaped, and this file only uses textContent.
"use strict";

(function () {
  const task = document.getElementById("task");
  if (!task || !document.getElementById("submit")) return;

  const kind = task.dataset.kind;
  const campaignId = task.dataset.campaign;
  const assignmentId = task.dataset.assignment;
  const started = Date.now();
  const statusEl = document.getElementById("status");
  const submitBtn = document.getElementById("submit");
  const state = { ranks: {}, unusable: {}, choice: null, thumb: null };

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", !!isError);
  }

  function typing(event) {
    const tag = event.target.tagName;
    return tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT";
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) {
      let detail = response.status + " " + response.statusText;
      try {
        const data = await response.json();
        detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      } catch (e) { /* keep the status line */ }
      throw new Error(detail);
    }
    return response.status === 204 ? null : response.json();
  }

  // ---- rank ------------------------------------------------------------------------------------
  const cards = Array.from(document.querySelectorAll("li.completion"));
  let focusIndex = 0;

  function focusCard(i) {
    if (!cards.length) return;
    focusIndex = (i + cards.length) % cards.length;
    cards.forEach((c, j) => c.classList.toggle("focused", j === focusIndex));
    cards[focusIndex].focus();
  }

  function setRank(card, rank) {
    state.ranks[card.dataset.index] = rank;
    card.querySelectorAll(".rank-btn").forEach((b) => b.setAttribute("aria-pressed", String(Number(b.dataset.rank) === rank)));
    refresh();
  }

  function toggleUnusable(card) {
    const box = card.querySelector(".unusable");
    box.checked = !box.checked;
    onUnusable(card, box);
  }

  function onUnusable(card, box) {
    state.unusable[card.dataset.index] = box.checked;
    card.classList.toggle("unusable-on", box.checked);
  }

  cards.forEach((card, i) => {
    card.querySelectorAll(".rank-btn").forEach((b) => b.addEventListener("click", () => { focusCard(i); setRank(card, Number(b.dataset.rank)); }));
    const box = card.querySelector(".unusable");
    box.addEventListener("change", () => onUnusable(card, box));
    card.addEventListener("focus", () => { focusIndex = i; cards.forEach((c, j) => c.classList.toggle("focused", j === i)); });
  });

  function rankKeys(event) {
    if (event.key === "j" || event.key === "ArrowDown") { focusCard(focusIndex + 1); return true; }
    if (event.key === "k" || event.key === "ArrowUp") { focusCard(focusIndex - 1); return true; }
    if (event.key === "x") { toggleUnusable(cards[focusIndex]); return true; }
    const n = Number(event.key);
    if (Number.isInteger(n) && n >= 1 && n <= cards.length) {
      setRank(cards[focusIndex], n);
      if (focusIndex < cards.length - 1) focusCard(focusIndex + 1);
      return true;
    }
    return false;
  }

  function rankAnswer() {
    const size = cards.length;
    const ranks = [], unusable = [];
    for (let i = 0; i < size; i++) {
      if (!(String(i) in state.ranks)) return null;
      ranks.push(state.ranks[String(i)]);
      unusable.push(!!state.unusable[String(i)]);
    }
    return { ranks: ranks, unusable: unusable };
  }

  // ---- pair --------------------------------------------------------------------------------------
  const sides = {};
  document.querySelectorAll(".side").forEach((el) => { sides[el.dataset.side] = el; });

  function choose(side) {
    if (side === "tie" || side === "both_bad") state.choice = side;
    else state.choice = sides[side].dataset.index === "0" ? "A" : "B";
    document.querySelectorAll(".choose").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.side === side)));
    Object.keys(sides).forEach((s) => sides[s].classList.toggle("selected", s === side));
    refresh();
  }
  document.querySelectorAll(".choose").forEach((b) => b.addEventListener("click", () => choose(b.dataset.side)));

  function pairKeys(event) {
    const map = { a: "left", 1: "left", ArrowLeft: "left", b: "right", 2: "right", ArrowRight: "right", t: "tie", x: "both_bad" };
    if (!(event.key in map)) return false;
    choose(map[event.key]);
    return true;
  }

  // ---- thumbs ------------------------------------------------------------------------------------
  function thumb(value) {
    state.thumb = value;
    document.querySelectorAll(".thumb").forEach((b) => b.setAttribute("aria-pressed", String(Number(b.dataset.thumb) === value)));
    refresh();
  }
  document.querySelectorAll(".thumb").forEach((b) => b.addEventListener("click", () => thumb(Number(b.dataset.thumb))));

  function thumbKeys(event) {
    if (event.key === "u" || event.key === "+") { thumb(1); return true; }
    if (event.key === "d" || event.key === "-") { thumb(0); return true; }
    return false;
  }

  // ---- red-team ----------------------------------------------------------------------------------
  const generateBtn = document.getElementById("generate");
  async function generate() {
    const prompt = document.getElementById("rt-prompt").value;
    if (!prompt.trim()) { setStatus("write a prompt first", true); return; }
    setStatus("asking the model…");
    try {
      const data = await post("/api/campaigns/" + campaignId + "/generate", { prompt: prompt });
      document.getElementById("rt-response").value = data.response;
      setStatus("");
    } catch (e) { setStatus(e.message, true); }
  }
  if (generateBtn) generateBtn.addEventListener("click", generate);

  function redteamAnswer() {
    const harm = document.querySelector("input[name=harm]:checked");
    return {
      prompt: document.getElementById("rt-prompt").value,
      response: document.getElementById("rt-response").value,
      harm: harm ? Number(harm.value) : null,
      better_response: document.getElementById("rt-better").value || null,
    };
  }

  // ---- submit ------------------------------------------------------------------------------------
  function answer() {
    if (kind === "rank") return rankAnswer();
    if (kind === "pair") return state.choice ? { choice: state.choice } : null;
    if (kind === "thumbs") return state.thumb === null ? null : { thumb: state.thumb };
    return redteamAnswer();
  }

  function refresh() {
    if (kind !== "redteam") submitBtn.disabled = answer() === null;
  }

  let busy = false;
  async function submit() {
    const body = answer();
    if (body === null || busy) { if (body === null) setStatus("answer first", true); return; }
    body.note = document.getElementById("note").value;
    body.duration_ms = Date.now() - started;
    busy = true;
    submitBtn.disabled = true;
    setStatus("saving…");
    const url = assignmentId ? "/api/assignments/" + assignmentId + "/label" : "/api/campaigns/" + campaignId + "/redteam";
    try {
      await post(url, body);
      setStatus("saved");
      window.location.reload();
    } catch (e) {
      busy = false;
      submitBtn.disabled = false;
      setStatus(e.message, true);
    }
  }

  async function skip() {
    if (!assignmentId || busy) return;
    busy = true;
    try {
      await post("/api/assignments/" + assignmentId + "/skip");
      window.location.reload();
    } catch (e) { busy = false; setStatus(e.message, true); }
  }

  submitBtn.addEventListener("click", submit);
  const skipBtn = document.getElementById("skip");
  if (skipBtn) skipBtn.addEventListener("click", skip);

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey && event.key === "Enter") { event.preventDefault(); submit(); return; }
    if (kind === "redteam") {
      if (event.ctrlKey && event.key === "g") { event.preventDefault(); generate(); return; }
      if (event.altKey && /^[0-4]$/.test(event.key)) {
        event.preventDefault();
        document.querySelector("input[name=harm][value='" + event.key + "']").checked = true;
      }
      return;
    }
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    let handled = false;
    if (event.key === "Enter") { submit(); handled = true; }
    else if (event.key === "s") { skip(); handled = true; }
    else if (event.key === "?") { const d = document.querySelector("details.help"); d.open = !d.open; handled = true; }
    else if (kind === "rank") handled = rankKeys(event);
    else if (kind === "pair") handled = pairKeys(event);
    else if (kind === "thumbs") handled = thumbKeys(event);
    if (handled) event.preventDefault();
  });

  if (kind === "rank") focusCard(0);
  refresh();
})();
