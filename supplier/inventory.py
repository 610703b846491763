"""The SIM inventory: what can be sold right now, in memory, rebuilt from the store.

Counts and allocation never touch a serial port: modem events update the
SIM states here, and the hub-facing requests read them plus one small write
transaction. A SIM is *sellable* for a service when it is in a modem that is
ready, registered (home or roaming), has a known number and a known country,
is enabled, holds no open activation (one not finished whose
`release_after` has not passed), and the number's history allows the service:
never after a FINISH 1 or 3, and at most `MAX_OFFERS` hand-outs in all.

What is sellable is kept indexed (`_Stock`), updated by every change of a
SIM's state (`_restock`), so GET_NUMBER finds the least recently used SIM
and GET_SERVICES its counts without looking at every SIM: at 512 SIMs and
hundreds of requests a second, those scans held the event loop.

Several hosts on one PostgreSQL store (`hosts`, supplier/hosts.py): this
host's SIMs' states are still kept here, and published for the others; a
sale is one transaction in the database over every live host's SIMs with
the same rules (supplier/shared.py), and GET_SERVICES counts them all.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from modems.events import NetworkInfo, SimIdentity

from .backend import StoreBackend
from .config import Config, SimOverride
from .errors import SupplierError
from .networks import ANY, international_number, slugs_for
from .sale import NO_PREFIXES, Prefixes, SaleRequest
from .shared import MAX_OFFERS, ROUTE_HORIZON
from .store import Activation, FinishStatus, SimRow, Usage

if TYPE_CHECKING:
    from .hosts import Hosts

__all__ = [
    "MAX_OFFERS",
    "ROUTE_HORIZON",
    "Inventory",
    "NumberTaken",
    "SimState",
    "sale_number",
]

log = structlog.get_logger("supplier.inventory")

_KEEP_FINISHED = 7 * 86400.0  # recent activations kept in memory (status page, routing)


class NumberTaken(SupplierError):
    """An operator's number that another SIM already has (both would be sold)."""


def sale_number(
    *,
    manual: str | None,
    configured: str | None,
    reported: str | None,
    learned: str | None = None,
    country: str | None,
) -> str | None:
    """The number a SIM is sold under: the one rule, for the hubs, the page and the CLI.

    The operator's setting first, then the config's `sims:` entry, then what
    the modem reported, then what its network said by USSD (never over any
    other); with the country code of the SIM's home country.
    """
    raw = manual or configured or reported or learned
    return international_number(raw, country) if raw else None


@dataclass(slots=True)
class SimState:
    """One SIM as the inventory sees it (mutable; owned by the Inventory)."""

    iccid: str
    imsi: str | None = None
    modem_number: str | None = None
    manual_number: str | None = None
    config_number: str | None = None
    learned_number: str | None = None  # told by its operator (USSD or SMS; upkeep.py)
    country: str | None = None
    operator: str = ANY
    port: str | None = None
    enabled: bool = True
    online: bool = False  # in a modem that reported it ready and has not lost it
    registered: bool = False
    rssi: int | None = None
    last_used: float | None = None
    first_seen: float = 0.0
    last_seen: float = 0.0
    # The number sold: the operator's setting first, then the config's, then what
    # the modem said, then what the network told us by USSD, with its country code.
    # Kept up to date by the Inventory.
    number: str | None = None


_Key = tuple[str, str, str]  # (country, operator or ANY, service)
_Entry = tuple[float, str, int]  # (last used, ICCID, stamp): heap order is least recently used


