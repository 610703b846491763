"use strict";
const iccid = decodeURIComponent(location.pathname.split("/").pop());
const $ = (s) => document.querySelector(s);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const when = (t) => t ? new Date(t * 1000).toLocaleString() : "";
const STATUS = {1: "1 · SMS received, cancelled", 3: "3 · sold", 4: "4 · cancelled", 5: "5 · returned"};
let sim = null;
$("#title").textContent = iccid;

async function load() {
  const r = await api("/api/sims/" + encodeURIComponent(iccid));
  const data = await r.json();
  if (!r.ok) { $("#meta").textContent = data.error || ("HTTP " + r.status); $("#meta").className = "meta stale"; return; }
  sim = data.sim;
  const facts = {
    "State": sim.state, ...(sim.host ? {"Host": sim.host + (data.host && sim.host !== data.host ? " (another host: actions go there)" : "")} : {}), "Port": sim.port, "Number": (sim.number ? "+" + sim.number : "unknown") + (sim.number_note ? " (" + sim.number_note + ")" : ""),
    "Balance": sim.balance ? (sim.balance.amount != null ? sim.balance.amount + " " + (sim.balance.currency || "") : sim.balance.text) + (sim.balance.low ? " (low)" : "") + ", read " + when(sim.balance.read) : "–",
    "Country / operator": (sim.country || "?") + " / " + (sim.operator || "?"), "IMSI": sim.imsi,
    "Modem": sim.model, "Signal": sim.rssi == null ? "–" : sim.rssi + " (" + (sim.bars ?? "?") + " of 4 bars)",
    "Network": sim.registration, "On sale": sim.enabled ? "yes" : "no (taken out)",
    "Earned 30 days": Object.entries(sim.earnings).map(([c, v]) => v + " " + c).join(", ") || "nothing",
    "First seen": when(sim.first_seen), "Last error": sim.last_error || "–",
  };
  $("#facts").innerHTML = Object.entries(facts).map(([k, v]) => "<dt>" + esc(k) + "</dt><dd>" + esc(v) + "</dd>").join("");
  $("#locked").hidden = data.operator;
  for (const el of ["#number-form button", "#sale", "#reset", "#number"]) $(el).disabled = !data.operator;
  $("#sale").textContent = sim.enabled ? "Take out of sale" : "Put back on sale";
  $("#activations tbody").innerHTML = data.activations.map((a) =>
    "<tr><td data-label=\"#\">" + a.id + '</td><td data-label="Hub">' + esc(a.hub) + '</td><td data-label="Service">' + esc(a.service) +
    '</td><td data-label="Number" class="mono">+' + esc(a.number) + '</td><td data-label="Opened">' + when(a.created) +
    '</td><td data-label="Finished">' + (a.finished ? when(a.finished) : (a.open ? "open" : "released")) +
    '</td><td data-label="Status">' + esc(STATUS[a.status] || "") + '</td><td data-label="Sum" class="num">' + esc(a.sum || "") + " " + esc(a.currency || "") + "</td></tr>").join("")
    || '<tr><td colspan="8" class="muted">none</td></tr>';
  $("#sms tbody").innerHTML = data.sms.map((m) =>
    "<tr><td data-label=\"#\">" + m.id + '</td><td data-label="Received">' + when(m.received) + '</td><td data-label="From">' + esc(m.sender) +
    '</td><td data-label="Text" class="text">' + (data.texts_shown ? esc(m.text) : '<span class="muted">hidden (token)</span>') +
    '</td><td data-label="Pushed to">' + m.deliveries.map((d) => esc(d.hub) + ": " + esc(d.outcome || ("waiting, " + d.attempts + " tries"))).join("<br>") + "</td></tr>").join("")
    || '<tr><td colspan="5" class="muted">none</td></tr>';
  $("#meta").textContent = "updated " + new Date().toLocaleTimeString();
}
async function act(url, body) {
  const r = await api(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await r.json().catch(() => ({error: "HTTP " + r.status}));
  $("#result").textContent = r.ok ? "done" : (data.error || "failed");
  $("#result").className = r.ok ? "muted" : "error";
  await load();
}
$("#number-form").addEventListener("submit", (e) => { e.preventDefault(); act("/api/sims/" + encodeURIComponent(iccid) + "/number", {number: $("#number").value.trim() || null}); });
$("#sale").addEventListener("click", () => act("/api/sims/" + encodeURIComponent(iccid) + "/sale", {enabled: !sim.enabled}));
$("#reset").addEventListener("click", () => sim && sim.port && act("/api/modems/reset", sim.host ? {port: sim.port, host: sim.host} : {port: sim.port}));
load();
setInterval(load, 10000);
