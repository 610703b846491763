"""Several hosts on the operators' status route: every host's SIMs, liveness, actions.

With a shared store (PostgreSQL, `store.shared`) the status page of any host
shows the whole supplier: its own SIMs from its inventory (live detail: the
modem, the signal) and every other host's SIMs as they last published them
(`live_sims`, migration 7), with each host's liveness (`hosts`, its lease,
compared with the database server's clock as the allocation does).

An operator action on a SIM of another host reaches that host:
- On sale / out of sale and the SIM's number are rows of `sims`, shared by
  every host: the page's host writes them, allocations on every host read
  `sims.enabled` at once, and the owning host applies both to its inventory
  at its next look (`follow_operators`, every `host.renew` seconds): one
  SELECT of its own SIMs' rows, no messages to lose, nothing to reconnect.
- What needs the modem itself (USSD, a modem reset) is forwarded to the
  owning host's status route (`host.status_url`, published in
  `host_status_urls`, migration 9) with the status token (all hosts share
  one `status.token`); without a URL, or while that host is down, the answer
  is an error naming the host to go to.
"""

# SQL text here is assembled only from constant fragments; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from .errors import StoreError
from .inventory import NumberTaken
from .shared import SERVER_NOW
from .store import ACTIVATION_COLUMNS, Activation

if TYPE_CHECKING:
    from .inventory import Inventory

__all__ = ["HostInfo", "HostsView", "RemoteSim", "follow_operators", "remote_state"]

log = structlog.get_logger("supplier.hosts_status")