class _Stock:
    """The sellable SIMs, indexed: a least-recently-used heap per (country, operator, service).

    Each SIM is in the heaps of its country, for its operator and for ANY,
    for every service its number may still be offered for, while it is
    sellable; with counts per (country, operator, service) for GET_SERVICES.
    A change re-enters the SIM under a new stamp; entries with an old stamp
    are dropped when they come to the top (lazy invalidation), and a heap
    that is mostly stale entries is rebuilt.
    """

    def __init__(self) -> None:
        self.heaps: dict[_Key, list[_Entry]] = {}
        self.live: dict[_Key, int] = {}  # valid entries per heap
        self.stock: dict[_Key, int] = {}  # (country, the SIM's operator, service) → sellable
        self.present: dict[tuple[str, str], int] = {}  # (country, operator) → present SIMs
        self._stamps: dict[str, int] = {}
        # (present key, services) → (heap keys, stock keys): a few kinds of SIM, built once
        self._keys: dict[
            tuple[tuple[str, str], tuple[str, ...]], tuple[frozenset[_Key], tuple[_Key, ...]]
        ] = {}
        # iccid → (present key, last used, heap keys, stock keys) as last entered
        self._entered: dict[
            str, tuple[tuple[str, str] | None, float, frozenset[_Key], tuple[_Key, ...]]
        ] = {}

    def enter(
        self,
        iccid: str,
        present: tuple[str, str] | None,
        last_used: float,
        services: Sequence[str],
    ) -> None:
        """Record a SIM as it is now: present under (country, operator) or not, and for
        which services it is sellable (none while held or reserved)."""
        stock: tuple[_Key, ...] = ()
        keys: frozenset[_Key] = frozenset()
        if present is not None:
            kind = (present, tuple(services))
            built = self._keys.get(kind)
            if built is None:
                country, operator = present
                built = self._keys[kind] = (
                    frozenset(
                        (country, op, service) for service in services for op in (operator, ANY)
                    ),
                    tuple((country, operator, service) for service in services),
                )
            keys, stock = built
        entered = (present, last_used, keys, stock)
        before = self._entered.get(iccid)
        if before == entered:
            return
        if before is None:
            self._count(present, stock, keys, +1)
        elif before[0] != present or before[2] != keys:  # not only its last use changed
            self._count(before[0], before[3], before[2], -1)
            self._count(present, stock, keys, +1)
        if present is None:
            self._entered.pop(iccid, None)
        else:
            self._entered[iccid] = entered
        if not keys and (before is None or not before[2]):
            return  # in no heap before or now (held, reserved): no entry to replace
        stamp = self._stamps[iccid] = self._stamps.get(iccid, 0) + 1
        for key in keys:
            heap = self.heaps.setdefault(key, [])
            heapq.heappush(heap, (last_used, iccid, stamp))
            if len(heap) > 2 * self.live[key] + 64:
                heap[:] = [e for e in heap if self._stamps.get(e[1]) == e[2]]
                heapq.heapify(heap)

    def _count(
        self, present: tuple[str, str] | None, stock: Iterable[_Key], keys: Iterable[_Key], n: int
    ) -> None:
        if present is not None:
            self.present[present] = self.present.get(present, 0) + n
        for key in stock:
            self.stock[key] = self.stock.get(key, 0) + n
        for key in keys:
            self.live[key] = self.live.get(key, 0) + n

    def first(self, key: _Key, skip: Callable[[str], bool]) -> str | None:
        """The least recently used SIM under `key` that `skip` does not refuse."""
        heap = self.heaps.get(key)
        if not heap:
            return None
        skipped: list[_Entry] = []
        found = None
        while heap:
            entry = heap[0]
            if self._stamps.get(entry[1]) != entry[2]:
                heapq.heappop(heap)  # stale: the SIM changed since this entry
            elif skip(entry[1]):
                skipped.append(heapq.heappop(heap))
            else:
                found = entry[1]
                break
        for entry in skipped:
            heapq.heappush(heap, entry)
        return found


def _never(iccid: str) -> bool:
    return False


