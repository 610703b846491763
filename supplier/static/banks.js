// The SIM-bank grid: GET /api/banks every 5 s (`?refresh=N`: every N s); actions POST JSON
// (same origin). `api` (session.js) takes an expired session to the login form.
"use strict";
const REFRESH = Math.max(1, Number(new URLSearchParams(location.search).get("refresh")) || 5) * 1000;
let lastOk = 0;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  const age = Math.max(0, Date.now() / 1000 - seconds);
  if (age < 90) return Math.round(age) + " s ago";
  if (age < 5400) return Math.round(age / 60) + " min ago";
  if (age < 129600) return Math.round(age / 3600) + " h ago";
  return Math.round(age / 86400) + " d ago";
}

async function act(path, body) {
  const response = await api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) window.alert(answer.error || "HTTP " + response.status);
  await refresh();
}

function moduleRow(bank, module) {
  const base = "/api/banks/" + encodeURIComponent(bank.name) + "/modules/" + module.module;
  const row = el("tr");
  const head = el("th");
  head.append(el("div", "module " + module.module), el("div", module.status, "muted"));
  const hold = el("button", module.held ? "resume" : "hold");
  hold.addEventListener("click", () => act(base + "/hold", { held: !module.held }));
  head.append(hold);
  row.append(head);
  for (const slot of module.slots) {
    const cell = el("td", null, "slot state-" + slot.state);
    cell.dataset.state = slot.state;
    const go = el("button", slot.slot + " · " + slot.state, "slot-switch");
    go.title = "switch module " + module.module + " to slot " + slot.slot + " now";
    go.addEventListener("click", () => act(base + "/switch", { slot: slot.slot }));
    cell.append(go);
    cell.append(el("div", slot.iccid ? "…" + slot.iccid.slice(-6) : "-", "muted"));
    cell.append(el("div", slot.number ? "+" + slot.number : "-"));
    cell.append(el("div", ago(slot.last_in), "muted"));
    const toggle = el("button", slot.in_rotation ? "out" : "in");
    toggle.addEventListener("click", () =>
      act(base + "/slots/" + slot.slot + "/rotation", { enabled: !slot.in_rotation }));
    cell.append(toggle);
    row.append(cell);
  }
  return row;
}

async function refresh() {
  const meta = document.getElementById("meta");
  let data;
  try {
    const response = await api("/api/banks", { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error("HTTP " + response.status);
    data = await response.json();
  } catch (e) {
    const since = lastOk ? new Date(lastOk).toLocaleTimeString() : "start";
    meta.textContent = "not updated since " + since + ": " + e.message;
    meta.className = "meta stale";
    return;
  }
  const root = document.getElementById("banks");
  root.replaceChildren();
  for (const bank of data.banks) {
    root.append(el("h2", bank.name));
    const switches = Object.entries(bank.switches).map(([k, v]) => k + " " + v).join(", ");
    root.append(el("p", "switches: " + (switches || "none yet"), "muted"));
    const table = el("table", null, "bank-grid");
    table.dataset.testid = "bank-" + bank.name;
    for (const module of bank.modules) table.append(moduleRow(bank, module));
    root.append(table);
  }
  if (!data.banks.length) root.append(el("p", "No SIM banks configured (banks: in the config)."));
  lastOk = Date.now();
  meta.textContent = "updated " + new Date().toLocaleTimeString();
  meta.className = "meta";
}

document.addEventListener("DOMContentLoaded", () => {
  refresh();
  window.setInterval(refresh, REFRESH);
});
