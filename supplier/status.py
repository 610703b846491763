"""The operators' status route: a web page, JSON, Prometheus metrics, operator actions.

Served on `status.listen` (loopback by default). With `status.token` set,
every route asks for it, as `Authorization: Bearer …` or through the login
form, which opens a server-side session (a random cookie value with an
expiry, revoked by logout and forgotten at a restart). Failed tokens are
rate-limited per client address across requests. Without a token, only Host
headers naming the listen address or localhost are answered (DNS rebinding),
SMS texts are hidden and operator actions are off. Every answer carries a
Content-Security-Policy without inline script, no framing, no referrer, and
`Cache-Control: no-store` on anything that can show numbers or texts.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import structlog
from aiohttp import hdrs, web
from yarl import URL

from modems.errors import ModemError
from modems.events import REGISTRATION_NAMES, ModemState
from modems.ussd import UssdError, UssdTimeout, encode_request

from . import __version__
from .backend import StoreBackend
from .banks_status import add_bank_routes
from .config import phone_digits
from .errors import StoreError
from .hosts_status import HostsView, RemoteSim, remote_state
from .inventory import NumberTaken
from .metrics import CONTENT_TYPE, Live, Metrics
from .store import Activation, Delivery, Sms

if TYPE_CHECKING:
    from modems.pool import ModemPool

    from .inventory import Inventory, SimState
    from .rotation import Rotation
    from .upkeep import Upkeep

__all__ = ["FailureLimiter", "Sessions", "StatusView", "bars", "create_status_app", "money"]

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
_MODEM_ERRORS = (
    ModemState.SIM_LOCKED,
    ModemState.UNRESPONSIVE,
    ModemState.RESETTING,
    ModemState.DISCONNECTED,
)


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


def money(amount: Decimal) -> str:
    """A sum as money: `10.00`, `7.25`, `0.0125` (never `1E+1` or `7.2500`).

    Two decimals, more when the hub paid in smaller units (dollars come with 4).
    """
    exponent = amount.normalize().as_tuple().exponent
    places = min(4, max(2, -exponent if isinstance(exponent, int) else 2))
    return format(amount.quantize(Decimal(1).scaleb(-places)), "f")


def _money(sums: dict[str, Decimal]) -> dict[str, str]:
    return {currency: money(total) for currency, total in sorted(sums.items())}


def _activation(a: Activation, now: float) -> dict[str, Any]:
    return {
        "id": a.id,
        "hub": a.hub,
        "service": a.service,
        "number": a.number,
        "country": a.country,
        "operator": a.operator,
        "sum": money(_decimal(a.sum)) if a.sum is not None else None,
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One line of the SIM table (`/api/sims`): a SIM, or a port with none to show."""

    port: str | None
    state: str
    iccid: str | None = None
    imsi: str | None = None
    number: str | None = None
    number_note: str | None = None  # why a SIM has no number yet, or whose number it shares
    balance: dict[str, Any] | None = None  # the last balance its operator stated (USSD)
    country: str | None = None
    operator: str | None = None
    rssi: int | None = None
    bars: int | None = None
    registration: str | None = None
    enabled: bool | None = None
    model: str | None = None
    activation: dict[str, Any] | None = None  # the open activation holding the SIM
    history: dict[str, dict[str, int]] = field(default_factory=dict)  # service → counts
    earnings: dict[str, str] = field(default_factory=dict)  # currency → 30 days' sum
    earned_7d: bool = False
    last_sms: float | None = None
    last_error: str | None = None
    first_seen: float | None = None
    last_seen: float | None = None
    host: str | None = None  # the host whose modem has it (a shared store; else None)

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _ROW_FIELDS}


_ROW_FIELDS = tuple(f.name for f in fields(Row))


