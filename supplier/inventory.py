"""The SIM inventory: what can be sold right now, in memory, rebuilt from the store.

Counts and allocation never touch a serial port: modem events update the
SIM states here, and the hub-facing requests read them plus one small write
transaction. A SIM is *sellable* for a service when it is in a modem that is
ready, registered (home or roaming), has a known number and a known country,
is enabled, holds no open activation (one not finished whose
`release_after` has not passed), and the number's history allows the service:
never after a FINISH 1 or 3, and at most `MAX_OFFERS` hand-outs in all.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import structlog

from modems.events import NetworkInfo, SimIdentity

from .config import Config, SimOverride
from .errors import SupplierError
from .networks import ANY, international_number, slugs_for
from .store import Activation, FinishStatus, SimRow, Store, Usage

__all__ = [
    "MAX_OFFERS",
    "ROUTE_HORIZON",
    "Inventory",
    "NumberTaken",
    "SimState",
    "sale_number",
]

log = structlog.get_logger("supplier.inventory")

MAX_OFFERS = 4  # FINISH 4: "may be offered for this service again, at most 4 times in total"
ROUTE_HORIZON = 86400.0  # an unfinished activation gets its number's SMS for a day at most
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


class Inventory:
    def __init__(
        self,
        store: Store,
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
        # GET_SERVICES is asked every few seconds by every hub: its counts are
        # cached until something changes (`version`) or a hold runs out.
        self.version = 0
        self._counts: dict[str, dict[str, dict[str, int]]] | None = None
        self._counts_key: tuple[int, float] = (-1, 0.0)
        # country → ICCIDs: GET_NUMBER looks only at the SIMs of the country asked for
        # (a scan of every SIM was the largest cost of GET_NUMBER at 512 SIMs).
        self._by_country: dict[str, set[str]] = {}
        self.on_sold: Callable[[str], None] | None = None  # FINISH 3 on this ICCID (upkeep)
        # number → ICCIDs sold under it: two SIMs claiming one number are both held back.
        self._by_number: dict[str, set[str]] = {}
        self.reconfigure(
            services=services,
            release_after=release_after,
            sim_overrides=sim_overrides or {},
            network_overrides=network_overrides or {},
        )

    @classmethod
    def from_config(
        cls, store: Store, config: Config, *, clock: Callable[[], float] = time.time
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
        self._derive(sim)
        self.sims[row.iccid] = sim
        return sim

    def _derive(self, sim: SimState) -> None:
        """Country and operator from the home network, then the SIM's own overrides."""
        before = sim.country
        country, operator = slugs_for(sim.imsi, self.network_overrides)
        override = self.sim_overrides.get(sim.iccid)
        sim.config_number = override.number if override else None
        sim.country = (override.country if override and override.country else None) or country
        sim.operator = (override.operator if override and override.operator else None) or operator
        previous = sim.number
        sim.number = sale_number(
            manual=sim.manual_number,
            configured=sim.config_number,
            reported=sim.modem_number,
            learned=sim.learned_number,
            country=sim.country,
        )
        if previous is not None and previous != sim.number:
            self._by_number.get(previous, set()).discard(sim.iccid)
        if sim.number is not None:
            self._by_number.setdefault(sim.number, set()).add(sim.iccid)
        if before is not None and before != sim.country:
            self._by_country.get(before, set()).discard(sim.iccid)
        if sim.country is not None:
            self._by_country.setdefault(sim.country, set()).add(sim.iccid)
        self.version += 1

    def _remember(self, activation: Activation) -> None:
        self.version += 1
        self.activations[activation.id] = activation
        if activation.finished is None:
            current = self._holder.get(activation.iccid)
            if current is None or current < activation.id:
                self._holder[activation.iccid] = activation.id

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
            if other.port == port and other.iccid != sim.iccid:
                other.online = False
        sim.online = True
        sim.registered = network.registered
        sim.rssi = network.rssi
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
                self.version += 1
            sim.rssi = network.rssi

    def sim_lost(self, iccid: str) -> None:
        sim = self.sims.get(iccid)
        if sim is not None:
            sim.online = False
            sim.registered = False
            self.version += 1

    def modem_gone(self, port: str) -> None:
        for sim in self.sims.values():
            if sim.port == port and sim.online:
                sim.online = False
                sim.registered = False
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
        others = sorted(self._by_number.get(number, set()) - {besides})
        return self.sims.get(others[0]) if others else None

    def learned_number(self, iccid: str, number: str) -> None:
        """The number the SIM's network told us (it never overrides another source)."""
        sim = self.sims.get(iccid)
        if sim is not None:
            sim.learned_number = number
            self._derive(sim)

    def conflicting(self, iccid: str) -> str | None:
        """Another SIM sold under this SIM's number, if any: neither is sold until resolved."""
        sim = self.sims.get(iccid)
        if sim is None or sim.number is None:
            return None
        others = self._by_number.get(sim.number, set()) - {iccid}
        return min(others) if others else None

    async def set_enabled(self, iccid: str, enabled: bool) -> SimState | None:
        """Take a SIM out of sale (False) or put it back (True); activations are kept."""
        sim = self.sims.get(iccid)
        if sim is None or not await self.store.set_sim_enabled(iccid, enabled):
            return None
        sim.enabled = enabled
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
        now = self.clock()
        version, until = self._counts_key
        if self._counts is not None and version == self.version and now < until:
            return self._counts
        out: dict[str, dict[str, dict[str, int]]] = {}
        for sim in self.sims.values():
            if not self.present(sim):
                continue
            assert sim.country is not None
            assert sim.number is not None
            services = out.setdefault(sim.country, {}).setdefault(
                sim.operator, dict.fromkeys(self.services, 0)
            )
            if not self.free(sim, now):
                continue
            for service in self.services:
                if self.allows(sim.number, service):
                    services[service] += 1
        holds = [a.release_at for a in self.activations.values() if a.is_open(now)]
        self._counts = out
        self._counts_key = (self.version, min(holds, default=float("inf")))
        return out

    def candidates(
        self, country: str, operator: str, service: str, exclude: Iterable[str] = ()
    ) -> list[SimState]:
        now = self.clock()
        prefixes = tuple(exclude)
        found = []
        for iccid in self._by_country.get(country, ()):
            sim = self.sims.get(iccid)  # None while a new SIM is being recorded
            if sim is None or operator not in (ANY, sim.operator):
                continue
            if not self.present(sim) or not self.free(sim, now):
                continue
            number = sim.number
            assert number is not None
            if prefixes and number.startswith(prefixes):
                continue
            if self.allows(number, service):
                found.append(sim)
        return found

    async def get_number(
        self,
        *,
        hub: str,
        country: str,
        operator: str,
        service: str,
        sum: Decimal | None,
        currency: int | None,
        exclude: Iterable[str] = (),
    ) -> Activation | None:
        """Open an activation on the least recently used sellable SIM, or None (NO_NUMBERS).

        The SIM is picked and reserved with no await in between, so two
        requests at once never get the same SIM; the activation is committed
        before it is returned.
        """
        self.demand[(country, operator, service)] += 1
        if service not in self.services:
            return None
        found = self.candidates(country, operator, service, exclude)
        if not found:
            return None
        sim = min(found, key=lambda s: (s.last_used or 0.0, s.iccid))
        number = sim.number
        assert number is not None
        assert sim.country is not None
        self._reserved.add(sim.iccid)
        self.version += 1
        try:
            now = self.clock()
            activation = await self.store.open_activation(
                hub=hub,
                iccid=sim.iccid,
                number=number,
                service=service,
                country=sim.country,
                operator=sim.operator,
                sum=None if sum is None else format(sum, "f"),  # 10, not 1E+1
                currency=currency,
                now=now,
                release_at=now + self.release_after,
            )
        finally:
            self._reserved.discard(sim.iccid)
            self.version += 1
        sim.last_used = activation.created
        usage = self.usage.get((number, service), Usage())
        self.usage[(number, service)] = Usage(
            usage.offers + 1, usage.sold, usage.cancelled, usage.returned, usage.blocked
        )
        self._remember(activation)
        return activation

    async def finish(self, hub: str, activation_id: int, status: int) -> tuple[Activation, bool]:
        """Record FINISH_ACTIVATION (idempotent); raises UnknownActivation for a stranger's id."""
        activation, changed = await self.store.finish_activation(
            activation_id, status, self.clock(), hub=hub
        )
        if changed:
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
        self.version += 1
        return activation, changed

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
