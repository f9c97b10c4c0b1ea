// gn2pg dashboard: the few live parts of the pages. No framework; loaded from this site only
// (the Content-Security-Policy forbids inline scripts). Fragments inserted as HTML come from
// the dashboard itself, which escapes everything it renders; data goes in with textContent.
"use strict";

const REFRESH = { "x-gn2pg-refresh": "1" };

function every(seconds, f) {
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try { await f(); } catch (e) { /* the next turn tries again */ } finally { busy = false; }
  }, seconds * 1000);
}

async function fetchText(url, headers) {
  const r = await fetch(url, { headers, credentials: "same-origin" });
  if (r.status === 401) { location.reload(); throw new Error("signed out"); }
  if (!r.ok) throw new Error("HTTP " + r.status);
  return r;
}

// Flows: the table refreshes itself.
function flowsRefresh() {
  const box = document.querySelector("[data-refresh]");
  if (!box) return;
  every(Number(box.dataset.every || 10), async () => {
    const r = await fetchText(box.dataset.refresh, REFRESH);
    box.innerHTML = await r.text();
  });
}

// Source: the current run's progress, without reloading; once a run ends, the page reloads
// once so that the history and the chart show it.
function liveProgress() {
  const live = document.getElementById("live");
  if (!live) return;
  let wasRunning = live.dataset.running === "true";
  const set = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text == null ? "—" : String(text); };
  every(2, async () => {
    const r = await fetchText(live.dataset.progress, REFRESH);
    const p = await r.json();
    if (p.run_id == null) return;
    const none = document.getElementById("run-none");
    if (none) none.hidden = true;
    set("run-id", p.run_id);
    set("run-status", p.status);
    set("run-pages", p.pages);
    set("run-rows", p.rows_text);
    set("run-rate", p.rate);
    set("run-elapsed", p.elapsed);
    set("run-eta", p.eta ? "in " + p.eta : null);
    const bar = document.getElementById("run-progress");
    if (bar) {
      bar.hidden = !p.running;
      // Unknown size: an indeterminate bar.
      if (p.percent == null) bar.removeAttribute("value"); else bar.value = p.percent;
    }
    const err = document.getElementById("run-error");
    if (err) { err.hidden = !p.error; err.textContent = p.error || ""; }
    const cancel = document.getElementById("cancel-form");
    if (cancel) {
      cancel.hidden = !p.running;
      const id = cancel.querySelector("input[name=run_id]");
      if (id) id.value = p.run_id;
    }
    live.dataset.running = String(p.running);
    if (wasRunning && !p.running) setTimeout(() => location.reload(), 1500);
    wasRunning = p.running;
  });
}

// Sources admin: Test connection shows the report under the form, which keeps what was typed.
function testConnection() {
  document.querySelectorAll("button[data-into]").forEach((button) => {
    button.addEventListener("click", async (ev) => {
      const form = button.form;
      if (!form.reportValidity()) return;
      ev.preventDefault();
      const into = document.getElementById(button.dataset.into);
      into.textContent = "Testing…";
      button.disabled = true;
      try {
        const r = await fetch(button.getAttribute("formaction"), {
          method: "POST",
          credentials: "same-origin",
          headers: { "content-type": "application/x-www-form-urlencoded", "x-gn2pg-fragment": "1" },
          body: new URLSearchParams(new FormData(form)),
        });
        into.innerHTML = await r.text();
      } catch (e) {
        into.textContent = "The test could not be sent: " + e.message;
      } finally {
        button.disabled = false;
      }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  flowsRefresh();
  liveProgress();
  testConnection();
});