class StatusView:
    """What the page, the JSON routes and the metrics show, read from a running daemon."""

    def __init__(
        self,
        inventory: Inventory,
        store: StoreBackend,
        pool: ModemPool,
        upkeep: Upkeep,
        rotation: Rotation | None,
        *,
        hubs: list[str],
        clock: Callable[[], float],
        hosts: HostsView | None = None,
    ) -> None:
        self.inventory = inventory
        self.store = store
        self.pool = pool
        self.upkeep = upkeep
        self.rotation = rotation  # None without SIM banks
        self.hubs = hubs  # the configured hubs' names (a reload replaces them)
        self.clock = clock
        self.hosts = hosts  # a shared store: the other hosts (supplier/hosts_status.py); else None

    def here(self, iccid: str) -> bool:
        """In one of this host's modems now."""
        sim = self.inventory.sims.get(iccid)
        return sim is not None and sim.online

    async def elsewhere(self, iccid: str) -> RemoteSim | None:
        """The other host that has this SIM in a modem (a shared store), or None."""
        if self.hosts is None or self.here(iccid):
            return None
        sim = await self.hosts.owner(iccid)
        return sim if sim is not None and sim.host != self.hosts.name else None

    async def _remote(self) -> list[RemoteSim]:
        """Other hosts' SIMs that are not in a modem here (a SIM that moved here is ours)."""
        if self.hosts is None:
            return []
        me = self.hosts.name
        return [
            sim
            for sim in (await self.hosts.live_sims()).values()
            if sim.host != me and not self.here(sim.iccid)
        ]

    def sim_state(self, iccid: str) -> str:
        inventory = self.inventory
        sim = inventory.sims[iccid]
        if not sim.online:
            return "gone"
        if not sim.enabled:
            return "disabled"
        if not sim.registered:
            return "no_signal"
        if not sim.number:
            return "no_number"
        if inventory.conflicting(iccid) is not None:
            return "number_conflict"
        if not sim.country:
            return "unknown_network"
        if inventory.holder(iccid) is not None:
            return "active"
        return "ready"

    async def sims(self) -> list[dict[str, Any]]:
        inventory, store, pool = self.inventory, self.store, self.pool
        now = self.clock()
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
        upkeep = self.upkeep
        rows: list[Row] = []
        ports_with_sim: set[str] = set()
        remote = await self._remote()
        remote_iccids = {r.iccid for r in remote}
        me = self.hosts.name if self.hosts is not None else None
        for sim in inventory.sims.values():
            if sim.iccid in remote_iccids:
                continue  # in another host's modem: that host's row (below)
            modem = pool.get(sim.port) if sim.port and sim.online else None
            if modem is not None and sim.port is not None:
                ports_with_sim.add(sim.port)
            holder = inventory.holder(sim.iccid, now)
            registration = modem.network.registration if modem is not None else None
            rows.append(
                Row(
                    port=sim.port,
                    state=self.sim_state(sim.iccid),
                    iccid=sim.iccid,
                    imsi=sim.imsi,
                    number=sim.number,
                    number_note=upkeep.note(sim.iccid),
                    balance=_balance(upkeep, sim.iccid),
                    country=sim.country,
                    operator=sim.operator,
                    rssi=sim.rssi if sim.online else None,
                    bars=bars(sim.rssi) if sim.online else None,
                    registration=REGISTRATION_NAMES.get(registration)
                    if registration is not None
                    else None,
                    enabled=sim.enabled,
                    model=modem.device.model if modem is not None else None,
                    activation=_activation(holder, now) if holder is not None else None,
                    history=usage_by_number.get(sim.number or "", {}),
                    earnings=_money(earned_30.get(sim.iccid, {})),
                    earned_7d=sim.iccid in earned_7,
                    last_sms=last_sms.get(sim.iccid),
                    last_error=modem.last_error if modem is not None else None,
                    first_seen=sim.first_seen,
                    last_seen=sim.last_seen,
                    host=me if sim.online else None,
                )
            )
        for modem in pool:
            if modem.port in ports_with_sim or modem.ready:
                continue
            rows.append(
                Row(  # a port without a SIM in the inventory: what the modem says
                    port=modem.port,
                    state=modem.state.value,
                    rssi=modem.network.rssi,
                    bars=bars(modem.network.rssi),
                    model=modem.device.model,
                    last_error=modem.detail or modem.last_error,
                    host=me,
                )
            )
        rows.extend(await self._remote_rows(remote, now, last_sms, earned_30, earned_7))
        rows.sort(key=lambda r: (r.host or "", r.port or "~", r.iccid or ""))
        return [row.as_json() for row in rows]

    async def _remote_rows(
        self,
        remote: list[RemoteSim],
        now: float,
        last_sms: dict[str, float],
        earned_30: dict[str, dict[str, Decimal]],
        earned_7: set[str],
    ) -> list[Row]:
        """Other hosts' SIMs as they published them: no modem detail, the shared history."""
        if self.hosts is None or not remote:
            return []
        holders = await self.hosts.activations([r.holder for r in remote if r.holder is not None])
        usage = await self.hosts.usage([r.number for r in remote if r.number])
        rows = []
        for sim in remote:
            holder = holders.get(sim.holder) if sim.holder is not None else None
            if holder is not None and not holder.is_open(now):
                holder = None
            rows.append(
                Row(
                    port=sim.port,
                    state=remote_state(sim, now),
                    iccid=sim.iccid,
                    imsi=sim.imsi,
                    number=sim.number,
                    country=sim.country,
                    operator=sim.operator,
                    enabled=sim.enabled,
                    activation=_activation(holder, now) if holder is not None else None,
                    history=usage.get(sim.number or "", {}),
                    earnings=_money(earned_30.get(sim.iccid, {})),
                    earned_7d=sim.iccid in earned_7,
                    last_sms=last_sms.get(sim.iccid),
                    first_seen=sim.first_seen,
                    last_seen=sim.published,
                    host=sim.host,
                )
            )
        return rows

    def summary(self) -> dict[str, int]:
        """In-memory totals (no database): the STATUS= line and the page's cards.

        Each card counts exactly the rows the state filter of the same name
        shows (`FILTERS`): `ready` is on sale now, `active` is held by an
        activation, `no_number` includes an unknown home network.
        """
        inventory, pool = self.inventory, self.pool
        states = Counter(self.sim_state(iccid) for iccid in inventory.sims)
        modem_states = pool.counts()
        now = self.clock()
        return {
            "modems": len(pool),
            "ready": states["ready"],
            "active": states["active"],
            "no_signal": states["no_signal"],
            "no_number": states["no_number"]
            + states["unknown_network"]
            + states["number_conflict"],
            "no_sim": modem_states.get(ModemState.NO_SIM, 0),
            "errors": sum(modem_states.get(s, 0) for s in _MODEM_ERRORS),
            "disabled": states["disabled"],
            "gone": states["gone"],
            "open_activations": sum(1 for a in inventory.activations.values() if a.is_open(now)),
        }

    async def status(self) -> dict[str, Any]:
        inventory, store, pool = self.inventory, self.store, self.pool
        now = self.clock()
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
        hubs = self.hubs
        totals = self.summary()
        totals["host_down"] = totals["not_ready"] = 0
        hosts: list[dict[str, Any]] = []
        if self.hosts is not None:
            # Every card counts the rows its filter shows: other hosts' SIMs included.
            for state, count in Counter(remote_state(r, now) for r in await self._remote()).items():
                totals[state] = totals.get(state, 0) + count
            hosts = [
                {
                    "name": h.name,
                    "this": h.name == self.hosts.name,
                    "alive": h.alive,
                    "lease_left": h.lease_left,
                    "started": h.started,
                    "sims": h.sims,
                    "present": h.present,
                    "status_url": h.status_url,
                }
                for h in await self.hosts.hosts()
            ]
        return {
            "version": __version__,
            "now": now,
            "host": self.hosts.name if self.hosts is not None else None,
            "hosts": hosts,
            "totals": totals,
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
                    **{w: money(v) for w, v in sums.items()},
                }
                for (hub, currency), sums in sorted(earnings.items())
            ],
            "hubs": hubs,
            "services": list(inventory.services),
        }

    async def sim(self, iccid: str, *, with_texts: bool) -> dict[str, Any] | None:
        store = self.store
        row = next((r for r in await self.sims() if r["iccid"] == iccid), None)
        if row is None:
            return None
        now = self.clock()
        return {
            "sim": row,
            "host": self.hosts.name if self.hosts is not None else None,  # this host
            "texts_shown": with_texts,
            "activations": [_activation(a, now) for a in await store.activations_of(iccid)],
            "sms": [
                _sms(sms, deliveries, with_text=with_texts)
                for sms, deliveries in await store.sms_of(iccid)
            ],
        }

    async def live(self) -> Live:
        inventory, store, pool = self.inventory, self.store, self.pool
        sims = Counter(
            (self.sim_state(s.iccid), s.country or "unknown", s.operator)
            for s in inventory.sims.values()
        )
        backlog = dict.fromkeys(self.hubs, (0, 0.0))
        backlog.update(await store.backlog(self.clock()))
        upkeep = self.upkeep
        return Live(
            sims=dict(sims),
            modems={state.value: n for state, n in pool.counts().items()},
            backlog=backlog,
            modem_counters=[(m.port, m.resets, m.timeouts) for m in pool],
            sms_messages=await store.sms_count(0.0),
            balances=[
                (iccid, b.currency or "", float(b.amount))
                for iccid, b in upkeep.balances.items()
                if b.amount is not None
            ],
        )


