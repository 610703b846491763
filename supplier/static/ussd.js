// The SIM page's USSD console (POST /api/sims/{iccid}/ussd). A file of its own, not an
// inline script: the status pages' Content-Security-Policy allows scripts from files only.
"use strict";
(() => {
  const iccid = decodeURIComponent(location.pathname.split("/").pop());
  const url = "/api/sims/" + encodeURIComponent(iccid) + "/ussd";
  const el = (id) => document.getElementById(id);
  const answer = el("ussd-answer"), replyForm = el("ussd-reply-form");
  const buttons = () => document.querySelectorAll("#ussd-form button, #ussd-reply-form button");

  async function send(body) {
    buttons().forEach((b) => { b.disabled = true; });
    answer.className = "muted";
    answer.textContent = body.close ? "closing…" : "waiting for the network (up to 30 s)…";
    try {
      const r = await api(url, {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
      const data = await r.json().catch(() => ({error: "HTTP " + r.status}));
      if (!r.ok) {
        answer.className = "error";
        answer.textContent = data.error || "failed";
        return;
      }
      answer.className = "";
      answer.textContent = data.closed ? "session closed" : (data.text || "(no text; status " + data.ussd_status + ")");
      replyForm.hidden = !data.menu;
      if (data.menu) el("ussd-reply").focus();
    } finally {
      buttons().forEach((b) => { b.disabled = false; });
    }
  }

  el("ussd-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const code = el("ussd-code").value.trim();
    if (code) send({code});
  });
  replyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const reply = el("ussd-reply").value.trim();
    if (reply) { el("ussd-reply").value = ""; send({reply}); }
  });
  el("ussd-close").addEventListener("click", () => { replyForm.hidden = true; send({close: true}); });
})();