class SharedStore(Protocol):
    """What this module needs of the PostgreSQL store (`supplier.pgstore.PgStore`)."""

    async def _fetch(self, sql: str, *params: object) -> list[Any]: ...

    async def _write(self, op: Callable[[Any], Awaitable[Any]], what: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class HostInfo:
    """One host sharing the store, as its lease says."""

    name: str
    alive: bool  # its lease is ahead of the database server's clock
    lease_left: float  # seconds of lease left (negative: how long ago it ran out)
    started: float
    sims: int  # SIMs it last published
    present: int  # ... of which sellable when free
    status_url: str | None


@dataclass(frozen=True, slots=True)
class RemoteSim:
    """A SIM in some host's modems, as that host last published it, with its `sims` row."""

    iccid: str
    host: str
    host_alive: bool
    number: str | None
    country: str | None
    operator: str | None
    port: str | None
    present: bool
    published: float
    held_until: float | None
    holder: int | None
    enabled: bool
    imsi: str | None
    first_seen: float | None
    last_seen: float | None


def remote_state(sim: RemoteSim, now: float) -> str:
    """The page's state of another host's SIM (a subset of StatusView.sim_state's, plus two)."""
    if not sim.host_alive:
        return "host_down"  # not counted or sold by any host until its host renews
    if not sim.enabled:
        return "disabled"
    if sim.holder is not None and sim.held_until is not None and sim.held_until > now:
        return "active"
    if sim.present:
        return "ready"
    return "not_ready"  # its host says why on its own page (no signal, no number, …)


class HostsView:
    """This host's view of the others through the shared store."""

    def __init__(self, store: SharedStore, name: str, status_url: str | None) -> None:
        self.store = store
        self.name = name  # host.name
        self.status_url = status_url  # host.status_url: where the others reach this host
        self._looked = asyncio.Event()  # set (and replaced) after each look at `sims`

    def looked(self) -> None:
        """A look at operators' changes is complete (`follow_operators`)."""
        self._looked.set()
        self._looked = asyncio.Event()

    async def next_look(self) -> None:
        """Wait for the next complete look at operators' changes (no timeout: the caller's)."""
        await self._looked.wait()

    async def advertise(self, now: float) -> None:
        """Publish (or withdraw) this host's status URL for forwarded actions."""
        name, url = self.name, self.status_url

        async def op(db: Any) -> None:
            if url is None:
                await db.execute("DELETE FROM host_status_urls WHERE host = $1", name)
            else:
                await db.execute(
                    "INSERT INTO host_status_urls (host, url, updated) VALUES ($1, $2, $3) "
                    "ON CONFLICT (host) DO UPDATE SET url = excluded.url, "
                    "updated = excluded.updated "
                    "WHERE host_status_urls.url IS DISTINCT FROM excluded.url",
                    name,
                    url,
                    now,
                )

        await self.store._write(op, "cannot publish this host's status URL")

    async def hosts(self) -> list[HostInfo]:
        rows = await self.store._fetch(
            f"SELECT h.name, h.lease_until > {SERVER_NOW}, h.lease_until - {SERVER_NOW}, "
            "h.started, count(ls.iccid), count(ls.iccid) FILTER (WHERE ls.present), u.url "
            "FROM hosts h LEFT JOIN live_sims ls ON ls.host = h.name "
            "LEFT JOIN host_status_urls u ON u.host = h.name "
            "GROUP BY h.name, h.lease_until, h.started, u.url ORDER BY h.name"
        )
        return [
            HostInfo(
                str(name), bool(alive), float(left), float(started), int(sims), int(present), url
            )
            for name, alive, left, started, sims, present, url in rows
        ]

    async def live_sims(self, where: str = "", *params: object) -> dict[str, RemoteSim]:
        """ICCID → every SIM some host published (this host's included), or those `where`
        picks (a condition on `ls`, the live_sims row, with its parameters)."""
        rows = await self.store._fetch(
            f"SELECT ls.iccid, ls.host, h.lease_until > {SERVER_NOW}, ls.number, ls.country, "
            "ls.operator, ls.port, ls.present, ls.published, ls.held_until, ls.holder, "
            "COALESCE(s.enabled, true), s.imsi, s.first_seen, s.last_seen "
            "FROM live_sims ls JOIN hosts h ON h.name = ls.host "
            f"LEFT JOIN sims s ON s.iccid = ls.iccid {where}",
            *params,
        )
        return {str(row[0]): RemoteSim(*row) for row in rows}

    async def owner(self, iccid: str) -> RemoteSim | None:
        """The host that has this SIM in a modem, as published, or None."""
        return (await self.live_sims("WHERE ls.iccid = $1", iccid)).get(iccid)

    async def status_url_of(self, host: str) -> str | None:
        rows = await self.store._fetch("SELECT url FROM host_status_urls WHERE host = $1", host)
        return str(rows[0][0]) if rows else None

    async def activations(self, ids: list[int]) -> dict[int, Activation]:
        """The activations holding other hosts' SIMs (their page rows show them)."""
        if not ids:
            return {}
        rows = await self.store._fetch(
            f"SELECT {ACTIVATION_COLUMNS} FROM activations WHERE id = ANY($1::bigint[])", ids
        )
        return {int(row[0]): Activation(*row) for row in rows}

    async def usage(self, numbers: list[str]) -> dict[str, dict[str, dict[str, int]]]:
        """number → service → counts, for other hosts' SIMs' rows (the history column)."""
        if not numbers:
            return {}
        rows = await self.store._fetch(
            "SELECT number, service, offers, sold, cancelled, returned FROM usage "
            "WHERE number = ANY($1::text[])",
            numbers,
        )
        out: dict[str, dict[str, dict[str, int]]] = {}
        for number, service, offers, sold, cancelled, returned in rows:
            out.setdefault(number, {})[service] = {
                "offers": offers,
                "sold": sold,
                "cancelled": cancelled,
                "returned": returned,
            }
        return out

    async def set_enabled(self, iccid: str, enabled: bool) -> bool:
        """Put a SIM on sale or take it out, whichever host has it; False if no such SIM.

        Allocations on every host read `sims.enabled` in their transaction, so
        this takes effect for sales at once; the owning host's own view
        follows at its next look (`follow_operators`).
        """

        async def op(db: Any) -> bool:
            done = await db.execute("UPDATE sims SET enabled = $2 WHERE iccid = $1", iccid, enabled)
            return str(done) != "UPDATE 0"

        return bool(await self.store._write(op, f"cannot update SIM {iccid}"))

    async def number_taken(self, iccid: str, number: str) -> RemoteSim | None:
        """Another live host's SIM sold under this number, if any (two SIMs, one number)."""
        found = await self.live_sims("WHERE ls.number = $1 AND ls.iccid <> $2", number, iccid)
        return next((sim for sim in found.values() if sim.host_alive), None)

    async def set_number(self, iccid: str, number: str | None) -> bool:
        """The operator's number for a SIM another host has; its host applies it."""

        async def op(db: Any) -> bool:
            done = await db.execute(
                "UPDATE sims SET number_manual = $2 WHERE iccid = $1", iccid, number
            )
            return str(done) != "UPDATE 0"

        return bool(await self.store._write(op, f"cannot update SIM {iccid}"))

    async def operator_settings(self, iccids: list[str]) -> dict[str, tuple[bool, str | None]]:
        """ICCID → (enabled, the operator's number) as stored, for these SIMs."""
        if not iccids:
            return {}
        rows = await self.store._fetch(
            "SELECT iccid, enabled, number_manual FROM sims WHERE iccid = ANY($1::text[])",
            iccids,
        )
        return {str(iccid): (bool(enabled), manual) for iccid, enabled, manual in rows}


async def apply_operator_settings(inventory: Inventory, hosts: HostsView) -> int:
    """Make this host's inventory follow what operators stored on any host; how many changed.

    Only this host's SIMs in a modem: the others' are their hosts' to follow.
    """
    online = [sim.iccid for sim in inventory.sims.values() if sim.online]
    changed = 0
    for iccid, (enabled, manual) in (await hosts.operator_settings(online)).items():
        sim = inventory.sims.get(iccid)
        if sim is None:
            continue
        if sim.enabled != enabled:
            await inventory.set_enabled(iccid, enabled)
            changed += 1
        if sim.manual_number != manual:
            try:
                await inventory.set_number(iccid, manual)
            except NumberTaken as exc:  # another SIM here is sold under it: both would be
                log.warning(
                    "operator's number from another host not applied",
                    iccid=iccid,
                    port=sim.port,
                    error=str(exc),
                )
                continue
            changed += 1
    return changed


async def follow_operators(
    inventory: Inventory, hosts: HostsView, interval: float, clock: Callable[[], float] = time.time
) -> None:
    """Every `interval`: apply operators' changes; this host's status URL published first.

    Runs until cancelled; a database that does not answer is retried at the
    next interval (the changes wait in `sims`, nothing is lost), and the URL
    is published again once it answers.
    """
    advertised = False
    failing = False
    while True:
        try:
            if not advertised:
                await hosts.advertise(clock())
                advertised = True
            changed = await apply_operator_settings(inventory, hosts)
            hosts.looked()
            if changed:
                log.info("operator changes from another host applied", sims=changed)
            if failing:
                log.info("operators' changes read again")
                failing = False
        except StoreError as exc:
            advertised = False
            if not failing:  # one line per outage, not one per interval
                log.warning("cannot read operators' changes; retrying", error=str(exc))
                failing = True
        await asyncio.sleep(interval)