def _balance(upkeep: Upkeep, iccid: str) -> dict[str, Any] | None:
    """A SIM's last balance reading for the page: amount, currency, when, low or not."""
    reading = upkeep.balances.get(iccid)
    if reading is None:
        return None
    return {
        "amount": reading.amount,
        "currency": reading.currency,
        "text": reading.text if reading.amount is None else None,
        "read": reading.read,
        "low": upkeep.low(iccid),
    }


# -- the web app ------------------------------------------------------------------------

SESSION_TTL = 12 * 3600.0  # a login lasts a working day; logout ends it at once
MAX_SESSIONS = 256  # the oldest is dropped beyond this (each login makes one)
FAILURE_WINDOW = 60.0  # failed tokens are counted per client address over this window
MAX_FAILURES = 10  # ... and beyond this many, tokens from that address are not even checked
MAX_FAILURES_ALL = 100  # the same across all addresses (guessing spread over many of them)
# Served without a token (no data in them); session.js is every page's shared helper.
STATIC = ("session.js", "index.js", "sim.js", "banks.js", "login.js", "ussd.js", "style.css")
HEADERS = {
    # Scripts and styles come only from our own files: no inline script can run.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class Sessions:
    """Logins as random values kept here with their expiry; logout deletes one."""

    def __init__(
        self, ttl: float = SESSION_TTL, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self._expiry: dict[str, float] = {}

    def open(self) -> str:
        now = self.clock()
        self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        while len(self._expiry) >= MAX_SESSIONS:
            del self._expiry[min(self._expiry, key=self._expiry.__getitem__)]
        value = secrets.token_urlsafe(32)
        self._expiry[value] = now + self.ttl
        return value

    def valid(self, value: str) -> bool:
        expiry = self._expiry.get(value)
        if expiry is None:
            return False
        if expiry <= self.clock():
            del self._expiry[value]
            return False
        return True

    def close(self, value: str) -> None:
        self._expiry.pop(value, None)


class FailureLimiter:
    """Failed tokens per client address over a sliding window, across requests.

    Past `limit` failures in `window` seconds an address gets 429 without its
    token being compared, so guessing runs at `limit` a minute, not thousands
    a second; past `limit_all` from all addresses together, every address
    does. A valid session cookie still works from a limited address.
    """

    ALL = "*"  # the key counting every address's failures together

    def __init__(
        self,
        limit: int = MAX_FAILURES,
        window: float = FAILURE_WINDOW,
        *,
        limit_all: int = MAX_FAILURES_ALL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.limit_all = limit_all
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, peer: str) -> deque[float] | None:
        failures = self._failures.get(peer)
        if failures is None:
            return None
        horizon = self.clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[peer]
            return None
        return failures

    def retry_after(self, peer: str) -> float | None:
        """Seconds until this address may try again, or None when it may now."""
        waits = []
        for key, limit in ((peer, self.limit), (self.ALL, self.limit_all)):
            failures = self._recent(key)
            if failures is not None and len(failures) >= limit:
                waits.append(max(1.0, failures[0] + self.window - self.clock()))
        return max(waits, default=None)

    def failed(self, peer: str) -> int:
        """Count a wrong token from `peer`; how many it has in the window."""
        if len(self._failures) > 10_000:  # a spray of addresses: forget the quiet ones
            self._failures = {p: f for p, f in self._failures.items() if len(f) > 1}
        counts = []
        for key in (peer, self.ALL):
            failures = self._recent(key)
            if failures is None:
                failures = self._failures.setdefault(key, deque())
            failures.append(self.clock())
            counts.append(len(failures))
        return counts[0]


_VIEW = web.AppKey("view", StatusView)
_METRICS = web.AppKey("metrics", Metrics)
_TOKEN = web.AppKey("token", str)  # "" when no token is set
_PAGES = web.AppKey("pages", dict)
_SESSIONS = web.AppKey("sessions", Sessions)
_LIMITER = web.AppKey("limiter", FailureLimiter)
_HOSTS = web.AppKey("hosts", frozenset)  # Host names answered without a token; empty: any IP
_OPERATOR = web.RequestKey("operator", bool)  # this request carries the token

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def authenticated(request: web.Request) -> bool:
    """True when a token is set and this request carries it (header or session cookie)."""
    return bool(request.get(_OPERATOR, False))


def _peer(request: web.Request) -> str:
    return request.remote or "-"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"status": "ERROR", "error": message}, status=status, headers=headers)


