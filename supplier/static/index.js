"use strict";
const REFRESH = Math.max(1, Number(new URLSearchParams(location.search).get("refresh")) || 5) * 1000;
const PROBLEMS = new Set(["host_down", "not_ready", "no_signal", "no_number", "number_conflict", "unknown_network", "gone", "no_sim", "sim_locked", "unresponsive", "resetting", "disconnected", "not_modem"]);
const LABELS = {ready: "ready", active: "active", no_signal: "no signal", no_number: "no number", number_conflict: "number conflict",
  unknown_network: "unknown network", gone: "gone", disabled: "out of sale", no_sim: "no SIM",
  sim_locked: "SIM locked", unresponsive: "not answering", resetting: "resetting", disconnected: "disconnected", not_modem: "not a modem",
  probing: "probing", initializing: "starting", not_ready: "not ready", host_down: "host down"};
let sims = [], sortKey = "port", sortDesc = false, lastOk = 0;

const $ = (s) => document.querySelector(s);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
function ago(t) {
  if (t == null) return "";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function dur(s) { return s < 60 ? Math.round(s) + " s" : s < 3600 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h"; }
function bars(n) {
  if (n == null) return '<span class="muted">–</span>';
  let out = '<span class="bars" title="' + n + ' of 4">';
  for (let i = 1; i <= 4; i++) out += '<i class="' + (i <= n ? "on" : "") + '"></i>';
  return out + "</span>";
}
function money(m) { return Object.entries(m || {}).map(([c, v]) => esc(v) + " " + esc(c)).join("<br>"); }
function short(port) { return port ? port.split("/").pop() : ""; }

// Each card counts exactly what the state filter of the same name shows.
const GROUPS = {ready: ["ready"], active: ["active"], no_signal: ["no_signal"],
  no_number: ["no_number", "number_conflict", "unknown_network"], no_sim: ["no_sim"],
  errors: ["sim_locked", "unresponsive", "resetting", "disconnected"], disabled: ["disabled"], gone: ["gone"],
  not_ready: ["not_ready"], host_down: ["host_down"]};
function card(label, n, cls, id) {
  const filter = GROUPS[id] ? ' data-filter="' + id + '" role="button" tabindex="0" title="show these"' : "";
  return '<div class="card ' + (cls || "") + '" data-testid="total-' + id + '"' + filter + '><div class="n">' + n + '</div><div class="l">' + label + "</div></div>";
}
function renderStatus(st) {
  const t = st.totals;
  $("#totals").innerHTML = [
    card("modems", t.modems, "", "modems"),
    card("SIMs ready", t.ready, "ok", "ready"),
    card("SIMs active", t.active, "ok", "active"),
    card("no signal", t.no_signal, t.no_signal ? "warn" : "", "no_signal"),
    card("no number", t.no_number, t.no_number ? "warn" : "", "no_number"),
    card("out of sale", t.disabled, t.disabled ? "warn" : "", "disabled"),
    card("no SIM", t.no_sim, t.no_sim ? "bad" : "", "no_sim"),
    card("modem errors", t.errors, t.errors ? "bad" : "", "errors"),
    card("SIMs gone", t.gone, t.gone ? "bad" : "", "gone"),
    ...(st.hosts.length ? [card("not ready (other hosts)", t.not_ready, t.not_ready ? "warn" : "", "not_ready"),
      card("on hosts down", t.host_down, t.host_down ? "bad" : "", "host_down")] : []),
    card("open activations", t.open_activations, "", "open_activations"),
    card("SMS today", st.sms_today, "", "sms_today"),
  ].join("");
  $("#earnings tbody").innerHTML = st.earnings.length ? st.earnings.map((e) =>
    "<tr><td>" + esc(e.hub) + "</td><td>" + esc(e.currency) + '</td><td class="num">' + esc(e.today) +
    '</td><td class="num">' + esc(e.days7) + '</td><td class="num">' + esc(e.days30) + "</td></tr>").join("")
    : '<tr><td colspan="5" class="muted">nothing sold in 30 days</td></tr>';
  $("#undelivered tbody").innerHTML = Object.entries(st.undelivered).map(([hub, u]) =>
    "<tr><td>" + esc(hub) + '</td><td class="num">' + u.count + '</td><td class="num">' + (u.count ? dur(u.oldest) : "–") + "</td></tr>").join("");
  $("#logout").hidden = !st.operator;
  // A shared database (several hosts): every host's liveness, and a Host column.
  $("#hosts-box").hidden = !st.hosts.length;
  $("#sims").classList.toggle("single", !st.hosts.length);
  $("#hosts tbody").innerHTML = st.hosts.map((h) =>
    '<tr data-host="' + esc(h.name) + '"><td>' + esc(h.name) + (h.this ? ' <span class="muted">(this host)</span>' : "") +
    '</td><td><span class="pill s-' + (h.alive ? "ready" : "host_down") + '">' + (h.alive ? "alive" : "down") + "</span>" +
    '</td><td class="num">' + (h.alive ? dur(h.lease_left) + " left" : "ran out " + dur(-h.lease_left) + " ago") +
    '</td><td class="num">' + h.sims + '</td><td class="num">' + h.present +
    "</td><td>" + (h.status_url ? esc(h.status_url) : '<span class="muted">none (actions on its modems: its own page)</span>') + "</td></tr>").join("");
}

function value(s, key) {
  switch (key) {
    case "operator": return (s.country || "") + "/" + (s.operator || "");
    case "activation": return s.activation ? s.activation.age : -1;
    case "earnings": return Object.values(s.earnings).reduce((a, v) => a + Number(v), 0);
    case "rssi": return s.rssi == null ? -1 : s.rssi;
    case "last_sms": return s.last_sms || 0;
    case "balance": return s.balance && s.balance.amount != null ? Number(s.balance.amount) : -Infinity;
    default: return s[key] == null ? "" : String(s[key]);
  }
}
function matches(s) {
  const want = $("#state").value;
  if (want === "problem" ? !PROBLEMS.has(s.state) : want && !GROUPS[want].includes(s.state)) return false;
  if ($("#idle").checked && (s.earned_7d || !s.iccid)) return false;
  const q = $("#filter").value.trim().toLowerCase();
  if (!q) return true;
  const hay = [s.host, s.port, s.iccid, s.number, s.country, s.operator, s.state, LABELS[s.state], s.model, s.last_error,
    s.activation && s.activation.service, s.activation && s.activation.hub].join(" ").toLowerCase();
  return q.split(/\s+/).every((w) => hay.includes(w));
}
function renderSims() {
  const rows = sims.filter(matches);
  rows.sort((a, b) => {
    const x = value(a, sortKey), y = value(b, sortKey);
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true});
    return sortDesc ? -c : c;
  });
  $("#shown").textContent = rows.length + " of " + sims.length + " shown";
  $("#sims tbody").innerHTML = rows.map((s) => {
    const link = s.iccid ? '<a href="/sims/' + encodeURIComponent(s.iccid) + '">' + esc(s.iccid) + "</a>" : '<span class="muted">no SIM</span>';
    const act = s.activation ? esc(s.activation.hub) + " · " + esc(s.activation.service) + " · " + dur(s.activation.age) : "";
    const hist = Object.entries(s.history).map(([svc, h]) =>
      '<span title="offered ' + h.offers + ", sold " + h.sold + ", cancelled " + h.cancelled + '">' + esc(svc) + " " + h.sold + "/" + h.cancelled + "</span>").join("");
    return '<tr data-iccid="' + esc(s.iccid || "") + '" data-state="' + esc(s.state) + '">' +
      '<td data-label="Port" class="mono" title="' + esc(s.port) + '">' + esc(short(s.port)) + "</td>" +
      '<td data-label="ICCID" class="mono">' + link + "</td>" +
      '<td data-label="Number" class="mono">' + (s.number ? "+" + esc(s.number) : "") +
        (s.number_note ? ' <span class="muted" data-testid="number-note">' + esc(s.number_note) + "</span>" : "") + "</td>" +
      '<td data-label="Balance" class="num' + (s.balance && s.balance.low ? ' low' : '') + '" data-testid="balance"' +
        (s.balance ? ' title="read ' + esc(new Date(s.balance.read * 1000).toLocaleString()) + (s.balance.text ? ": " + esc(s.balance.text) : "") + '"' : "") + ">" +
        (s.balance ? (s.balance.amount != null ? esc(s.balance.amount) + " " + esc(s.balance.currency || "") : "?") + (s.balance.low ? " (low)" : "") : "") + "</td>" +
      '<td data-label="Country / operator">' + esc(s.country || "") + (s.operator ? " / " + esc(s.operator) : "") + "</td>" +
      '<td data-label="Signal">' + bars(s.bars) + "</td>" +
      '<td data-label="Network">' + esc(s.registration || "") + "</td>" +
      '<td data-label="State"><span class="pill s-' + esc(s.state) + '">' + esc(LABELS[s.state] || s.state) + "</span></td>" +
      '<td data-label="Activation">' + act + "</td>" +
      '<td data-label="History (sold/cancelled)" class="history">' + hist + "</td>" +
      '<td data-label="Earned 30 d" class="num">' + money(s.earnings) + "</td>" +
      '<td data-label="Last SMS">' + ago(s.last_sms) + "</td>" +
      '<td data-label="Last error" class="muted">' + esc(s.last_error || "") + "</td>" +
      '<td data-label="Host" class="hostcol">' + esc(s.host || "") + "</td></tr>";
  }).join("");
}

