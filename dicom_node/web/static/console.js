// egfr-node console: the queue page refreshes its rows and the health strip in place.
(function () {
  "use strict";
  const table = document.getElementById("jobs");
  if (!table) { return; }
  const url = table.dataset.refresh;
  const seconds = Math.max(1, parseFloat(table.dataset.seconds || "5"));
  async function refresh() {
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (response.redirected || response.status === 401) { window.location.reload(); return; }
      if (!response.ok) { return; }
      const holder = document.createElement("div");
      holder.innerHTML = await response.text();
      const rows = holder.querySelector("#fresh-rows");
      const health = holder.querySelector("#fresh-health");
      if (rows) { document.getElementById("job-rows").replaceChildren(rows.content.cloneNode(true)); }
      const strip = document.getElementById("health");
      if (health && strip) { strip.replaceChildren(health.content.cloneNode(true)); }
      document.body.dataset.refreshedAt = new Date().toISOString();
    } catch (error) {
      // the node may be restarting: try again at the next tick
    }
  }
  window.setInterval(refresh, seconds * 1000);
})();
