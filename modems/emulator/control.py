"""HTTP control API of a running virtual modem bank (loopback only by default).

    GET  /modems                      the modems: port, profile, SIM, storage, faults
    POST /modems/{i}/sms              {"text", "sender"?, "ucs2"?, "reference_bits"?, "order"?}
                                      or {"pdu": "07..."}: deliver an SMS
    POST /sms                         [{"modem": i, "text", "sender"?}, ...]: many at once
    POST /modems/{i}/{fault}          unplug | replug | hang | unhang | garbage |
                                      remove-sim | insert-sim {"slot"?} | fill-storage
    GET  /modems/{i}/cmti             when each +CMTI was written (monotonic clock)

Bad requests get HTTP 400 with {"error": "..."}; nothing here can crash the bank.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .bank import VirtualModemBank, make_sim
from .device import VirtualModem

__all__ = ["BANK", "FAULTS", "create_control_app", "describe"]

BANK: web.AppKey[VirtualModemBank] = web.AppKey("bank", VirtualModemBank)
FAULTS = (
    "unplug",
    "replug",
    "hang",
    "unhang",
    "garbage",
    "remove-sim",
    "insert-sim",
    "fill-storage",
)


def describe(index: int, modem: VirtualModem) -> dict[str, Any]:
    sim = modem.sim
    return {
        "index": index,
        "port": modem.link,
        "device": modem.device,
        "profile": modem.profile.name,
        "plugged": modem.plugged,
        "hung": modem.hung,
        "sim": None
        if sim is None
        else {"iccid": sim.iccid, "imsi": sim.imsi, "number": sim.number},
        "stored": len(modem.stored()),
        "held_by_network": len(modem.network_queue),
    }


def _error(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _modem(request: web.Request) -> tuple[int, VirtualModem] | web.Response:
    bank = request.app[BANK]
    raw = request.match_info["index"]
    if not raw.isdigit() or int(raw) >= len(bank):
        return _error(f"modem index {raw!r}: expected 0..{len(bank) - 1}", 404)
    return int(raw), bank[int(raw)]


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    if not request.can_read_body:
        return {}
    try:
        body = json.loads(await request.read() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        return _error("body must be a JSON object")
    return body


async def list_modems(request: web.Request) -> web.Response:
    bank = request.app[BANK]
    return web.json_response([describe(i, m) for i, m in enumerate(bank)])


async def deliver_sms(request: web.Request) -> web.Response:
    found = _modem(request)
    if isinstance(found, web.Response):
        return found
    index, modem = found
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    if "pdu" in body:
        pdu = body["pdu"]
        if not isinstance(pdu, str) or not pdu or len(pdu) % 2:
            return _error("pdu: expected a hex string")
        modem.receive_pdu(pdu.upper())
        return web.json_response({"modem": index, "pdus": [pdu.upper()]})
    text, sender = body.get("text"), body.get("sender", "VK")
    if not isinstance(text, str) or not isinstance(sender, str) or not sender:
        return _error('expected {"text": str, "sender"?: str}')
    ucs2 = body.get("ucs2")
    bits = body.get("reference_bits", 8)
    order = body.get("order")
    if ucs2 is not None and not isinstance(ucs2, bool):
        return _error("ucs2: expected true or false")
    if bits not in (8, 16):
        return _error("reference_bits: expected 8 or 16")
    try:
        pdus = modem.deliver(text, sender, ucs2=ucs2, reference_bits=bits, order=order)
    except (ValueError, IndexError, TypeError) as exc:
        return _error(str(exc))
    return web.json_response({"modem": index, "pdus": pdus})


async def deliver_many(request: web.Request) -> web.Response:
    """A burst: every SMS in the list is delivered in the same loop turn."""
    bank = request.app[BANK]
    body: Any = None
    try:
        body = json.loads(await request.read() or b"[]")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(f"body is not JSON: {exc}")
    if not isinstance(body, list) or len(body) > 100_000:
        return _error('expected a list of {"modem": int, "text": str, "sender"?: str}')
    for item in body:
        ok = isinstance(item, dict) and isinstance(item.get("text"), str)
        index = item.get("modem") if isinstance(item, dict) else None
        if not ok or not isinstance(index, int) or not 0 <= index < len(bank):
            return _error(f"bad item {item!r}: expected modem 0..{len(bank) - 1} and a text")
    pdus = [
        bank[item["modem"]].deliver(item["text"], str(item.get("sender") or "VK")) for item in body
    ]
    return web.json_response({"pdus": pdus})


async def fault(request: web.Request) -> web.Response:
    found = _modem(request)
    if isinstance(found, web.Response):
        return found
    index, modem = found
    action = request.match_info["action"]
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    if action == "unplug" and modem.plugged:
        modem.unplug()
    elif action == "replug" and not modem.plugged:
        modem.replug()
    elif action == "hang":
        modem.hang()
    elif action == "unhang":
        modem.unhang()
    elif action == "garbage":
        modem.garbage()
    elif action == "remove-sim":
        modem.remove_sim()
    elif action == "insert-sim":
        slot = body.get("slot", 1000 + index)
        if not isinstance(slot, int) or slot < 0:
            return _error("slot: expected a non-negative integer")
        modem.insert_sim(make_sim(slot))
    elif action == "fill-storage":
        modem.fill_storage()
    elif action not in FAULTS:
        return _error(f"unknown action {action!r}: expected one of {', '.join(FAULTS)}", 404)
    return web.json_response(describe(index, modem))


async def cmti_log(request: web.Request) -> web.Response:
    found = _modem(request)
    if isinstance(found, web.Response):
        return found
    _, modem = found
    return web.json_response([[at, index, pdu] for at, index, pdu in modem.cmti_log])


def create_control_app(bank: VirtualModemBank) -> web.Application:
    app = web.Application()
    app[BANK] = bank
    app.router.add_get("/modems", list_modems)
    app.router.add_post("/sms", deliver_many)
    app.router.add_post("/modems/{index}/sms", deliver_sms)
    app.router.add_get("/modems/{index}/cmti", cmti_log)
    app.router.add_post("/modems/{index}/{action}", fault)
    return app
