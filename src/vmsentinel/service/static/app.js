// vmsentinel dashboard: confirmations, row filters, select-all, and the live event stream (SSE).
"use strict";

function text(tag, value) { const el = document.createElement(tag); el.textContent = value == null ? "" : String(value); return el; }
function when(t) { const d = new Date(t * 1000); return d.toLocaleString("sv-SE").replace("T", " "); }

document.addEventListener("submit", (ev) => {
  const form = ev.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) ev.preventDefault();
});

document.querySelectorAll("input[data-filter]").forEach((input) => {
  input.addEventListener("input", () => {
    const needle = input.value.toLowerCase();
    document.querySelectorAll(`#${input.dataset.filter} tbody tr`).forEach((row) => {
      row.hidden = needle !== "" && !row.textContent.toLowerCase().includes(needle);
    });
  });
});

document.querySelectorAll("input.select-all").forEach((box) => {
  box.addEventListener("change", () => {
    document.querySelectorAll(`#${box.dataset.for} tbody input[type=checkbox]`).forEach((b) => { b.checked = box.checked; });
  });
});

function toast(message) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = text("div", message); el.className = "toast"; box.prepend(el);
  while (box.children.length > 4) box.lastElementChild.remove();
  setTimeout(() => el.remove(), 8000);
}

function queueRow(ev) {
  const f = ev.finding, row = document.createElement("tr");
  row.className = `sev-${f.severity} fresh`;
  if (ev.id != null) row.dataset.id = ev.id;
  const check = document.createElement("td");
  if (ev.id != null) { const box = document.createElement("input"); box.type = "checkbox"; box.name = "id"; box.value = ev.id; check.append(box); }
  const sev = document.createElement("td"); const badge = text("span", f.severity); badge.className = `badge sev-${f.severity}`; sev.append(badge);
  const title = document.createElement("td");
  if (ev.id != null) { const a = text("a", f.title); a.href = `/findings/${ev.id}`; title.append(a); } else { title.textContent = f.title; }
  const status = text("td", "open"); status.className = "status";
  row.append(check, text("td", when(f.time)), sev, text("td", ev.host || ""), text("td", f.target), text("td", f.detector), title, status, text("td", ""));
  return row;
}

function matchesQueue(ev) {
  const params = new URLSearchParams(window.location.search);
  const f = ev.finding;
  if ((params.get("page") || "0") !== "0") return false;
  for (const [key, value] of [["severity", f.severity], ["detector", f.detector], ["guest", f.target], ["host", ev.host || ""]]) {
    if (params.get(key) && params.get(key) !== value) return false;
  }
  const status = params.has("status") ? params.get("status") : "open";
  return status === "" || status === "open";
}

function onEvent(ev) {
  const live = document.querySelector("#live-events tbody");
  if (live) {
    const what = ev.finding ? ev.finding.title : (ev.reason || ev.release || ev.detail || ev.name || ev.action || "");
    const row = document.createElement("tr"); row.className = "fresh";
    row.append(text("td", when(ev.time || Date.now() / 1000)), text("td", ev.kind), text("td", ev.target), text("td", what));
    live.prepend(row);
  }
  if (ev.kind === "FindingRaised") {
    const queue = document.querySelector("#queue tbody");
    if (queue && matchesQueue(ev)) {
      queue.querySelector("tr.empty")?.remove();
      queue.prepend(queueRow(ev));
      const total = document.getElementById("total"); if (total) total.textContent = String(Number(total.textContent) + 1);
    }
    toast(`${ev.finding.severity}: ${ev.finding.title} (${ev.target})`);
  } else if (ev.kind === "ResponseDone" && ev.action !== "alert") {
    toast(`${ev.action} of ${ev.target}: ${ev.ok ? "done" : "failed"} (${ev.detail})`);
  }
}

if (document.body.dataset.live === "on" && window.EventSource) {
  const status = document.getElementById("live-status");
  const kinds = ["FindingRaised", "FindingCleared", "ResponseDone", "GuestAdded", "GuestRemoved", "GuestWatched", "GuestUnreachable",
    "BaselineTaken", "PolicyReloaded", "PolicyRejected", "ModuleLoaded", "ModuleUnloaded", "WorkerRestarted", "CodeTracking", "SweepMissed", "SweepDone"];
  const source = new EventSource("/api/events");
  source.onopen = () => { status?.classList.add("on"); document.body.dataset.stream = "open"; };
  source.onerror = () => { status?.classList.remove("on"); document.body.dataset.stream = "closed"; };
  for (const kind of kinds) source.addEventListener(kind, (m) => onEvent(JSON.parse(m.data)));
}
