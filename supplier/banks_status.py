"""The SIM banks on the status route: the grid page, its JSON, actions, Prometheus.

Routes (added to the status app by `add_bank_routes`, behind its token guard):

    GET  /banks                                        the grid page (banks.html; its scripts,
                                                       banks.js and session.js, are the status
                                                       app's static files)
    GET  /api/banks                                    every bank as module x slot
    POST /api/banks/{bank}/modules/{module}/switch     {"slot": n}: switch now (activations wait)
    POST /api/banks/{bank}/modules/{module}/hold       {"held": true|false}: stop/resume rotating
    POST /api/banks/{bank}/modules/{module}/slots/{slot}/rotation   {"enabled": true|false}

Actions go through the status route's own checks (token, JSON body, same origin).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any

import structlog
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .rotation import Rotation

__all__ = ["BankCollector", "add_bank_routes"]

log = structlog.get_logger("supplier.banks")

RotationOf = Callable[[], Rotation | None]
ActionBody = Callable[[web.Request], Awaitable[dict[str, Any]]]

_ROTATION = web.AppKey("bank_rotation", object)
_BODY = web.AppKey("bank_action_body", object)
_FILES = web.AppKey("bank_files", dict)


class BankCollector(Collector):
    """`supplier_bank_switches_total{bank,result}` and `supplier_bank_slots{bank,state}`."""

    def __init__(self, rotation_of: RotationOf) -> None:
        self._rotation_of = rotation_of

    def collect(self) -> Iterable[Metric]:
        rotation = self._rotation_of()
        switches = CounterMetricFamily(
            "supplier_bank_switches",
            "SIM-bank switches by bank and result",
            labels=["bank", "result"],
        )
        slots = GaugeMetricFamily(
            "supplier_bank_slots", "SIM-bank slots by bank and state", labels=["bank", "state"]
        )
        if rotation is not None:
            for (bank, result), count in sorted(rotation.switches.items()):
                switches.add_metric([bank, result], count)
            for (bank, state), count in sorted(rotation.slot_counts().items()):
                slots.add_metric([bank, state], count)
        yield switches
        yield slots


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "ERROR", "error": message}, status=status)


def _rotation(request: web.Request) -> Rotation | None:
    rotation_of: RotationOf = request.app[_ROTATION]  # type: ignore[assignment]
    return rotation_of()


async def banks_page(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[_FILES]["banks.html"], content_type="text/html", charset="utf-8"
    )


async def api_banks(request: web.Request) -> web.Response:
    rotation = _rotation(request)
    banks = [] if rotation is None else rotation.grid()
    return web.json_response({"banks": banks}, headers={"Cache-Control": "no-store"})


def _module_of(request: web.Request) -> tuple[Rotation, str, int] | web.Response:
    rotation = _rotation(request)
    if rotation is None:
        return _json_error(404, "no SIM banks configured")
    bank, raw = request.match_info["bank"], request.match_info["module"]
    if not raw.isdigit() or (bank, int(raw)) not in rotation.modules:
        return _json_error(404, f"no module {raw!r} in bank {bank!r}")
    return rotation, bank, int(raw)


async def _body(request: web.Request) -> dict[str, Any]:
    action_body: ActionBody = request.app[_BODY]  # type: ignore[assignment]
    return await action_body(request)


async def switch_now(request: web.Request) -> web.Response:
    body = await _body(request)
    found = _module_of(request)
    if isinstance(found, web.Response):
        return found
    rotation, bank, module = found
    slot = body.get("slot")
    if isinstance(slot, bool) or not isinstance(slot, int):
        return _json_error(400, f"slot: {slot!r}: expected a slot number")
    try:
        rotation.switch_now(bank, module, slot)
    except ValueError as exc:
        return _json_error(400, f"slot: {exc}")
    log.info("switch asked by an operator", bank=bank, module=module, slot=slot)
    return web.json_response({"status": "SUCCESS"})


async def hold(request: web.Request) -> web.Response:
    body = await _body(request)
    found = _module_of(request)
    if isinstance(found, web.Response):
        return found
    rotation, bank, module = found
    held = body.get("held")
    if not isinstance(held, bool):
        return _json_error(400, f"held: {held!r}: expected true or false")
    await rotation.hold(bank, module, held)
    log.info("module hold set by an operator", bank=bank, module=module, held=held)
    return web.json_response({"status": "SUCCESS", "held": held})


async def slot_rotation(request: web.Request) -> web.Response:
    body = await _body(request)
    found = _module_of(request)
    if isinstance(found, web.Response):
        return found
    rotation, bank, module = found
    enabled = body.get("enabled")
    raw = request.match_info["slot"]
    if not isinstance(enabled, bool):
        return _json_error(400, f"enabled: {enabled!r}: expected true or false")
    if not raw.isdigit():
        return _json_error(404, f"no slot {raw!r}")
    try:
        await rotation.set_in_rotation(bank, module, int(raw), enabled)
    except ValueError as exc:
        return _json_error(404, str(exc))
    log.info("slot rotation set by an operator", bank=bank, module=module, slot=raw, on=enabled)
    return web.json_response({"status": "SUCCESS", "in_rotation": enabled})


def add_bank_routes(app: web.Application, rotation_of: RotationOf, action_body: ActionBody) -> None:
    folder = resources.files("supplier") / "static"
    app[_ROTATION] = rotation_of
    app[_BODY] = action_body
    app[_FILES] = {"banks.html": (folder / "banks.html").read_text(encoding="utf-8")}
    app.router.add_get("/banks", banks_page)
    app.router.add_get("/api/banks", api_banks)
    prefix = "/api/banks/{bank}/modules/{module}"
    app.router.add_post(f"{prefix}/switch", switch_now)
    app.router.add_post(f"{prefix}/hold", hold)
    app.router.add_post(prefix + "/slots/{slot}/rotation", slot_rotation)