def _refusal(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(
        text=json.dumps({"status": "ERROR", "error": message}), content_type="application/json"
    )


def _too_many(retry_after: float) -> web.Response:
    return _error(
        429,
        f"too many wrong tokens from this address; try again in {retry_after:.0f} s",
        headers={hdrs.RETRY_AFTER: str(int(retry_after + 0.999))},
    )


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get(hdrs.AUTHORIZATION, "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def _host_allowed(request: web.Request) -> bool:
    """Without a token: the Host must name the listen address, localhost, or (wildcard) an IP."""
    try:
        host = (URL(f"http://{request.host}").host or "") if request.host else ""
    except ValueError:
        return False
    host = host.strip("[]").lower().rstrip(".")
    allowed = request.app[_HOSTS]
    if host in allowed:
        return True
    if "*" in allowed:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True
    return False


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The security headers on every answer, errors and redirects included."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    response.headers.update(HEADERS)
    static = request.path.lstrip("/") in STATIC and response.status == 200
    response.headers[hdrs.CACHE_CONTROL] = "no-cache" if static else "no-store"
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With a token set, everything but the login form needs it; without, a known Host."""
    token = request.app[_TOKEN]
    if not token:
        if not _host_allowed(request):
            log.warning("status request with a foreign Host refused", host=request.host)
            return _error(421, "unknown Host; use the status address or localhost")
        return await handler(request)
    peer = _peer(request)
    cookie = request.cookies.get(COOKIE, "")
    if cookie and request.app[_SESSIONS].valid(cookie):
        request[_OPERATOR] = True
    else:
        given = _bearer(request)
        if given is not None:
            wait = request.app[_LIMITER].retry_after(peer)
            if wait is not None:
                return _too_many(wait)
            if hmac.compare_digest(given.encode(), token.encode()):
                request[_OPERATOR] = True
            else:
                count = request.app[_LIMITER].failed(peer)
                if count == 1:
                    log.warning("status request with a wrong Bearer token", peer=peer)
    if request.path in ("/login", *(f"/{name}" for name in STATIC)):
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


_TYPES = {"css": "text/css", "js": "text/javascript"}


async def static(request: web.Request) -> web.Response:
    name = request.path.lstrip("/")
    return web.Response(
        text=request.app[_PAGES][name],
        content_type=_TYPES[name.rsplit(".", 1)[1]],
        charset="utf-8",
    )


async def login_form(request: web.Request) -> web.Response:
    return _page(request, "login.html")


def safe_next(value: str | None) -> str:
    """Where to go after the login: a path on this site, judged after parsing; else `/`.

    Control characters and backslashes are refused outright (browsers and
    yarl drop tabs and newlines, which turns `/<TAB>/evil` into `//evil`).
    """
    if not value or not value.startswith("/") or value.startswith("//"):
        return "/"
    if any(ord(c) < 0x21 or c in "\\\x7f" for c in value):
        return "/"
    try:
        url = URL(value)
    except ValueError:
        return "/"
    if url.scheme or url.host is not None or url.raw_authority:
        return "/"
    if not url.raw_path.startswith("/") or url.raw_path.startswith("//"):
        return "/"
    return value


async def login(request: web.Request) -> web.Response:
    token = request.app[_TOKEN]
    peer = _peer(request)
    limiter = request.app[_LIMITER]
    wait = limiter.retry_after(peer)
    if wait is not None:
        return _too_many(wait)
    form = await request.post()
    given = form.get("token")
    target = safe_next(str(form.get("next") or request.query.get("next") or "/"))
    if token and isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode()):
        response = web.HTTPSeeOther(target)
        response.set_cookie(
            COOKIE,
            request.app[_SESSIONS].open(),
            httponly=True,
            samesite="Strict",
            path="/",
            max_age=int(SESSION_TTL),
        )
        log.info("operator logged in", peer=peer)
        raise response
    count = limiter.failed(peer)
    log.warning("status login refused", peer=peer, failures_this_minute=count)
    page = request.app[_PAGES]["login.html"].replace(
        "<!--error-->", '<p class="error">That is not the status token.</p>'
    )
    return web.Response(text=page, content_type="text/html", charset="utf-8", status=401)


async def logout(request: web.Request) -> web.Response:
    request.app[_SESSIONS].close(request.cookies.get(COOKIE, ""))
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
    remote: Callable[[HostsView, str], Awaitable[bool]],
    remote_answer: dict[str, Any],
) -> web.Response:
    """One operator change to the SIM named in the path: 404, or SUCCESS with `answer`.

    A SIM this host does not know (another host's, with a shared store) is
    changed in the shared `sims` row (`remote`); its host applies it at its
    next look (supplier/hosts_status.py); the answer names that host. A SIM
    this host knows is changed through its inventory, which writes the same
    shared row.
    """
    iccid = request.match_info["iccid"]
    view = request.app[_VIEW]
    if iccid not in view.inventory.sims and view.hosts is not None:
        owner = await view.hosts.owner(iccid)
        if not await remote(view.hosts, iccid):
            return _error(404, f"no SIM with ICCID {iccid}")
        host = owner.host if owner is not None else None
        log.info("operator change to another host's SIM", iccid=iccid, host=host)
        return web.json_response({"status": "SUCCESS", **remote_answer, "host": host})
    sim = await change(view.inventory, iccid)
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
    view = request.app[_VIEW]
    iccid = request.match_info["iccid"]
    if number is not None and view.hosts is not None:
        # Two SIMs sold under one number would both be sold and both get its SMS:
        # the other hosts' SIMs count too (this host's inventory checks its own).
        other = await view.hosts.number_taken(iccid, number)
        if other is not None:
            return _error(
                409,
                f"number: +{number} is already the number of SIM {other.iccid} "
                f"in host {other.host}",
            )
    try:
        return await _change_sim(
            request,
            lambda inventory, iccid: inventory.set_number(iccid, number),
            lambda sim: {"number": sim.number},
            lambda hosts, iccid: hosts.set_number(iccid, number),
            {"number": number},
        )
    except NumberTaken as exc:
        return _error(409, f"number: {exc}")


async def set_sale(request: web.Request) -> web.Response:
    body = await _action_body(request)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        return _error(400, f"enabled: {enabled!r}: expected true or false")
    return await _change_sim(
        request,
        lambda inventory, iccid: inventory.set_enabled(iccid, enabled),
        lambda sim: {"enabled": sim.enabled},
        lambda hosts, iccid: hosts.set_enabled(iccid, enabled),
        {"enabled": enabled},
    )


async def reset_modem(request: web.Request) -> web.Response:
    body = await _action_body(request)
    port = body.get("port")
    if not isinstance(port, str) or not port:
        return _error(400, f"port: {port!r}: expected the modem's port path")
    view = request.app[_VIEW]
    host = body.get("host")
    if host is not None and not isinstance(host, str):
        return _error(400, f"host: {host!r}: expected a host name")
    if view.hosts is not None and host not in (None, view.hosts.name):
        return await _forward(request, host, "/api/modems/reset", {"port": port}, f"modem {port}")
    if not view.pool.reset(port):
        return _error(404, f"no modem on {port}")
    log.info("modem reset asked by an operator", port=port)
    return web.json_response({"status": "SUCCESS"})


async def send_ussd(request: web.Request) -> web.Response:
    """The SIM page's console: `{"code": "*100#"}`, `{"reply": "1"}` or `{"close": true}`."""
    body = await _action_body(request)
    iccid = request.match_info["iccid"]
    view = request.app[_VIEW]
    owner = await view.elsewhere(iccid)
    if owner is None and iccid not in view.inventory.sims:
        return _error(404, f"no SIM with ICCID {iccid}")
    code, reply, close = body.get("code"), body.get("reply"), body.get("close")
    chosen = [name for name, v in (("code", code), ("reply", reply)) if v is not None]
    if close is True:
        chosen.append("close")
    if len(chosen) != 1:
        return _error(400, 'expected one of "code", "reply" or "close": true')
    for name, value in (("code", code), ("reply", reply)):
        if value is None:
            continue
        try:
            encode_request(value if isinstance(value, str) else "", packed=False)
        except UssdError as exc:
            return _error(400, f"{name}: {value!r}: {exc}")
    if owner is not None:  # the modem is another host's: that host runs it
        return await _forward(
            request, owner.host, f"/api/sims/{quote(iccid)}/ussd", body, f"SIM {iccid}"
        )
    try:
        answer = await view.upkeep.console(iccid, code=code, reply=reply)
    except UssdTimeout as exc:
        return _error(504, str(exc))
    except ModemError as exc:
        return _error(409, str(exc))
    if answer is None:
        return web.json_response({"status": "SUCCESS", "closed": True})
    return web.json_response(
        {
            "status": "SUCCESS",
            "ussd_status": int(answer.status),
            "text": answer.text,
            "menu": answer.menu,
        }
    )


FORWARDED = "X-Supplier-Forwarded-By"  # a forwarded action is never forwarded again
FORWARD_MARGIN = 15.0  # seconds beyond the USSD timeout for the other host to answer


async def _forward(
    request: web.Request, host: str, path: str, body: dict[str, Any], what: str
) -> web.Response:
    """An action on another host's modem, sent to that host's status route; its answer.

    With the status token (every host of a supplier has the same one). An
    answer names the host; a host that is down, has no `host.status_url` or
    does not answer gets an error naming it, so the operator knows where to go.
    """
    view = request.app[_VIEW]
    assert view.hosts is not None
    me = view.hosts.name
    if FORWARDED in request.headers:
        by = request.headers[FORWARDED]
        return _error(409, f"{what} is not in this host's ({me}) modems (forwarded from {by})")
    info = next((h for h in await view.hosts.hosts() if h.name == host), None)
    if info is None:
        return _error(404, f"no host {host!r} shares this store")
    if not info.alive:
        return _error(
            503,
            f"{what} is in host {host}'s modems and host {host} is down "
            f"(no lease for {-info.lease_left:.0f} s)",
        )
    if info.status_url is None:
        return _error(
            409,
            f"{what} is in host {host}'s modems; host {host} has no host.status_url, "
            f"so use host {host}'s own status page",
        )
    url = info.status_url + path
    timeout = aiohttp.ClientTimeout(total=view.upkeep.settings.timeout + FORWARD_MARGIN)
    headers = {hdrs.AUTHORIZATION: f"Bearer {request.app[_TOKEN]}", FORWARDED: me}
    log.info("operator action forwarded", host=host, path=path)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body, headers=headers, allow_redirects=False) as response,
        ):
            status = response.status
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = None
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = "no answer in time" if isinstance(exc, TimeoutError) else str(exc) or "failed"
        return _error(502, f"{what} is in host {host}'s modems; {info.status_url}: {reason}")
    if status == 401:
        return _error(
            502, f"host {host} refused the forwarded request: its status.token is not this host's"
        )
    if not isinstance(answer, dict):
        return _error(502, f"host {host} ({info.status_url}) answered HTTP {status}, not JSON")
    return web.json_response({**answer, "host": host}, status=status)


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
        for name in ("index.html", "sim.html", "login.html", *STATIC)
    }


