"""`supplier scan` and `supplier sims`: what is plugged in, and what the store knows.

`scan` probes the ports once through the same modem code as the daemon but
never reads or deletes a stored SMS, so it cannot take messages away. Ports
held by a running daemon are opened exclusively by it: then `scan` says so at
once and shows the daemon's live view (its status API) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from modems.events import REGISTRATION_NAMES, ModemState, PoolEvent
from modems.modem import ModemSettings
from modems.pool import ModemPool, expand_ports

from .backend import open_store
from .config import Config
from .errors import SupplierError
from .inventory import Inventory
from .networks import ANY, COUNTRIES, OPERATORS

__all__ = ["daemon_sims", "format_table", "held_ports", "live_view", "scan", "sims_report"]

_SETTLED = frozenset(
    {ModemState.READY, ModemState.NO_SIM, ModemState.SIM_LOCKED, ModemState.NOT_MODEM}
)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def _network_name(code: str | None) -> str:
    if not code:
        return "-"
    country = COUNTRIES.get(code[:3], "?")
    operator = OPERATORS.get(code, ANY)
    return f"{code} {country}/{operator}"


async def scan(patterns: Sequence[str], settings: ModemSettings, timeout: float) -> str:
    """Probe every port once; a table of what answered (raises if nothing matches)."""
    if not expand_ports(patterns):
        raise SupplierError(
            f"no serial ports match {' '.join(patterns)} "
            "(modems plugged in? udev names? see README, Troubleshooting)"
        )
    changed = asyncio.Event()

    async def on_event(event: PoolEvent) -> None:
        changed.set()

    pool = ModemPool(
        patterns,
        on_event,
        replace(settings, read_sms=False),
        rescan_interval=3600.0,
    )
    await pool.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if all(_settled(m.state, m.network.registration) for m in pool):
                break
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), max(0.0, deadline - time.monotonic()))
        rows = []
        for modem in sorted(pool, key=lambda m: m.port):
            sim = modem.sim if modem.ready else None
            device = modem.device
            vendor = " ".join(x for x in (device.manufacturer, device.model) if x) or "-"
            rssi = modem.network.rssi
            signal = "-" if rssi is None or rssi == 99 else f"{rssi} ({-113 + 2 * rssi} dBm)"
            stat = modem.network.registration
            registration = "-" if stat is None else REGISTRATION_NAMES.get(stat, str(stat))
            state = modem.state.value
            if modem.state is not ModemState.READY and modem.detail:
                state += f": {modem.detail}"
            rows.append(
                [
                    modem.port,
                    vendor,
                    device.imei or "-",
                    sim.iccid if sim else "-",
                    (sim.imsi or "-") if sim else "-",
                    f"+{sim.number}" if sim and sim.number else "-",
                    f"{_network_name(modem.network.operator)} {registration}" if sim else "-",
                    signal if sim else "-",
                    state,
                ]
            )
    finally:
        await pool.stop()
    header = ["PORT", "MODEM", "IMEI", "ICCID", "IMSI", "NUMBER", "NETWORK", "SIGNAL", "STATE"]
    ready = sum(1 for row in rows if row[-1] == "ready")
    return format_table(header, rows) + f"\n{len(rows)} ports, {ready} SIMs ready"


def _settled(state: ModemState, registration: int | None) -> bool:
    if state is ModemState.READY:
        return registration is not None
    return state in _SETTLED


def _ago(now: float, then: float | None) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, now - then)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def _status_base(config: Config) -> str | None:
    """The running daemon's status address, seen from this host (None: port 0)."""
    host, port = config.status.listen
    if port == 0:
        return None
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a comparison, not a bind
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def daemon_sims(config: Config, timeout: float = 2.0) -> list[dict[str, Any]] | None:
    """The running daemon's live SIM rows (its status API), or None if none answers."""
    base = _status_base(config)
    if base is None:
        return None
    token = config.status.token.get_secret_value() if config.status.token else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(f"{base}/api/sims", headers=headers) as response,
        ):
            if response.status != 200:
                return None
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    sims = body.get("sims") if isinstance(body, dict) else None
    return sims if isinstance(sims, list) else None


