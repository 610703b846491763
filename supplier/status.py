"""The operators' status route: a web page, JSON, Prometheus metrics, operator actions.

Served on `status.listen` (loopback by default). With `status.token` set,
every route asks for it, as `Authorization: Bearer …` or through the login
form, which sets a cookie holding an HMAC of the token (never the token).
SMS texts and operator actions need the token: without one they are off.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog
from aiohttp import hdrs, web

from modems.events import REGISTRATION_NAMES, ModemState

from . import __version__
from .banks_status import add_bank_routes
from .config import phone_digits
from .errors import StoreError
from .metrics import CONTENT_TYPE, Live, Metrics
from .store import Activation, Delivery, Sms

if TYPE_CHECKING:
    from .daemon import Daemon
    from .inventory import Inventory, SimState

__all__ = ["StatusView", "bars", "create_status_app"]

log = structlog.get_logger("supplier.status")

DAY = 86400.0
COOKIE = "supplier_session"
# ISO 4217 numeric → letters, for the currencies the hubs pay in.
CURRENCIES = {
    643: "RUB",
    840: "USD",
    978: "EUR",
    980: "UAH",
    398: "KZT",
    933: "BYN",
    156: "CNY",
    356: "INR",
    360: "IDR",
    826: "GBP",
    949: "TRY",
    986: "BRL",
    608: "PHP",
    704: "VND",
    764: "THB",
    458: "MYR",
}
_MODEM_ERRORS = (ModemState.SIM_LOCKED, ModemState.RESETTING, ModemState.DISCONNECTED)


def bars(rssi: int | None) -> int | None:
    """AT+CSQ's 0-31 as 0-4 bars; None when unknown (99)."""
    if rssi is None or not 0 <= rssi <= 31:
        return None
    if rssi < 2:
        return 0
    if rssi < 10:
        return 1
    if rssi < 15:
        return 2
    if rssi < 20:
        return 3
    return 4


def currency_name(code: int | None) -> str:
    if code is None:
        return "?"
    return CURRENCIES.get(code, str(code))


def _decimal(value: str | None) -> Decimal:
    try:
        return Decimal(value) if value else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def _money(sums: dict[str, Decimal]) -> dict[str, str]:
    return {currency: format(total.normalize(), "f") for currency, total in sorted(sums.items())}


def _activation(a: Activation, now: float) -> dict[str, Any]:
    return {
        "id": a.id,
        "hub": a.hub,
        "service": a.service,
        "number": a.number,
        "country": a.country,
        "operator": a.operator,
        "sum": a.sum,
        "currency": currency_name(a.currency) if a.currency is not None else None,
        "created": a.created,
        "age": max(0.0, now - a.created),
        "release_at": a.release_at,
        "finished": a.finished,
        "status": a.status,
        "open": a.is_open(now),
    }


def _delivery(d: Delivery) -> dict[str, Any]:
    return {
        "hub": d.hub,
        "activation_id": d.activation_id,
        "attempts": d.attempts,
        "last_result": d.last_result,
        "outcome": d.outcome,
        "done": d.done,
    }


def _sms(sms: Sms, deliveries: list[Delivery], *, with_text: bool) -> dict[str, Any]:
    return {
        "id": sms.id,
        "sender": sms.sender,
        "text": sms.text if with_text else None,
        "kind": sms.kind,
        "received": sms.received,
        "complete": sms.complete,
        "deliveries": [_delivery(d) for d in deliveries],
    }


