// The audit page's chain verification: the server walks the whole hash chain, which can take a
// while on a long log, so the page shows first and the result arrives after.
"use strict";
(async function () {
  const out = document.getElementById("chain");
  if (!out) return;
  try {
    const response = await fetch("/console/api/audit/verify", { credentials: "same-origin" });
    const report = await response.json();
    if (!response.ok) throw new Error(report.detail || `HTTP ${response.status}`);
    if (report.ok) {
      out.textContent = `Hash chain intact: ${report.events_checked} events checked, head #${report.head_seq} (${report.head_hash.slice(0, 16)}…).`;
      out.className = "pass";
    } else {
      const b = report.broken;
      out.textContent = `Hash chain BROKEN at event #${b.seq} (${b.code}): ${b.detail}`;
      out.className = "fail";
    }
  } catch (err) {
    out.textContent = `The chain could not be verified: ${err.message}`;
    out.className = "fail";
  }
})();
