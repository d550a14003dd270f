// robustkd dashboard: the only script. Pages are complete without it; it adds
//  - the job table's live refresh (the server renders the rows; this swaps them in) and cancelling,
//  - hover/focus boxes on the ID-vs-OOD plot.
"use strict";

(function () {
  const ACTIVE_MS = 1000;  // refresh while a job is queued or running
  const IDLE_MS = 5000;    // otherwise, to notice new jobs

  function say(text) {
    const status = document.getElementById("job-status");
    if (status) status.textContent = text;
  }

  function showControls(root) {
    root.querySelectorAll("button.cancel").forEach((b) => { b.hidden = false; });
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
            body.innerHTML = html;
            showControls(body);
          }
        }
      } catch (err) {
        say("Lost the connection to the service; retrying.");
      }
      const busy = body.querySelector('tr[data-state="running"], tr[data-state="queued"]');
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
          say("Job " + key.slice(0, 12) + ": " + (body.state === "running" ? "cancelling" : body.state) + ".");
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