def allowed_hosts(listen_host: str) -> frozenset[str]:
    """Host names a token-less status route answers; `*` adds any IP (wildcard listen)."""
    hosts = {"localhost", "127.0.0.1", "::1", listen_host.strip("[]").lower()}
    if listen_host in ("0.0.0.0", "::", ""):  # noqa: S104 - a comparison, not a bind
        hosts.add("*")
    return frozenset(hosts)


def create_status_app(
    view: StatusView,
    metrics_registry: Metrics,
    token: str | None,
    *,
    listen_host: str = "127.0.0.1",
    sessions: Sessions | None = None,
    limiter: FailureLimiter | None = None,
) -> web.Application:
    app = web.Application(middlewares=[_headers, _guard, _store_errors], client_max_size=64 * 1024)
    app[_VIEW] = view
    app[_METRICS] = metrics_registry
    app[_TOKEN] = token or ""
    app[_PAGES] = _load_pages()
    app[_SESSIONS] = sessions or Sessions()
    app[_LIMITER] = limiter or FailureLimiter()
    app[_HOSTS] = allowed_hosts(listen_host)
    app.router.add_get("/", index)
    for name in STATIC:
        app.router.add_get(f"/{name}", static)
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
    app.router.add_post("/api/sims/{iccid}/ussd", send_ussd)
    app.router.add_get("/metrics", metrics)
    add_bank_routes(app, lambda: view.rotation, _action_body)
    return app