class Inventory:
    def __init__(
        self,
        store: StoreBackend,
        *,
        services: Sequence[str],
        release_after: float,
        sim_overrides: Mapping[str, SimOverride] | None = None,
        network_overrides: Mapping[str, tuple[str, str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sims: dict[str, SimState] = {}
        self.usage: dict[tuple[str, str], Usage] = {}
        self.activations: dict[int, Activation] = {}  # unfinished, and recent finished ones
        self._holder: dict[str, int] = {}  # iccid → the activation that may hold it
        self._reserved: set[str] = set()  # iccids being committed by a GET_NUMBER in flight
        self._numbers_claimed: set[str] = set()  # numbers an operator's change is writing
        # SIM banks (rotation.py): SIMs about to be switched out, not sellable even
        # while their module still reports them; and what the hubs ask for.
        self.withheld: set[str] = set()
        self.demand: Counter[tuple[str, str, str]] = Counter()  # (country, operator, service)
        # (country, operator) of every SIM ever derived, and (country, ANY): demand is
        # counted only for these, so made-up slugs from a hub cannot grow it without bound.
        self._markets: set[tuple[str, str]] = set()
        # GET_SERVICES is asked every few seconds by every hub: its counts are
        # cached until something changes (`version`) or a hold runs out.
        self.version = 0
        self._counts: dict[str, dict[str, dict[str, int]]] | None = None
        self._counts_key: tuple[int, float] = (-1, 0.0)
        self.on_sold: Callable[[str], None] | None = None  # FINISH 3 on this ICCID (upkeep)
        # Several hosts on one PostgreSQL store (supplier/hosts.py): sales and counts come
        # from the database over every live host's SIMs; None: this inventory is the truth.
        self.hosts: Hosts | None = None
        # What is sellable, indexed (GET_NUMBER and GET_SERVICES without a scan);
        # holds that run out, by when (each SIM is restocked then).
        self._stock = _Stock()
        self._releases: list[tuple[float, str]] = []
        # number → ICCIDs sold under it: two SIMs claiming one number are both held
        # back, and a FINISH changes what a number may be offered for.
        self._by_number: dict[str, set[str]] = {}
        self.reconfigure(
            services=services,
            release_after=release_after,
            sim_overrides=sim_overrides or {},
            network_overrides=network_overrides or {},
        )

    @classmethod
    def from_config(
        cls, store: StoreBackend, config: Config, *, clock: Callable[[], float] = time.time
    ) -> Inventory:
        """The inventory `config` asks for: the daemon's, and `supplier sims`'s."""
        inventory = cls(
            store,
            services=config.services,
            release_after=config.activation.release_after,
            clock=clock,
        )
        inventory.reconfigure_from(config)
        return inventory

    def reconfigure_from(self, config: Config) -> None:
        """The config's services, holds and overrides (at start and on SIGHUP)."""
        self.reconfigure(
            services=config.services,
            release_after=config.activation.release_after,
            sim_overrides=config.sims,
            network_overrides={
                code: (o.country, o.operator)
                for code, o in config.networks.items()
                if o.country is not None and o.operator is not None  # not only USSD codes
            },
        )

    # -- start-up -------------------------------------------------------------------

    async def load(self) -> None:
        now = self.clock()
        for row in await self.store.load_sims():
            self._apply_row(row)
        self.usage = await self.store.load_usage()
        for activation in await self.store.load_activations(since=now - _KEEP_FINISHED):
            self._remember(activation)
        self._restock_all()
        log.info(
            "inventory loaded",
            sims=len(self.sims),
            open_activations=sum(1 for a in self.activations.values() if a.is_open(now)),
        )

    def reconfigure(
        self,
        *,
        services: Sequence[str],
        release_after: float,
        sim_overrides: Mapping[str, SimOverride],
        network_overrides: Mapping[str, tuple[str, str]],
    ) -> None:
        """New settings (SIGHUP): activations are kept; SIM slugs are re-derived."""
        self.services: tuple[str, ...] = tuple(services)
        self.release_after = release_after
        self.sim_overrides = dict(sim_overrides)
        self.network_overrides = dict(network_overrides)
        for sim in self.sims.values():
            self._derive(sim)
        self._restock_all()

    def _apply_row(self, row: SimRow) -> SimState:
        sim = self.sims.get(row.iccid) or SimState(row.iccid)
        sim.imsi = row.imsi
        sim.modem_number = row.number
        sim.manual_number = row.number_manual
        sim.port = row.port
        sim.enabled = row.enabled
        sim.first_seen = row.first_seen
        sim.last_seen = row.last_seen
        sim.last_used = row.last_used
        self.sims[row.iccid] = sim
        self._derive(sim)
        return sim

    def _derive(self, sim: SimState) -> None:
        """Country and operator from the home network, then the SIM's own overrides."""
        country, operator = slugs_for(sim.imsi, self.network_overrides)
        override = self.sim_overrides.get(sim.iccid)
        sim.config_number = override.number if override else None
        sim.country = (override.country if override and override.country else None) or country
        sim.operator = (override.operator if override and override.operator else None) or operator
        if sim.country is not None:
            self._markets.update(((sim.country, sim.operator), (sim.country, ANY)))
        previous = sim.number
        sim.number = sale_number(
            manual=sim.manual_number,
            configured=sim.config_number,
            reported=sim.modem_number,
            learned=sim.learned_number,
            country=sim.country,
        )
        if previous != sim.number:
            # A SIM that shared the old number may be sold again; one that has the new
            # number is held back with this one (`present`).
            if previous is not None:
                self._by_number.get(previous, set()).discard(sim.iccid)
                self._restock_number(previous)
            if sim.number is not None:
                self._by_number.setdefault(sim.number, set()).add(sim.iccid)
                self._restock_number(sim.number)
        self._restock(sim)
        self.version += 1

    def _remember(self, activation: Activation, *, restock: bool = True) -> None:
        self.version += 1
        self.activations[activation.id] = activation
        if activation.finished is None:
            current = self._holder.get(activation.iccid)
            if current is None or current < activation.id:
                self._holder[activation.iccid] = activation.id
                sim = self.sims.get(activation.iccid)
                if sim is not None and restock:
                    self._restock(sim)

    # -- the index of what is sellable ---------------------------------------------------

    def _restock(self, sim: SimState, now: float | None = None) -> None:
        """Re-index one SIM after any change to what decides whether it is sellable.

        Every change of a SIM's state, hold, reservation or number history
        comes through here: the index is what GET_NUMBER and GET_SERVICES read.
        """
        now = self.clock() if now is None else now
        if not self.present(sim):
            self._stock.enter(sim.iccid, None, 0.0, ())
            return
        assert sim.country is not None
        assert sim.number is not None
        number = sim.number
        services: Sequence[str] = ()
        if sim.iccid not in self._reserved:
            held = self.holder(sim.iccid, now)
            if held is None:
                services = [s for s in self.services if self.allows(number, s)]
            else:
                heapq.heappush(self._releases, (held.release_at, sim.iccid))
        self._stock.enter(sim.iccid, (sim.country, sim.operator), sim.last_used or 0.0, services)

    def _restock_all(self) -> None:
        self._stock = _Stock()
        self._releases.clear()
        now = self.clock()
        for sim in self.sims.values():
            self._restock(sim, now)

    def _restock_number(self, number: str, also: SimState | None = None) -> None:
        """Re-index every SIM sold under `number`, and `also` if it is not one of them
        (once each: a GET_NUMBER or FINISH re-indexes its SIM once, not twice)."""
        now = self.clock()
        iccids = self._by_number.get(number, ())
        for iccid in iccids:
            sim = self.sims.get(iccid)  # None while a new SIM is being recorded
            if sim is not None:
                self._restock(sim, now)
        if also is not None and also.iccid not in iccids:
            self._restock(also, now)

    def _release_due(self, now: float) -> None:
        """Holds whose `release_after` has passed put their SIMs back on sale."""
        releases = self._releases
        while releases and releases[0][0] <= now:
            _, iccid = heapq.heappop(releases)
            sim = self.sims.get(iccid)
            if sim is not None:
                self._restock(sim, now)
                self.version += 1

    # -- modem events -------------------------------------------------------------------

    async def sim_ready(self, port: str, identity: SimIdentity, network: NetworkInfo) -> SimState:
        now = self.clock()
        sim = self.sims.get(identity.iccid) or SimState(identity.iccid)
        sim.imsi = identity.imsi
        self._derive(sim)
        row = await self.store.upsert_sim(
            iccid=identity.iccid,
            imsi=identity.imsi,
            number=identity.number,
            country=sim.country,
            operator=sim.operator,
            port=port,
            now=now,
        )
        sim = self._apply_row(row)
        for other in self.sims.values():
            if other.port == port and other.iccid != sim.iccid and other.online:
                other.online = False
                self._restock(other)
        sim.online = True
        sim.registered = network.registered
        sim.rssi = network.rssi
        self._restock(sim)
        self.version += 1
        if sim.number is None:
            log.warning("SIM has no known number; not sold", iccid=sim.iccid, port=port)
        if sim.country is None:
            log.warning(
                "SIM's home network is unknown; not sold", port=port, iccid=sim.iccid, imsi=sim.imsi
            )
        return sim

    def network_changed(self, iccid: str, network: NetworkInfo) -> None:
        sim = self.sims.get(iccid)
        if sim is not None:
            if sim.registered != network.registered:
                sim.registered = network.registered
                self._restock(sim)
                self.version += 1
            sim.rssi = network.rssi

    def sim_lost(self, iccid: str, port: str | None = None) -> None:
        """The SIM left `port`; a late report from a modem it has already left is ignored
        (it was moved, and its new modem reported it ready first)."""
        sim = self.sims.get(iccid)
        if sim is not None and (port is None or sim.port == port):
            sim.online = False
            sim.registered = False
            self._restock(sim)
            self.version += 1

    def modem_gone(self, port: str) -> None:
        for sim in self.sims.values():
            if sim.port == port and sim.online:
                sim.online = False
                sim.registered = False
                self._restock(sim)
                self.version += 1

    # -- operator actions (status route) -------------------------------------------------

    async def set_number(self, iccid: str, number: str | None) -> SimState | None:
        """An operator's number for a SIM (digits with country code); None clears it.

        Raises NumberTaken when the number it would be sold under is another
        SIM's: two SIMs with one number would both be sold and both get its SMS.
        """
        sim = self.sims.get(iccid)
        if sim is None:
            return None
        wanted = sale_number(
            manual=number,
            configured=sim.config_number,
            reported=sim.modem_number,
            learned=sim.learned_number,
            country=sim.country,
        )
        other = self.owner_of(wanted, besides=iccid) if wanted else None
        if other is not None:
            where = f" in {other.port}" if other.port else ""
            raise NumberTaken(f"+{wanted} is already the number of SIM {other.iccid}{where}")
        if wanted in self._numbers_claimed:
            raise NumberTaken(f"+{wanted} is being given to another SIM right now")
        if wanted:
            self._numbers_claimed.add(wanted)  # two requests at once cannot both pass the check
        try:
            if not await self.store.set_sim_number(iccid, number):
                return None
            sim.manual_number = number
            self._derive(sim)
        finally:
            self._numbers_claimed.discard(wanted or "")
        log.info("SIM number set by an operator", iccid=iccid, number=sim.number, port=sim.port)
        return sim

    def owner_of(self, number: str, *, besides: str = "") -> SimState | None:
        """The SIM (other than `besides`) sold under this number, if any."""
        others = self._by_number.get(number, set()) - {besides}
        return self.sims.get(min(others)) if others else None

    def learned_number(self, iccid: str, number: str) -> None:
        """The number the SIM's network told us (it never overrides another source)."""
        sim = self.sims.get(iccid)
        if sim is not None:
            sim.learned_number = number
            self._derive(sim)

    def conflicting(self, iccid: str) -> str | None:
        """Another SIM sold under this SIM's number, if any: neither is sold until resolved."""
        sim = self.sims.get(iccid)
        other = self.owner_of(sim.number, besides=iccid) if sim and sim.number else None
        return other.iccid if other is not None else None

    async def set_enabled(self, iccid: str, enabled: bool) -> SimState | None:
        """Take a SIM out of sale (False) or put it back (True); activations are kept."""
        sim = self.sims.get(iccid)
        if sim is None or not await self.store.set_sim_enabled(iccid, enabled):
            return None
        sim.enabled = enabled
        self._restock(sim)
        self.version += 1
        log.info(
            "SIM put on sale" if enabled else "SIM taken out of sale", port=sim.port, iccid=iccid
        )
        return sim

    # -- what can be sold -------------------------------------------------------------------

    def holder(self, iccid: str, now: float | None = None) -> Activation | None:
        """The open activation holding this SIM, if any."""
        activation_id = self._holder.get(iccid)
        if activation_id is None:
            return None
        activation = self.activations.get(activation_id)
        now = self.clock() if now is None else now
        if activation is None or not activation.is_open(now):
            return None
        return activation

    def present(self, sim: SimState) -> bool:
        """In a working modem, registered, with a number of its own and a country, and not
        about to be switched out of its module: stock if free."""
        if not (sim.online and sim.registered and sim.enabled and sim.number and sim.country):
            return False
        if sim.iccid in self.withheld:
            return False
        return len(self._by_number.get(sim.number, ())) < 2

    def withhold(self, iccid: str, withheld: bool = True) -> None:
        """Take a SIM out of the counts at once (a switch is coming), or give it back."""
        if withheld:
            self.withheld.add(iccid)
        else:
            self.withheld.discard(iccid)
        sim = self.sims.get(iccid)
        if sim is not None:
            self._restock(sim)
        self.version += 1

    def allows(self, number: str, service: str) -> bool:
        usage = self.usage.get((number, service))
        return usage is None or (not usage.blocked and usage.offers < MAX_OFFERS)

    def free(self, sim: SimState, now: float) -> bool:
        return sim.iccid not in self._reserved and self.holder(sim.iccid, now) is None

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """country → operator → service → SIMs sellable now (zeros for present SIMs).

        The result is shared until the inventory changes: do not modify it.
        """
        if self.store.lost is not None:
            return {}  # the database file is gone: nothing can be sold (the daemon is stopping)
        if self.hosts is not None:
            return self.hosts.counts()  # every live host's SIMs, read from the database
        now = self.clock()
        self._release_due(now)
        version, until = self._counts_key
        if self._counts is not None and version == self.version and now < until:
            return self._counts
        out: dict[str, dict[str, dict[str, int]]] = {}
        for (country, operator), present in self._stock.present.items():
            if present:
                out.setdefault(country, {})[operator] = dict.fromkeys(self.services, 0)
        for (country, operator, service), count in self._stock.stock.items():
            if count:
                out[country][operator][service] = count
        self._counts = out
        self._counts_key = (self.version, self._releases[0][0] if self._releases else float("inf"))
        return out

    def pick(
        self, country: str, operator: str, service: str, exclude: Prefixes = NO_PREFIXES
    ) -> SimState | None:
        """The least recently used SIM sellable for this request (ties: the lower ICCID)."""
        self._release_due(self.clock())
        sims = self.sims

        def excluded(iccid: str) -> bool:
            number = sims[iccid].number  # only present SIMs (with a number) are indexed
            return number is not None and exclude.bar(number)

        key = (country, operator, service)
        iccid = self._stock.first(key, excluded if exclude else _never)
        return None if iccid is None else self.sims[iccid]

    async def get_number(self, request: SaleRequest) -> Activation | None:
        """Open an activation on the least recently used sellable SIM, or None (NO_NUMBERS).

        The SIM is picked and reserved with no await in between, so two
        requests at once never get the same SIM; the activation is committed
        before it is returned.
        """
        country, operator, service = request.country, request.operator, request.service
        if service not in self.services:
            return None
        if (country, operator) in self._markets:
            self.demand[(country, operator, service)] += 1
        if self.hosts is not None:
            return await self._allocate(self.hosts, request)
        sim = self.pick(country, operator, service, request.exclude)
        if sim is None:
            return None
        number = sim.number
        assert number is not None
        assert sim.country is not None
        self._reserved.add(sim.iccid)
        self._restock(sim)
        self.version += 1
        try:
            now = self.clock()
            activation = await self.store.open_activation(
                request,
                iccid=sim.iccid,
                number=number,
                country=sim.country,
                operator=sim.operator,
                now=now,
                release_at=now + self.release_after,
            )
        except BaseException:
            self._reserved.discard(sim.iccid)
            self._restock(sim)  # back on sale
            self.version += 1
            raise
        self._reserved.discard(sim.iccid)
        self.version += 1
        sim.last_used = activation.created
        usage = self.usage.get((number, service), Usage())
        self.usage[(number, service)] = Usage(
            usage.offers + 1, usage.sold, usage.cancelled, usage.returned, usage.blocked
        )
        self._remember(activation, restock=False)
        self._restock_number(number, also=sim)  # held now; the number's history changed
        return activation

    async def _allocate(self, hosts: Hosts, request: SaleRequest) -> Activation | None:
        """GET_NUMBER with several hosts: one transaction in the database picks and holds
        a SIM of any live host (supplier/shared.py `allocate`); here only what this host
        shows of it (its own SIM's last use, the activation) follows."""
        activation = await hosts.allocate(request, release_after=self.release_after)
        if activation is None:
            return None
        sim = self.sims.get(activation.iccid)
        if sim is not None:
            sim.last_used = activation.created
        self._remember(activation)  # the number's history follows from the database (`learn`)
        self._restock_number(activation.number)
        return activation

    async def finish(self, hub: str, activation_id: int, status: int) -> tuple[Activation, bool]:
        """Record FINISH_ACTIVATION (idempotent); raises UnknownActivation for a stranger's id."""
        activation, changed = await self.store.finish_activation(
            activation_id, status, self.clock(), hub=hub
        )
        if changed and self.hosts is None:  # several hosts: from the database (`learn`)
            key = (activation.number, activation.service)
            usage = self.usage.get(key, Usage())
            self.usage[key] = Usage(
                usage.offers,
                usage.sold + (status == FinishStatus.SOLD),
                usage.cancelled + (status == FinishStatus.CANCELLED),
                usage.returned + (status == FinishStatus.RETURNED),
                usage.blocked or status in (FinishStatus.NOT_FOR_SERVICE, FinishStatus.SOLD),
            )
        if changed and status == FinishStatus.SOLD and self.on_sold is not None:
            self.on_sold(activation.iccid)  # its balance went down: read it again
        self.activations[activation.id] = activation
        if self._holder.get(activation.iccid) == activation.id:
            del self._holder[activation.iccid]
        self._restock_number(activation.number, also=self.sims.get(activation.iccid))
        self.version += 1
        if self.hosts is not None:
            await self.hosts.recounted()  # the SIM is free for every host: counted so at once
        return activation, changed

    def learn(
        self, activations: Iterable[Activation], usage: Mapping[tuple[str, str], Usage]
    ) -> None:
        """What other hosts did to this host's SIMs (several hosts): activations opened or
        finished through them, and the history of the numbers. The rotation keeps a SIM
        another host sold; the status page shows its buyer."""
        for activation in activations:
            known = self.activations.get(activation.id)
            if known == activation:
                continue
            if known is None:
                self._remember(activation)
            else:
                self.activations[activation.id] = activation
                if (
                    activation.finished is not None
                    and self._holder.get(activation.iccid) == activation.id
                ):
                    del self._holder[activation.iccid]
                self.version += 1
            sim = self.sims.get(activation.iccid)
            if sim is not None:
                if activation.created > (sim.last_used or 0.0):
                    sim.last_used = activation.created
                self._restock(sim)
        for key, history in usage.items():
            if self.usage.get(key) != history:
                self.usage[key] = history
                self._restock_number(key[0])
                self.version += 1

    def routes(self, number: str) -> list[Activation]:
        """The activation an SMS arriving on `number` now goes to: none, or one.

        It is the newest activation handed out on the number, if it is not
        finished and less than `ROUTE_HORIZON` old. An activation is open
        until its FINISH; `release_after` only puts the SIM back on sale, so
        an SMS after it (a slow service, a user who retried) still reaches
        the hub that asked, unless the number has been handed out again:
        then it belongs to the newest buyer alone, and an older activation
        gets nothing more (one customer's code must never reach another).
        """
        newest: Activation | None = None
        for activation in self.activations.values():
            if activation.number == number and (newest is None or activation.id > newest.id):
                newest = activation
        if newest is None or newest.finished is not None:
            return []
        if newest.created < self.clock() - ROUTE_HORIZON:
            return []
        return [newest]

    def prune(self) -> None:
        """Forget finished activations older than a week (they stay in the store)."""
        horizon = self.clock() - _KEEP_FINISHED
        for activation_id, activation in list(self.activations.items()):
            if activation.finished is not None and activation.created < horizon:
                del self.activations[activation_id]
