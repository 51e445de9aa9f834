// Task pages: collect the answer (mouse or keys), post it to the JSON API, then load the next task.
// Model text is never inserted as HTML by this file: the server renders it (escaped, or as sanitized
// Markdown), and this file only sets textContent, classes and attributes.
"use strict";

(function () {
  const task = document.getElementById("task");
  if (!task || !document.getElementById("submit")) return;

  const kind = task.dataset.kind;
  const campaignId = task.dataset.campaign;
  const assignmentId = task.dataset.assignment;
  const after = task.dataset.after;
  const started = Date.now();
  const statusEl = document.getElementById("status");
  const reasonEl = document.getElementById("submit-reason");
  const submitBtn = document.getElementById("submit");
  const submitAllowed = !submitBtn.disabled; // a closed campaign's answer cannot be revised
  const layout = document.getElementById("task-layout");
  const state = { ranks: {}, unusable: {}, choice: null, thumb: null };
  let busy = false; // a request is on its way

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", !!isError);
  }

  function typing(event) {
    const target = event.target;
    if (target.tagName === "INPUT") return target.type !== "checkbox" && target.type !== "radio"; // keys still work after ticking a box
    return target.tagName === "TEXTAREA" || target.tagName === "SELECT";
  }

  function stored(key) {
    try { return window.localStorage.getItem(key); } catch (e) { return null; }
  }

  function store(key, value) {
    try { window.localStorage.setItem(key, value); } catch (e) { /* private mode: not remembered */ }
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

  // ---- reading: raw text, side by side, long completions, guidelines drawer -----------------------
  const rawBtn = document.getElementById("toggle-raw");
  function setRaw(on) {
    document.body.classList.toggle("show-raw", on);
    if (rawBtn) rawBtn.setAttribute("aria-pressed", String(on));
    store("tether.raw", on ? "1" : "0");
    measureLong();
  }
  if (rawBtn) rawBtn.addEventListener("click", () => setRaw(!document.body.classList.contains("show-raw")));

  const columnsBtn = document.getElementById("toggle-columns");
  const wide = window.matchMedia("(min-width: 901px)");
  function setColumns(on, remember) {
    layout.classList.toggle("compare", on);
    if (columnsBtn) columnsBtn.setAttribute("aria-pressed", String(on));
    if (remember) store("tether.columns", on ? "1" : "0");
    measureLong();
  }
  if (columnsBtn) columnsBtn.addEventListener("click", () => setColumns(!layout.classList.contains("compare"), true));

  function measureLong() {
    document.querySelectorAll(".completion").forEach((card) => {
      const body = card.querySelector(".body");
      const button = card.querySelector(".expand");
      if (!body || !button) return;
      const expanded = body.classList.contains("expanded");
      button.hidden = !expanded && body.scrollHeight <= body.clientHeight + 2;
      button.textContent = expanded ? "Collapse" : "Show all";
    });
  }
  document.querySelectorAll(".completion .expand").forEach((button) => {
    button.addEventListener("click", () => {
      button.closest(".completion").querySelector(".body").classList.toggle("expanded");
      measureLong();
    });
  });

  const panel = document.getElementById("guidelines-panel");
  const guideBtn = document.getElementById("show-guidelines");
  function setGuidelines(open) {
    panel.classList.toggle("open", open);
    guideBtn.setAttribute("aria-expanded", String(open));
    if (open) panel.scrollIntoView({ block: "nearest" });
  }
  guideBtn.addEventListener("click", () => setGuidelines(!panel.classList.contains("open")));
  document.getElementById("close-guidelines").addEventListener("click", () => setGuidelines(false));

  // ---- rank ------------------------------------------------------------------------------------
  const cards = Array.from(document.querySelectorAll("li.completion"));
  const barRanks = Array.from(document.querySelectorAll(".bar-rank"));
  const tieBox = document.getElementById("tie-ok");
  const tieLabel = document.getElementById("tie-confirm");
  let focusIndex = 0;

  function focusCard(i) {
    if (!cards.length) return;
    focusIndex = (i + cards.length) % cards.length;
    cards.forEach((c, j) => c.classList.toggle("focused", j === focusIndex));
    cards[focusIndex].focus({ preventScroll: true });
    cards[focusIndex].scrollIntoView({ block: "nearest" });
  }

  function setRank(position, rank) {
    const card = cards[position];
    state.ranks[card.dataset.index] = rank;
    card.querySelectorAll(".rank-btn").forEach((b) => b.setAttribute("aria-pressed", String(Number(b.dataset.rank) === rank)));
    barRanks[position].querySelectorAll(".bar-rank-btn").forEach((b) => b.setAttribute("aria-pressed", String(Number(b.dataset.rank) === rank)));
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
    card.querySelectorAll(".rank-btn").forEach((b) => b.addEventListener("click", () => { focusCard(i); setRank(i, Number(b.dataset.rank)); }));
    const box = card.querySelector(".unusable");
    box.addEventListener("change", () => onUnusable(card, box));
    card.addEventListener("focus", () => { focusIndex = i; cards.forEach((c, j) => c.classList.toggle("focused", j === i)); });
  });
  barRanks.forEach((group, i) => {
    group.querySelectorAll(".bar-rank-btn").forEach((b) => b.addEventListener("click", () => setRank(i, Number(b.dataset.rank))));
  });
  if (tieBox) tieBox.addEventListener("change", refresh);

  function rankKeys(event) {
    if (event.key === "j" || event.key === "ArrowDown") { focusCard(focusIndex + 1); return true; }
    if (event.key === "k" || event.key === "ArrowUp") { focusCard(focusIndex - 1); return true; }
    if (event.key === "x") { toggleUnusable(cards[focusIndex]); return true; }
    if (event.key === "e" && tieBox && !tieLabel.hidden) { tieBox.checked = !tieBox.checked; refresh(); return true; }
    const n = Number(event.key);
    if (Number.isInteger(n) && n >= 1 && n <= cards.length) {
      setRank(focusIndex, n);
      if (focusIndex < cards.length - 1) focusCard(focusIndex + 1);
      return true;
    }
    return false;
  }

  function tiedRanks() {
    const seen = {}, tied = [];
    Object.values(state.ranks).forEach((r) => { seen[r] = (seen[r] || 0) + 1; });
    Object.keys(seen).forEach((r) => { if (seen[r] > 1) tied.push(Number(r)); });
    return tied.sort((a, b) => a - b);
  }

  // what keeps the ranking from being sent, in words ("" when it can be sent)
  function rankProblem() {
    const missing = [];
    cards.forEach((card, i) => {
      const has = String(card.dataset.index) in state.ranks;
      barRanks[i].classList.toggle("missing", !has);
      if (!has) missing.push("#" + (i + 1));
    });
    const tied = tiedRanks();
    tieLabel.hidden = tied.length === 0;
    if (!tied.length) tieBox.checked = false;
    if (missing.length) return "give a rank to " + missing.join(", ");
    if (tied.length && !tieBox.checked) return "rank " + tied.join(", ") + " is given more than once: tick “equally good” or change a rank";
    return "";
  }

  function rankAnswer() {
    const ranks = [], unusable = [];
    for (let i = 0; i < cards.length; i++) {
      ranks.push(state.ranks[String(i)]);
      unusable.push(!!state.unusable[String(i)]);
    }
    return { ranks: ranks, unusable: unusable, tie_intended: tiedRanks().length > 0 && tieBox.checked };
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
  function problem() {
    if (kind === "rank") return rankProblem();
    if (kind === "pair") return state.choice ? "" : "choose left, right, tie or both bad";
    if (kind === "thumbs") return state.thumb === null ? "give a thumb up or down" : "";
    return "";
  }

  function answer() {
    if (kind === "rank") return rankAnswer();
    if (kind === "pair") return { choice: state.choice };
    if (kind === "thumbs") return { thumb: state.thumb };
    return redteamAnswer();
  }

  function refresh() {
    const why = problem();
    reasonEl.textContent = why ? "To submit: " + why + "." : "";
    submitBtn.disabled = !submitAllowed || why !== "" || busy;
  }

  async function submit() {
    const why = problem();
    if (why || busy || !submitAllowed) {
      if (why) {
        setStatus("");
        reasonEl.textContent = "To submit: " + why + ".";
        const first = cards.findIndex((c) => !(String(c.dataset.index) in state.ranks));
        if (kind === "rank" && first >= 0) focusCard(first);
      }
      return;
    }
    const body = answer();
    body.note = document.getElementById("note").value;
    body.duration_ms = Date.now() - started;
    busy = true;
    submitBtn.disabled = true;
    setStatus("saving…");
    const url = assignmentId ? "/api/assignments/" + assignmentId + "/label" : "/api/campaigns/" + campaignId + "/redteam";
    try {
      await post(url, body);
      setStatus("saved");
      window.location.replace(after || "/label/" + campaignId);
    } catch (e) {
      busy = false;
      refresh();
      setStatus(e.message, true);
    }
  }

  async function skip() {
    if (!assignmentId || busy || !document.getElementById("skip")) return;
    busy = true;
    try {
      await post("/api/assignments/" + assignmentId + "/skip");
      window.location.replace("/label/" + campaignId + "?skipped=" + assignmentId);
    } catch (e) { busy = false; setStatus(e.message, true); }
  }

  submitBtn.addEventListener("click", submit);
  const skipBtn = document.getElementById("skip");
  if (skipBtn) skipBtn.addEventListener("click", skip);

  // ---- an earlier answer being revised ------------------------------------------------------------
  function prefill(data) {
    if (data.note) document.getElementById("note").value = data.note;
    if (kind === "rank" && data.ranks) {
      cards.forEach((card, i) => {
        const index = Number(card.dataset.index);
        setRank(i, data.ranks[index]);
        if (data.unusable && data.unusable[index]) toggleUnusable(card);
      });
      if (tiedRanks().length) tieBox.checked = true; // it was confirmed when it was given
    } else if (kind === "pair" && data.choice) {
      if (data.choice === "tie" || data.choice === "both_bad") choose(data.choice);
      else choose(Object.keys(sides).find((s) => sides[s].dataset.index === (data.choice === "A" ? "0" : "1")));
    } else if (kind === "thumbs" && data.thumb !== null) {
      thumb(data.thumb);
    } else if (kind === "redteam") {
      document.getElementById("rt-prompt").value = data.prompt || "";
      document.getElementById("rt-response").value = data.response || "";
      document.getElementById("rt-better").value = data.better_response || "";
      const harm = document.querySelector("input[name=harm][value='" + data.harm + "']");
      if (harm) harm.checked = true;
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && panel.classList.contains("open")) { setGuidelines(false); return; }
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
    let handled = true;
    const undo = document.getElementById("undo-skip");
    if (event.key === "Enter") submit();
    else if (event.key === "s") skip();
    else if (event.key === "z" && undo) undo.click();
    else if (event.key === "r" && rawBtn) rawBtn.click();
    else if (event.key === "c" && columnsBtn) columnsBtn.click();
    else if (event.key === "g") guideBtn.click();
    else if (event.key === "?") { const d = document.querySelector("details.help"); d.open = !d.open; }
    else if (kind === "rank") handled = rankKeys(event);
    else if (kind === "pair") handled = pairKeys(event);
    else if (kind === "thumbs") handled = thumbKeys(event);
    else handled = false;
    if (handled) event.preventDefault();
  });

  if (stored("tether.raw") === "1") setRaw(true);
  const columnsPref = stored("tether.columns");
  if (columnsBtn) setColumns(columnsPref === null ? wide.matches : columnsPref === "1", false);
  if (task.dataset.prefill) prefill(JSON.parse(task.dataset.prefill));
  if (kind === "rank") { focusIndex = 0; cards.forEach((c, j) => c.classList.toggle("focused", j === 0)); if (cards.length) cards[0].focus({ preventScroll: true }); }
  refresh();
  measureLong();
  window.addEventListener("resize", measureLong);
})();