def start_of_today(now: float) -> float:
    """Local midnight: "today" as the operator's clock on the wall says."""
    local = datetime.fromtimestamp(now).astimezone()
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class StatusView:
    """What the page, the JSON routes and the metrics show, read from a running daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def _parts(self) -> tuple[Any, Any, Any]:
        daemon = self.daemon
        if daemon.inventory is None or daemon.store is None or daemon.pool is None:
            raise _refusal(web.HTTPServiceUnavailable, "starting up")
        return daemon.inventory, daemon.store, daemon.pool

    def sim_state(self, iccid: str) -> str:
        inventory, _, _ = self._parts()
        sim = inventory.sims[iccid]
        if not sim.online:
            return "gone"
        if not sim.enabled:
            return "disabled"
        if not sim.registered:
            return "no_signal"
        if not sim.number:
            return "no_number"
        if not sim.country:
            return "unknown_network"
        if inventory.holder(iccid) is not None:
            return "active"
        return "ready"

    async def sims(self) -> list[dict[str, Any]]:
        inventory, store, pool = self._parts()
        now = self.daemon.clock()
        last_sms = await store.last_sms()
        earned_30: dict[str, dict[str, Decimal]] = {}
        earned_7: set[str] = set()
        for earning in await store.earnings(now - 30 * DAY):
            sums = earned_30.setdefault(earning.iccid, {})
            currency = currency_name(earning.currency)
            sums[currency] = sums.get(currency, Decimal(0)) + _decimal(earning.sum)
            if earning.finished >= now - 7 * DAY:
                earned_7.add(earning.iccid)
        usage_by_number: dict[str, dict[str, dict[str, int]]] = {}
        for (number, service), usage in inventory.usage.items():
            usage_by_number.setdefault(number, {})[service] = {
                "offers": usage.offers,
                "sold": usage.sold,
                "cancelled": usage.cancelled,
                "returned": usage.returned,
            }
        rows: list[dict[str, Any]] = []
        ports_with_sim: set[str] = set()
        for sim in inventory.sims.values():
            modem = pool.get(sim.port) if sim.port and sim.online else None
            if modem is not None and sim.port is not None:
                ports_with_sim.add(sim.port)
            holder = inventory.holder(sim.iccid, now)
            registration = modem.network.registration if modem is not None else None
            rows.append(
                {
                    "port": sim.port,
                    "iccid": sim.iccid,
                    "imsi": sim.imsi,
                    "number": sim.number,
                    "country": sim.country,
                    "operator": sim.operator,
                    "rssi": sim.rssi if sim.online else None,
                    "bars": bars(sim.rssi) if sim.online else None,
                    "registration": REGISTRATION_NAMES.get(registration)
                    if registration is not None
                    else None,
                    "state": self.sim_state(sim.iccid),
                    "enabled": sim.enabled,
                    "model": modem.device.model if modem is not None else None,
                    "activation": _activation(holder, now) if holder is not None else None,
                    "history": usage_by_number.get(sim.number or "", {}),
                    "earnings": _money(earned_30.get(sim.iccid, {})),
                    "earned_7d": sim.iccid in earned_7,
                    "last_sms": last_sms.get(sim.iccid),
                    "last_error": modem.last_error if modem is not None else None,
                    "first_seen": sim.first_seen,
                    "last_seen": sim.last_seen,
                }
            )
        for modem in pool:
            if modem.port in ports_with_sim or modem.ready:
                continue
            rows.append(
                {
                    "port": modem.port,
                    "iccid": None,
                    "imsi": None,
                    "number": None,
                    "country": None,
                    "operator": None,
                    "rssi": modem.network.rssi,
                    "bars": bars(modem.network.rssi),
                    "registration": None,
                    "state": modem.state.value,
                    "enabled": None,
                    "model": modem.device.model,
                    "activation": None,
                    "history": {},
                    "earnings": {},
                    "earned_7d": False,
                    "last_sms": None,
                    "last_error": modem.detail or modem.last_error,
                    "first_seen": None,
                    "last_seen": None,
                }
            )
        rows.sort(key=lambda r: (r["port"] or "~", r["iccid"] or ""))
        return rows

    def summary(self) -> dict[str, int]:
        """In-memory totals (no database): the STATUS= line and the page's first row."""
        inventory, _, pool = self._parts()
        states = Counter(self.sim_state(iccid) for iccid in inventory.sims)
        modem_states = pool.counts()
        now = self.daemon.clock()
        return {
            "modems": len(pool),
            "ready": states["ready"] + states["active"],
            "no_signal": states["no_signal"],
            "no_number": states["no_number"] + states["unknown_network"],
            "no_sim": modem_states.get(ModemState.NO_SIM, 0),
            "errors": sum(modem_states.get(s, 0) for s in _MODEM_ERRORS),
            "disabled": states["disabled"],
            "gone": states["gone"],
            "open_activations": sum(1 for a in inventory.activations.values() if a.is_open(now)),
        }

    async def status(self) -> dict[str, Any]:
        inventory, store, pool = self._parts()
        now = self.daemon.clock()
        today = start_of_today(now)
        windows = {"today": today, "days7": now - 7 * DAY, "days30": now - 30 * DAY}
        earnings: dict[tuple[str, str], dict[str, Decimal]] = {}
        for earning in await store.earnings(min(windows.values())):
            key = (earning.hub, currency_name(earning.currency))
            sums = earnings.setdefault(key, dict.fromkeys(windows, Decimal(0)))
            for window, since in windows.items():
                if earning.finished >= since:
                    sums[window] += _decimal(earning.sum)
        backlog = await store.backlog(now)
        hubs = [hub.name for hub in self.daemon.config.hubs]
        return {
            "version": __version__,
            "now": now,
            "totals": self.summary(),
            "modem_states": {s.value: n for s, n in sorted(pool.counts().items(), key=str)},
            "sms_today": await store.sms_count(today),
            "undelivered": {
                hub: {"count": backlog.get(hub, (0, 0.0))[0], "oldest": backlog.get(hub, (0, 0))[1]}
                for hub in sorted(set(hubs) | set(backlog))
            },
            "earnings": [
                {
                    "hub": hub,
                    "currency": currency,
                    **{w: format(v.normalize(), "f") for w, v in sums.items()},
                }
                for (hub, currency), sums in sorted(earnings.items())
            ],
            "hubs": hubs,
            "services": list(inventory.services),
        }

    async def sim(self, iccid: str, *, with_texts: bool) -> dict[str, Any] | None:
        inventory, store, _ = self._parts()
        if iccid not in inventory.sims:
            return None
        now = self.daemon.clock()
        row = next((r for r in await self.sims() if r["iccid"] == iccid), None)
        return {
            "sim": row,
            "texts_shown": with_texts,
            "activations": [_activation(a, now) for a in await store.activations_of(iccid)],
            "sms": [
                _sms(sms, deliveries, with_text=with_texts)
                for sms, deliveries in await store.sms_of(iccid)
            ],
        }

    async def live(self) -> Live:
        inventory, store, pool = self._parts()
        sims = Counter((self.sim_state(s.iccid), s.operator) for s in inventory.sims.values())
        backlog = {hub.name: (0, 0.0) for hub in self.daemon.config.hubs}
        backlog.update(await store.backlog(self.daemon.clock()))
        return Live(
            sims=dict(sims),
            modems={state.value: n for state, n in pool.counts().items()},
            backlog=backlog,
            modem_counters=[(m.port, m.resets, m.timeouts) for m in pool],
        )


