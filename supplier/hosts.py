"""This host among several sharing one PostgreSQL store: its lease, its SIMs, the counts.

`Hosts` is what the Inventory asks in the shared mode (`Inventory.hosts`):
GET_NUMBER is one allocation transaction in the database (any live host's
SIM), GET_SERVICES reads counts cached from the database (refreshed every
second and right after this host's own GET_NUMBER/FINISH, so the hub's
handler never waits for a round trip), and the publisher keeps this host's
lease and SIMs in `live_sims` (supplier/shared.py).

A host that cannot reach its database sells nothing: GET_NUMBER raises
StoreError (the hub gets ERROR), and its counts are empty once the last
good ones are older than the lease (by then the other hosts have stopped
counting its SIMs too). Both resume by themselves when the database is back:
the first publish after a failure sends every SIM again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import structlog

from .config import HostConfig
from .errors import StoreError
from .sale import SaleRequest
from .shared import ROUTE_HORIZON, Counted, LiveSim
from .store import Activation

if TYPE_CHECKING:
    from .inventory import Inventory
    from .pgstore import PgStore

__all__ = ["Hosts"]

log = structlog.get_logger("supplier.hosts")

PUBLISH_POLL = 0.2  # seconds between two looks for SIM changes to publish (they batch)
COUNTS_INTERVAL = 1.0  # GET_SERVICES' counts are at most this old while the database answers
# Activation times (`created`, `release_at`: when a SIM's hold ends) are each host's own
# clock, compared by every other host's: a host whose clock is this far off the database
# server's sells nothing (it would sell SIMs another host still holds, or hold its own
# for too long) and says why, until its clock is set right (NTP).
MAX_CLOCK_SKEW = 5.0
Counts = dict[str, dict[str, dict[str, int]]]


class Hosts:
    def __init__(
        self,
        store: PgStore,
        inventory: Inventory,
        config: HostConfig,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.wall = wall  # this host's clock, as the inventory's activations take it
        self.inventory = inventory
        self.name = config.name
        self.lease = config.lease
        self.renew = config.renew
        self.log = log.bind(host=self.name)
        self._published: dict[str, LiveSim] = {}
        self._version = -1  # the inventory's version when its SIMs were last published
        self._whole = True  # the next publish sends every SIM (at start, after a failure)
        self._renewed = float("-inf")  # loop time of the last lease renewal
        self._publishing = asyncio.Lock()
        self._counted_sims = Counted({}, {})
        self._counted_at = float("-inf")  # loop time of the last counts read
        self._counts: Counts = {}  # the last answer: reused until the inventory changes
        self._counts_key: tuple[int, float] = (-1, 0.0)
        self._recount = asyncio.Event()  # count again now (a publish, a sale, a FINISH)
        # Recounts asked for by sales and FINISHes, and the newest ask a finished recount
        # covers: one recount answers every ask made before it started.
        self._asked = 0
        self._answered = 0
        self._counted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.publish_failing: str | None = None  # the last publish error, until one succeeds
        self.instance = uuid.uuid4().hex  # this process, among any renewing this name
        self.rival: str | None = None  # another process renewing this name's lease
        self.clock_skew: float | None = None  # seconds this host's clock is off, when too far

    # -- running ----------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publisher(), name=f"publisher {self.name}"),
            asyncio.create_task(self._counter(), name=f"shared counts {self.name}"),
        ]

    async def stop(self, *, leave: bool = True) -> None:
        """Stop publishing; `leave`: take this host's SIMs out of every count now (a clean
        stop) rather than when the lease runs out."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if leave:
            try:
                await self.store.leave(self.name)
            except StoreError as exc:
                self.log.warning(
                    "cannot withdraw this host's SIMs; they go with its lease", error=str(exc)
                )

    # -- publishing -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, LiveSim]:
        """This host's SIMs (those in its modems) as the other hosts should see them."""
        inventory = self.inventory
        return {
            sim.iccid: LiveSim(
                sim.iccid,
                sim.number,
                sim.country,
                sim.operator,
                sim.port,
                inventory.present(sim),
            )
            for sim in inventory.sims.values()
            if sim.online
        }

    async def publish(self, *, renew: bool = False) -> None:
        """Publish what changed since the last publish (everything after a failure); renew the
        lease with it. Without `renew`, nothing is written when nothing changed."""
        async with self._publishing:
            version = self.inventory.version
            if not renew and not self._whole and version == self._version:
                return
            current = self.snapshot()
            gone: Sequence[str] = ()
            if self._whole:
                changed = list(current.values())
            else:
                changed = [s for i, s in current.items() if self._published.get(i) != s]
                gone = [i for i in self._published if i not in current]
                if not renew and not changed and not gone:
                    self._version = version
                    return
            first = self._renewed == float("-inf")
            sent = self.wall()
            try:
                published = await self.store.publish(
                    self.name, self.lease, changed, gone, whole=self._whole, instance=self.instance
                )
            except StoreError:
                self._whole = True  # whatever got through, the next publish says it all
                raise
            self._check_clock(sent, self.wall(), published.now)
            if published.rival is not None and not first and published.rival != self.rival:
                # Not this host's previous run (that one is seen only at the first publish):
                # another process renews this name, and each one's SIMs replace the other's.
                self.log.error(
                    "another process publishes SIMs under this host name; give each host its "
                    "own host.name",
                    other=published.rival,
                )
            self.rival = published.rival if not first else None
            self._published = current
            self._version = version
            self._whole = False
            self._renewed = asyncio.get_running_loop().time()
        self._recount.set()

    def _check_clock(self, sent: float, answered: float, server: float) -> None:
        """Compare this host's clock with the server's, read between `sent` and `answered`."""
        off = server - (sent + answered) / 2
        if abs(off) - (answered - sent) / 2 <= MAX_CLOCK_SKEW:
            if self.clock_skew is not None:
                self.log.info("this host's clock agrees with the database server's again")
            self.clock_skew = None
            return
        if self.clock_skew is None:
            self.log.error(
                "this host's clock is off the database server's; it sells nothing until "
                "they agree (set the time right, e.g. NTP)",
                seconds=round(-off, 1),
            )
        self.clock_skew = -off

    async def _publisher(self) -> None:
        """Renew the lease every `renew` seconds; publish SIM changes within PUBLISH_POLL."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.publish(renew=loop.time() >= self._renewed + self.renew)
            except StoreError as exc:
                if self.publish_failing is None:
                    self.log.error(
                        "cannot publish this host's SIMs; the other hosts stop counting them "
                        "when the lease runs out",
                        error=str(exc),
                        lease=self.lease,
                    )
                self.publish_failing = str(exc)
                await asyncio.sleep(min(1.0, self.renew))  # retry: never a hot loop
                continue
            if self.publish_failing is not None:
                self.log.info("publishing this host's SIMs again", sims=len(self._published))
                self.publish_failing = None
            await asyncio.sleep(
                min(PUBLISH_POLL, max(0.0, self._renewed + self.renew - loop.time()))
            )

    # -- selling --------------------------------------------------------------------------

    async def allocate(self, request: SaleRequest, *, release_after: float) -> Activation | None:
        """One allocation transaction over every live host's SIMs (raises StoreError).

        This host's own changes are published first: a SIM it lost a moment
        ago is not sold, one that just came is.
        """
        await self.publish()
        if self.clock_skew is not None:
            # Its `now` decides whether other hosts' holds have ended: a clock ahead sells
            # SIMs they still hold (sold twice), one behind holds its own sales too long.
            raise StoreError(
                f"host {self.name}: this host's clock is {self.clock_skew:+.0f} s off the "
                "database server's; no sale until they agree"
            )
        activation = await self.store.allocate(
            request,
            now=self.inventory.clock(),  # activation times: the inventory's clock, as on SQLite
            release_after=release_after,
        )
        if activation is not None:
            await self.recounted()
        return activation

    async def recounted(self) -> None:
        """Until a recount started after this call is over: this host's own sale or FINISH
        shows in the next GET_SERVICES it answers. Concurrent asks share one recount; a
        failed one ends the wait too (the sale stands; the counts catch up later)."""
        self._asked += 1
        wanted = self._asked
        self._recount.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.store.timeout):
                while self._answered < wanted:
                    self._counted.clear()
                    await self._counted.wait()

    def counts(self) -> Counts:
        """Every live host's sellable SIMs as last read, without this host's own that left
        sale since (withheld for a switch, lost, no signal, sold): those never show a
        moment longer than here. Nothing once the last read is older than the lease."""
        if asyncio.get_running_loop().time() - self._counted_at > self.lease:
            return {}
        inventory = self.inventory
        key = (inventory.version, self._counted_at)
        if key == self._counts_key:
            return self._counts
        now = inventory.clock()
        counted = self._counted_sims
        out = {c: {o: dict(s) for o, s in ops.items()} for c, ops in counted.others.items()}
        for iccid, (country, operator, services) in counted.mine.items():
            sim = inventory.sims.get(iccid)
            if sim is None or not inventory.present(sim):
                continue  # left sale since it was counted
            if (sim.country, sim.operator) != (country, operator):
                continue  # its market changed (SIGHUP): counted again within a second
            entry = out.setdefault(country, {}).setdefault(
                operator, dict.fromkeys(inventory.services, 0)
            )
            if inventory.holder(iccid, now) is None:
                for service in services:
                    if service in entry:
                        entry[service] += 1
        self._counts, self._counts_key = out, key
        return out

    async def recount(self) -> None:
        self._counted_sims = await self.store.counts(
            self.inventory.services, self.inventory.clock(), self.name
        )
        self._counted_at = asyncio.get_running_loop().time()

    async def learn(self) -> None:
        """Bring in what other hosts did to this host's SIMs (`Inventory.learn`)."""
        inventory = self.inventory
        mine = self._published
        recent = inventory.clock() - ROUTE_HORIZON  # older ones hold nothing and route nothing
        known_open = [
            a.id
            for a in inventory.activations.values()
            if a.finished is None and a.iccid in mine and a.created > recent
        ]
        numbers = sorted({s.number for s in mine.values() if s.number is not None})
        activations, usage = await self.store.held_here(self.name, known_open, numbers)
        inventory.learn(activations, usage)

    async def confirm_withheld(self, iccid: str) -> None:
        """Before a withheld SIM leaves its module (rotation.py): make every host see it
        withheld, then bring in every host's hold on it.

        Publishing updates the SIM's `live_sims` row, so it waits for an allocation
        on another host that has locked the row, whose hold `learn` then reads; an
        allocation that locks the row after it sees the SIM not present. Without
        this, this host would learn of another host's sale up to a second late and
        could switch a just-sold SIM out of its module (the buyer's SMS would wait
        until the SIM came back). Raises StoreError when the database cannot say.
        """
        if iccid in self.inventory.sims:
            await self.publish()
            await self.learn()

    async def _counter(self) -> None:
        failing = False
        while True:
            self._recount.clear()
            asked = self._asked
            try:
                await self.recount()
            except StoreError as exc:
                if not failing:
                    self.log.error("cannot count the SIMs on sale", error=str(exc))
                failing = True
            else:
                if failing:
                    self.log.info("counting the SIMs on sale again")
                failing = False
            finally:
                self._answered = asked
                self._counted.set()
            if not failing:
                try:
                    await self.learn()
                except StoreError as exc:
                    self.log.warning("cannot read what other hosts sold here", error=str(exc))
            if failing:
                await asyncio.sleep(min(1.0, self.renew))  # asked again or not: never a hot loop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(COUNTS_INTERVAL):
                    await self._recount.wait()

    async def caught_up(self) -> None:
        """Until this host's SIMs as they are now are published and counted (tests, start-up)."""
        await self.publish()
        await self.recount()
