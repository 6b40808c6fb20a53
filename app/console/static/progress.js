// Live progress of a running job: poll its state and update the page in place; when the job
// ends, reload once so the page shows its gate checks and evidence.
"use strict";
(function () {
  // A form that asks first (the cancel button): scripts only, the CSP allows no inline handler.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  const box = document.getElementById("progress");
  if (!box || box.dataset.running !== "true") return;
  const field = (name) => box.querySelector(`[data-field="${name}"]`);
  async function poll() {
    let job;
    try {
      const response = await fetch(`/console/api/jobs/${box.dataset.job}`, { credentials: "same-origin" });
      if (response.status === 401) {
        field("error").textContent = "Your session has ended: sign in again to follow the job.";
        field("error").hidden = false;
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      job = await response.json();
    } catch (err) {
      setTimeout(poll, 3000); // a restart of the API, a dropped connection: keep trying
      return;
    }
    field("status").textContent = job.status;
    const badge = document.getElementById("status-badge");
    badge.textContent = job.status;
    badge.className = `status status-${job.status}`;
    document.getElementById("attempts").textContent = job.attempts;
    if (job.started_at) document.getElementById("started").textContent = job.started_at;
    field("phase").textContent = job.phase || "—";
    field("percent").textContent = `${Math.round(job.progress * 100)}%`;
    field("bar").value = job.progress;
    if (job.error) {
      field("error").textContent = job.error;
      field("error").hidden = false;
    }
    if (job.terminal) {
      field("done").hidden = false;
      setTimeout(() => window.location.reload(), 800);
      return;
    }
    setTimeout(poll, 1000);
  }
  poll();
})();