# -- the web app ------------------------------------------------------------------------

_VIEW = web.AppKey("view", StatusView)
_METRICS = web.AppKey("metrics", Metrics)
_TOKEN = web.AppKey("token", str)  # "" when no token is set
_PAGES = web.AppKey("pages", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _session_value(token: str) -> str:
    return hmac.new(token.encode(), b"supplier status session", hashlib.sha256).hexdigest()


def authenticated(request: web.Request) -> bool:
    """True when a token is set and this request carries it (header or cookie)."""
    token = request.app[_TOKEN]
    if not token:
        return False
    auth = request.headers.get(hdrs.AUTHORIZATION, "")
    if auth[:7].lower() == "bearer " and hmac.compare_digest(
        auth[7:].strip().encode(), token.encode()
    ):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), _session_value(token).encode())


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "ERROR", "error": message}, status=status)


def _refusal(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(
        text=json.dumps({"status": "ERROR", "error": message}), content_type="application/json"
    )


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With a token set, everything but the login form needs it."""
    if not request.app[_TOKEN] or request.path in ("/login", "/style.css"):
        return await handler(request)
    if authenticated(request):
        return await handler(request)
    if request.path.startswith("/api/") or request.path == "/metrics":
        return _error(401, "token required: Authorization: Bearer <status.token>")
    raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")


def _page(request: web.Request, name: str) -> web.Response:
    return web.Response(text=request.app[_PAGES][name], content_type="text/html", charset="utf-8")


async def index(request: web.Request) -> web.Response:
    return _page(request, "index.html")


async def sim_page(request: web.Request) -> web.Response:
    return _page(request, "sim.html")


async def style(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[_PAGES]["style.css"], content_type="text/css", charset="utf-8"
    )


async def login_form(request: web.Request) -> web.Response:
    return _page(request, "login.html")


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


async def login(request: web.Request) -> web.Response:
    token = request.app[_TOKEN]
    form = await request.post()
    given = form.get("token")
    target = _safe_next(str(form.get("next") or request.query.get("next") or "/"))
    if token and isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode()):
        response = web.HTTPSeeOther(target)
        response.set_cookie(
            COOKIE, _session_value(token), httponly=True, samesite="Strict", path="/"
        )
        log.info("operator logged in", peer=request.remote)
        raise response
    log.warning("status login refused", peer=request.remote)
    await asyncio.sleep(0.5)  # slows down guessing; the token is the only secret here
    page = request.app[_PAGES]["login.html"].replace(
        "<!--error-->", '<p class="error">That is not the status token.</p>'
    )
    return web.Response(text=page, content_type="text/html", charset="utf-8", status=401)


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def api_status(request: web.Request) -> web.Response:
    status = await request.app[_VIEW].status()
    status["operator"] = authenticated(request)
    return web.json_response(status)


async def api_sims(request: web.Request) -> web.Response:
    return web.json_response({"sims": await request.app[_VIEW].sims()})


async def api_sim(request: web.Request) -> web.Response:
    iccid = request.match_info["iccid"]
    found = await request.app[_VIEW].sim(iccid, with_texts=authenticated(request))
    if found is None:
        return _error(404, f"no SIM with ICCID {iccid}")
    found["operator"] = authenticated(request)
    return web.json_response(found)


async def metrics(request: web.Request) -> web.Response:
    view, registry = request.app[_VIEW], request.app[_METRICS]
    body = registry.render(await view.live())
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE})


async def _action_body(request: web.Request) -> dict[str, Any]:
    """Operator actions: the token, a JSON body, and no cross-site origin."""
    if not request.app[_TOKEN]:
        raise _refusal(web.HTTPForbidden, "operator actions need status.token to be set")
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and origin.split("://", 1)[-1] != request.host:
        raise _refusal(web.HTTPForbidden, "cross-site request refused")
    if request.content_type != "application/json":
        raise _refusal(
            web.HTTPUnsupportedMediaType, "expected a JSON body (Content-Type: application/json)"
        )
    try:
        body = await request.json()
    except ValueError:
        raise _refusal(web.HTTPBadRequest, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _refusal(web.HTTPBadRequest, "expected a JSON object")
    return body


async def _change_sim(
    request: web.Request,
    change: Callable[[Inventory, str], Awaitable[SimState | None]],
    answer: Callable[[SimState], dict[str, Any]],
) -> web.Response:
    """One operator change to the SIM named in the path: 503, 404, or SUCCESS with `answer`."""
    iccid = request.match_info["iccid"]
    inventory = request.app[_VIEW].daemon.inventory
    if inventory is None:
        return _error(503, "starting up")
    sim = await change(inventory, iccid)
    if sim is None:
        return _error(404, f"no SIM with ICCID {iccid}")
    return web.json_response({"status": "SUCCESS", **answer(sim)})


async def set_number(request: web.Request) -> web.Response:
    body = await _action_body(request)
    value = body.get("number")
    number: str | None = None
    if value not in (None, ""):
        try:
            number = phone_digits(value)
        except ValueError as exc:
            return _error(400, f"number: {value!r}: {exc}")
    return await _change_sim(
        request,
        lambda inventory, iccid: inventory.set_number(iccid, number),
        lambda sim: {"number": sim.number},
    )


async def set_sale(request: web.Request) -> web.Response:
    body = await _action_body(request)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        return _error(400, f"enabled: {enabled!r}: expected true or false")
    return await _change_sim(
        request,
        lambda inventory, iccid: inventory.set_enabled(iccid, enabled),
        lambda sim: {"enabled": sim.enabled},
    )


async def reset_modem(request: web.Request) -> web.Response:
    body = await _action_body(request)
    port = body.get("port")
    pool = request.app[_VIEW].daemon.pool
    if not isinstance(port, str) or not port:
        return _error(400, f"port: {port!r}: expected the modem's port path")
    if pool is None or not pool.reset(port):
        return _error(404, f"no modem on {port}")
    log.info("modem reset asked by an operator", port=port)
    return web.json_response({"status": "SUCCESS"})


@web.middleware
async def _store_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreError as exc:
        log.error("status route: store failed", path=request.path, error=str(exc))
        return _error(503, "the store is not answering; try again")


def _load_pages() -> dict[str, str]:
    folder = resources.files("supplier") / "static"
    return {
        name: (folder / name).read_text(encoding="utf-8")
        for name in ("index.html", "sim.html", "login.html", "style.css")
    }


def create_status_app(
    view: StatusView, metrics_registry: Metrics, token: str | None
) -> web.Application:
    app = web.Application(middlewares=[_guard, _store_errors], client_max_size=64 * 1024)
    app[_VIEW] = view
    app[_METRICS] = metrics_registry
    app[_TOKEN] = token or ""
    app[_PAGES] = _load_pages()
    app.router.add_get("/", index)
    app.router.add_get("/style.css", style)
    app.router.add_get("/sims/{iccid}", sim_page)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/api/sims", api_sims)
    app.router.add_get("/api/sims/{iccid}", api_sim)
    app.router.add_post("/api/sims/{iccid}/number", set_number)
    app.router.add_post("/api/sims/{iccid}/sale", set_sale)
    app.router.add_post("/api/modems/reset", reset_modem)
    app.router.add_get("/metrics", metrics)
    add_bank_routes(app, lambda: view.daemon.rotation, _action_body)
    return app
