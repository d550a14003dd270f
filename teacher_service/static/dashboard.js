// robustkd dashboard: the only script. Pages are complete without it; it adds
//  - the job table's live refresh (the server renders the rows; this swaps them in) and cancelling,
//  - hover/focus boxes on the ID-vs-OOD plot.
"use strict";

(function () {
  const ACTIVE_MS = 1000;  // refresh while a job is queued, running or cancelling
  const IDLE_MS = 5000;    // otherwise, to notice new jobs

  function say(text) {
    const status = document.getElementById("job-status");
    if (status) status.textContent = text;
  }

  function showControls(root) {
    root.querySelectorAll("button.cancel").forEach((b) => { b.hidden = false; });
  }

  // Swap in the server's new rows cell by cell: unchanged cells (a Cancel button about to be pressed, the
  // focused one) stay the same elements; rows are only re-ordered when the order changed.
  function merge(body, html) {
    const t = document.createElement("template");
    t.innerHTML = html;
    const old = new Map([...body.querySelectorAll("tr[id]")].map((r) => [r.id, r]));
    const rows = [...t.content.querySelectorAll("tr")].map((row) => {
      const have = row.id && old.get(row.id);
      if (!have || have.cells.length !== row.cells.length) return row;
      have.dataset.state = row.dataset.state;
      [...row.cells].forEach((cell, i) => {
        if (have.cells[i].innerHTML !== cell.innerHTML) have.replaceChild(cell, have.cells[i]);
      });
      return have;
    });
    const same = rows.length === body.rows.length && rows.every((r, i) => r === body.rows[i]);
    if (!same) body.replaceChildren(...rows);
  }

  function jobs() {
    const body = document.getElementById("job-rows");
    if (!body) return;
    const form = document.getElementById("token-form");
    form.hidden = false;
    form.addEventListener("submit", (e) => e.preventDefault());
    showControls(body);
    let timer = null;

    async function poll() {
      clearTimeout(timer);
      try {
        const r = await fetch(body.dataset.poll, { cache: "no-store" });
        if (r.ok) {
          const html = await r.text();
          if (html !== body.dataset.last) {
            body.dataset.last = html;
            merge(body, html);
            showControls(body);
          }
        }
      } catch (err) {
        say("Lost the connection to the service; retrying.");
      }
      const busy = body.querySelector('tr[data-state="running"], tr[data-state="queued"], tr[data-state="cancelling"]');
      timer = setTimeout(poll, busy ? ACTIVE_MS : IDLE_MS);
    }

    body.addEventListener("click", async (e) => {
      const button = e.target.closest("button.cancel");
      if (!button) return;
      const key = button.dataset.key;
      const token = document.getElementById("token").value.trim();
      button.disabled = true;
      try {
        const r = await fetch("/v1/jobs/" + encodeURIComponent(key), {
          method: "DELETE", headers: token ? { Authorization: "Bearer " + token } : {} });
        const body = await r.json().catch(() => ({}));
        if (r.ok) {
          say("Job " + key.slice(0, 12) + ": " + (body.state || "cancel asked") + ".");
        } else if (r.status === 401) {
          say("Not cancelled: the service needs its API token (type it above).");
          document.getElementById("token").focus();
        } else {
          say("Not cancelled: HTTP " + r.status + " " + (body.detail || ""));
        }
      } catch (err) {
        say("Not cancelled: the service could not be reached.");
      }
      button.disabled = false;
      poll();
    });
    timer = setTimeout(poll, ACTIVE_MS);
  }

  function plots() {
    document.querySelectorAll("figure.plot").forEach((fig) => {
      const tip = fig.querySelector(".tip");
      // the box replaces the SVG's native <title> tooltips, which would otherwise show as well
      fig.querySelectorAll(".hover title").forEach((t) => t.remove());
      function show(e) {
        const el = e.target.closest(".hover");
        if (!el) return;
        tip.textContent = el.dataset.tip;
        tip.hidden = false;
        const box = fig.getBoundingClientRect();
        const at = el.getBoundingClientRect();
        const left = Math.min(at.right - box.left + 8, box.width - tip.offsetWidth - 4);
        tip.style.left = Math.max(0, left) + "px";
        tip.style.top = Math.max(0, at.top - box.top - tip.offsetHeight - 6) + "px";
      }
      function hide() { tip.hidden = true; }
      fig.addEventListener("mouseover", show);
      fig.addEventListener("focusin", show);
      fig.addEventListener("mouseout", hide);
      fig.addEventListener("focusout", hide);
    });
  }

  document.addEventListener("DOMContentLoaded", () => { jobs(); plots(); });
})();
