// The admin page's jobs list: refreshes its rows from GET /api/jobs, every 2 s while a job is queued or
// running, every 15 s otherwise. Job text (titles, errors) is set with textContent only.
"use strict";

(function () {
  const table = document.getElementById("jobs-table");
  if (!table) return;
  const body = table.querySelector("tbody");
  const ACTIVE = new Set(["queued", "running"]);

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (text !== null) td.textContent = text;
    return td;
  }

  function row(job) {
    const tr = document.createElement("tr");
    tr.dataset.job = String(job.id);
    tr.dataset.status = job.status;
    tr.appendChild(cell(String(job.id)));
    tr.appendChild(cell(job.title, "job-title"));
    tr.appendChild(cell(job.status, "job-status status-" + job.status));
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = job.progress;
    bar.textContent = Math.round(job.progress * 100) + "%";
    const progressCell = cell(null);
    progressCell.appendChild(bar);
    tr.appendChild(progressCell);
    const detail = cell(null, "job-detail");
    if (job.error) {
      const span = document.createElement("span");
      span.className = "error";
      span.textContent = job.error;
      detail.appendChild(span);
    } else if (job.kind === "sample" && job.result && job.result.campaign_id) {
      const link = document.createElement("a");
      link.href = "/admin/campaigns/" + encodeURIComponent(job.result.campaign_id);
      link.textContent = "campaign " + job.result.campaign;
      detail.appendChild(link);
    } else {
      detail.textContent = job.message;
    }
    tr.appendChild(detail);
    return tr;
  }

  async function refresh() {
    let active = false;
    try {
      const response = await fetch(table.dataset.endpoint, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.ok) {
        const jobs = await response.json();
        body.replaceChildren(...jobs.map(row));
        if (!jobs.length) {
          const empty = document.createElement("tr");
          empty.className = "empty";
          const td = cell("No jobs yet.");
          td.colSpan = 5;
          empty.appendChild(td);
          body.appendChild(empty);
        }
        active = jobs.some((job) => ACTIVE.has(job.status));
      }
    } catch (err) {
      active = true; // the server restarts: try again soon
    }
    window.setTimeout(refresh, active ? 2000 : 15000);
  }

  const anyActive = Array.from(body.querySelectorAll("tr[data-status]")).some((tr) => ACTIVE.has(tr.dataset.status));
  window.setTimeout(refresh, anyActive ? 1000 : 15000);
})();