def live_view(rows: list[dict[str, Any]]) -> str:
    """The daemon's view of its ports, as `scan` would print it."""
    table = []
    for row in rows:
        rssi = row.get("rssi")
        signal = "-" if rssi is None or rssi == 99 else f"{rssi} ({-113 + 2 * rssi} dBm)"
        network = f"{row.get('country') or '?'}/{row.get('operator') or ANY}"
        table.append(
            [
                str(row.get("port") or "-"),
                str(row.get("model") or "-"),
                str(row.get("iccid") or "-"),
                f"+{row['number']}" if row.get("number") else "-",
                f"{network} {row.get('registration') or ''}".strip() if row.get("iccid") else "-",
                signal,
                str(row.get("state") or "-"),
            ]
        )
    header = ["PORT", "MODEM", "ICCID", "NUMBER", "NETWORK", "SIGNAL", "STATE"]
    ready = sum(1 for r in rows if r.get("state") == "ready")
    return format_table(header, table) + f"\n{len(rows)} ports, {ready} SIMs ready"


def held_ports(patterns: Sequence[str]) -> list[str]:
    """Ports another process holds exclusively (as a running daemon does): checked at once."""
    held = []
    for port in expand_ports(patterns):
        try:
            fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(port)
        except OSError:
            pass
        finally:
            os.close(fd)
    return held


def sims_report(config: Config) -> str:
    """The SIM inventory (the daemon may be running: then its live states are shown)."""
    path = config.storage.path
    if config.storage.url is None and not Path(path).exists():
        raise SupplierError(f"no database at {path} (has the daemon run with this config?)")
    return asyncio.run(_sims_report(config, time.time()))


async def _sims_report(config: Config, now: float) -> str:
    live = await daemon_sims(config)
    live_by_iccid = {row["iccid"]: row for row in live or () if row.get("iccid")}
    store = await open_store(config.storage)
    try:
        # The inventory the daemon uses, with the config's overrides: the same
        # number, country and operator as the hubs are sold.
        inventory = Inventory.from_config(store, config, clock=lambda: now)
        await inventory.load()
    finally:
        await store.close()
    open_by_iccid: dict[str, list[str]] = {}
    for activation in inventory.activations.values():
        if activation.is_open(now):
            open_by_iccid.setdefault(activation.iccid, []).append(
                f"{activation.hub}:{activation.service}#{activation.id}"
            )
    history: dict[str, list[str]] = {}
    for (number, service), use in sorted(inventory.usage.items()):
        history.setdefault(number, []).append(
            f"{service} {use.sold}/{use.cancelled}/{use.offers}" + ("!" if use.blocked else "")
        )
    rows = []
    sims = sorted(inventory.sims.values(), key=lambda s: (s.port or "", s.iccid))
    for sim in sims:
        row = live_by_iccid.get(sim.iccid)
        if row is not None:
            state = f"{row.get('state', '?')} (live)"
        else:
            state = ("on sale" if sim.enabled else "out of sale") + (
                f", last seen {_ago(now, sim.last_seen)}"
            )
        rows.append(
            [
                f"+{sim.number}" if sim.number else "-",
                sim.iccid,
                f"{sim.country or '?'}/{sim.operator or ANY}",
                state + (f" on {os.path.basename(sim.port)}" if sim.port else ""),
                ", ".join(open_by_iccid.get(sim.iccid, [])) or "-",
                " ".join(history.get(sim.number or "", [])) or "-",
            ]
        )
    header = [
        "NUMBER",
        "ICCID",
        "COUNTRY/OPERATOR",
        "STATE",
        "OPEN",
        "HISTORY sold/cancelled/offered",
    ]
    total_open = sum(len(v) for v in open_by_iccid.values())
    source = (
        "live states from the running daemon"
        if live is not None
        else "the daemon is not answering: states from the store (last seen is "
        "refreshed every minute while a SIM is live)"
    )
    return (
        format_table(header, rows)
        + f"\n{len(rows)} SIMs, {sum(1 for s in sims if s.enabled)} on sale, "
        f"{total_open} open activations; {source}"
    )
