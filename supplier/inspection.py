"""`supplier scan` and `supplier sims`: what is plugged in, and what the store knows.

`scan` probes the ports once through the same modem code as the daemon but
never reads or deletes a stored SMS, so it cannot take messages away. Ports
held by a running daemon are opened exclusively by it and show as busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from modems.events import REGISTRATION_NAMES, ModemState, PoolEvent
from modems.modem import ModemSettings
from modems.pool import ModemPool, expand_ports

from .errors import SupplierError
from .networks import ANY, COUNTRIES, OPERATORS, slugs_for
from .store import Store

__all__ = ["format_table", "scan", "sims_report"]

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


def sims_report(path: str) -> str:
    """The SIM inventory as the store has it (the daemon may be running)."""
    if not Path(path).exists():
        raise SupplierError(f"no database at {path} (has the daemon run with this config?)")
    return asyncio.run(_sims_report(path, time.time()))


async def _sims_report(path: str, now: float) -> str:
    store = await Store.open(path)
    try:
        sims = await store.load_sims()
        usage = await store.load_usage()
        activations = await store.load_activations(since=now)
    finally:
        await store.close()
    open_by_iccid: dict[str, list[str]] = {}
    for activation in activations:
        if activation.is_open(now):
            open_by_iccid.setdefault(activation.iccid, []).append(
                f"{activation.hub}:{activation.service}#{activation.id}"
            )
    history: dict[str, list[str]] = {}
    for (number, service), use in sorted(usage.items()):
        history.setdefault(number, []).append(
            f"{service} {use.sold}/{use.cancelled}/{use.offers}" + ("!" if use.blocked else "")
        )
    rows = []
    for sim in sorted(sims, key=lambda s: (s.port or "", s.iccid)):
        sim_number = sim.number_manual or sim.number
        country: str | None = sim.country
        operator: str | None = sim.operator
        if not country:
            country, operator = slugs_for(sim.imsi, {})
        state = "on sale" if sim.enabled else "out of sale"
        rows.append(
            [
                f"+{sim_number}" if sim_number else "-",
                sim.iccid,
                f"{country or '?'}/{operator or ANY}",
                f"{state}, seen {_ago(now, sim.last_seen)}"
                + (f" on {os.path.basename(sim.port)}" if sim.port else ""),
                ", ".join(open_by_iccid.get(sim.iccid, [])) or "-",
                " ".join(history.get(sim_number or "", [])) or "-",
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
    return (
        format_table(header, rows)
        + f"\n{len(rows)} SIMs, {sum(1 for s in sims if s.enabled)} on sale, "
        f"{total_open} open activations"
    )