async function refresh() {
  try {
    const [st, list] = await Promise.all(["/api/status", "/api/sims"].map(async (u) => {
      const r = await api(u);
      if (!r.ok) throw new Error(u + ": HTTP " + r.status);
      return r.json();
    }));
    renderStatus(st);
    sims = list.sims;
    renderSims();
    lastOk = Date.now();
    $("#meta").textContent = "supplier " + st.version + " · updated " + new Date().toLocaleTimeString() + " · every " + REFRESH / 1000 + " s";
    $("#meta").className = "meta";
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (e) {
    $("#meta").textContent = "not updated since " + (lastOk ? new Date(lastOk).toLocaleTimeString() : "start") + ": " + e.message;
    $("#meta").className = "meta stale";
  }
}
document.querySelectorAll("th[data-key]").forEach((th) => th.addEventListener("click", () => {
  const key = th.dataset.key;
  sortDesc = sortKey === key ? !sortDesc : false;
  sortKey = key;
  document.querySelectorAll("th").forEach((h) => h.classList.remove("sorted", "desc"));
  th.classList.add("sorted");
  if (sortDesc) th.classList.add("desc");
  renderSims();
}));
["#filter", "#state", "#idle"].forEach((s) => $(s).addEventListener("input", renderSims));
$("#totals").addEventListener("click", (e) => {
  const card = e.target.closest("[data-filter]");
  if (!card) return;
  $("#state").value = $("#state").value === card.dataset.filter ? "" : card.dataset.filter;
  renderSims();
});
document.querySelector('th[data-key="port"]').classList.add("sorted");
refresh();
setInterval(refresh, REFRESH);
