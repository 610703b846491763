"""SIM-bank rotation: every module moves through its slots, and no sale is lost to it.

One task per bank module. A module keeps its SIM for `rotation.dwell`; then,
once no activation holds the SIM (FINISH, or `release_after`, plus
`rotation.grace` for a late SMS), it moves on:

1. the SIM is withheld from the inventory (not sellable, not counted) *before*
   anything is sent, and only then is it checked to be free: a GET_NUMBER in
   flight keeps it, and the switch waits;
2. its stored SMS are swept into the store (nothing stays on a SIM that
   leaves); a failed sweep cancels the switch;
3. which slot is written to the store, then the switch command is sent (and
   `AT+CFUN=1,1` to the module when `reset_after_switch`);
4. the switch is confirmed only by the module reporting a different ICCID
   within `rotation.settle`; if not, it is sent once more, then the slot is
   marked faulty (tried again later, with a doubling back-off) and the old
   SIM, still in, goes back on sale. A module with no SIM at the end marks
   the slot empty.

The next slot is the one whose SIM has the most value left: the services its
number can still be sold for, weighted by how often hubs asked GET_NUMBER for
that country/operator/service; never-seen slots first. Empty, faulty (until
their retry), number-less, fully retired and operator-excluded slots are
skipped. Each slot's identity is learned when its SIM is first switched in and
kept in the store (bankstore.py), and after a restart (or kill -9 mid-switch)
each module's SIM is recognised by its ICCID.

SMS for a number whose SIM is out are held by the network and arrive when it
is back; the inbox pushes them if that number's activation is still open.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from modems.errors import ModemError
from modems.events import ModemState, PoolEvent
from modems.pool import ModemPool
from modems.switching import ModuleSimSwitch, PoolBoardSwitch, SlotSwitch, SwitchError

from .bankstore import BankStore, ModuleRow, SlotRow
from .config import BankConfig, RotationConfig
from .errors import StoreError
from .inventory import Inventory
from .networks import ANY

__all__ = ["ModuleStatus", "Rotation", "SlotState", "SwitchOutcome"]

log = structlog.get_logger("supplier.rotation")

_MAX_BACKOFF = 86400.0
_RECHECK = 1.0  # an open activation is looked at again this often (FINISH has no event here)


class SlotState(enum.StrEnum):
    UNKNOWN = "unknown"  # never switched in
    KNOWN = "known"  # its SIM was seen: identity in the row
    EMPTY = "empty"  # no SIM came up from it
    FAULTY = "faulty"  # the switch to it did not take (twice)


class ModuleStatus(enum.StrEnum):
    STARTING = "starting"  # finding out which SIM it holds
    IN = "in"  # a SIM is in and on sale (or will be when ready)
    WAITING = "waiting"  # due to move on, held by an open activation (or its grace)
    SWITCHING = "switching"
    HELD = "held"  # an operator stopped its rotation
    FAULTY = "faulty"  # the board or the module failed; tried again later


class SwitchOutcome(enum.StrEnum):
    OK = "ok"  # a different ICCID came up
    EMPTY = "empty"  # the old SIM left and none came
    UNCHANGED = "unchanged"  # the same ICCID: the switch did not take
    LOST = "lost"  # the module did not come back
    ERROR = "error"  # the command could not be given (control port gone, error answer)
    ADOPTED = "adopted"  # a SIM of unknown slot stayed: it was that slot's (first start)


@dataclass(eq=False)
class _Module:
    bank: BankConfig
    number: int
    port: str
    row: ModuleRow
    iccid: str | None = None  # the SIM confirmed in it
    since: float = 0.0  # when that SIM (or none) came in
    status: ModuleStatus = ModuleStatus.STARTING
    requested: int | None = None  # an operator's "switch to this slot now"
    retry_at: float = 0.0  # after a board or module failure
    failures: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Rotation:
    """Drives the bank modules of `banks` through their slots (see the module docstring)."""

    def __init__(
        self,
        banks: Sequence[BankConfig],
        settings: RotationConfig,
        inventory: Inventory,
        pool: ModemPool,
        *,
        clock: Callable[[], float] = time.time,
        command_timeout: float = 5.0,
    ) -> None:
        self.banks = tuple(banks)
        self.settings = settings
        self.inventory = inventory
        self.pool = pool
        self.clock = clock
        self.command_timeout = command_timeout
        self.records = BankStore(inventory.store)
        self.slots: dict[tuple[str, int, int], SlotRow] = {}
        self.modules: dict[tuple[str, int], _Module] = {}
        self.switches: Counter[tuple[str, str]] = Counter()  # (bank, outcome)
        self._by_port: dict[str, _Module] = {}
        self._switches: dict[str, SlotSwitch] = {}
        self._listeners: list[Callable[[], None]] = []

    # -- start / stop ------------------------------------------------------------------

    async def start(self) -> None:
        slots = {(r.bank, r.module, r.slot): r for r in await self.records.load_slots()}
        modules = {(r.bank, r.module): r for r in await self.records.load_modules()}
        for bank in self.banks:
            self._switches[bank.name] = self._mechanism(bank)
            for number, port in sorted(bank.modules.items()):
                for slot in range(1, bank.slots + 1):
                    key = (bank.name, number, slot)
                    self.slots[key] = slots.get(key) or SlotRow(bank.name, number, slot)
                # Slots above `slots` (lowered since): kept, so a module found holding
                # one's SIM is recognised; out of the rotation, the grid and the counts.
                for key, stored in slots.items():
                    if key[:2] == (bank.name, number):
                        self.slots.setdefault(key, stored)
                row = modules.get((bank.name, number)) or ModuleRow(bank.name, number)
                module = _Module(bank, number, port, row)
                self.modules[(bank.name, number)] = module
                self._by_port[port] = module
        for module in self.modules.values():
            module.task = asyncio.create_task(
                self._run(module), name=f"rotation {module.bank.name}/{module.number}"
            )

    async def stop(self) -> None:
        tasks = [m.task for m in self.modules.values() if m.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for module in self.modules.values():
            module.task = None
        for switch in self._switches.values():
            await switch.close()

    async def reconfigure(
        self, banks: Sequence[BankConfig], renamed: dict[str, str], settings: RotationConfig
    ) -> None:
        """SIGHUP: new settings, names and slot counts for the same ports (bank_reload.py).

        Every change in memory is made at once (no await in between), so a module's
        task sees the old settings or the new, never a mix; then a rename is written
        to the store. Modules are woken: a shorter dwell or a slot out of use acts now.
        Every slot row the store has for a module is in memory since `start` (those
        above `slots` too), so slots that come back keep what was learned of them.
        """
        was = {new: old for old, new in renamed.items()}
        slots: dict[tuple[str, int, int], SlotRow] = {}
        modules: dict[tuple[str, int], _Module] = {}
        mechanisms: dict[str, SlotSwitch] = {}
        for bank in banks:
            old = was.get(bank.name, bank.name)
            mechanisms[bank.name] = self._switches[old]
            mechanisms[bank.name].template = bank.switch
            for number in sorted(bank.modules):
                module = self.modules[(old, number)]
                module.bank, module.row.bank = bank, bank.name
                if module.requested is not None and module.requested > bank.slots:
                    module.requested = None  # an operator's switch to a slot now out of use
                modules[(bank.name, number)] = module
                if module.task is not None:
                    module.task.set_name(f"rotation {bank.name}/{number}")
                known = {s for (b, n, s) in self.slots if (b, n) == (old, number)}
                for slot in sorted(known | set(range(1, bank.slots + 1))):
                    key = (old, number, slot)
                    row = self.slots.get(key) or SlotRow(old, number, slot)
                    row.bank = bank.name
                    slots[(bank.name, number, slot)] = row
        switches: Counter[tuple[str, str]] = Counter()
        for (name, outcome), count in self.switches.items():
            switches[(renamed.get(name, name), outcome)] += count
        self.banks, self.settings = tuple(banks), settings
        self.slots, self.modules, self._switches, self.switches = (
            slots,
            modules,
            mechanisms,
            switches,
        )
        for module in modules.values():
            module.wake.set()
        self._changed()
        for old, new in renamed.items():
            await self._move_records(old, new)

    async def _move_records(self, old: str, new: str) -> None:
        """A renamed bank's rows under its new name; the old name's rows emptied.

        An emptied row reads as a slot never seen, so a bank given the old name
        later does not inherit this bank's SIMs (the store has no delete for them).
        """
        modules = [m.row for m in self.modules.values() if m.row.bank == new]
        rows = [row for row in self.slots.values() if row.bank == new]
        try:
            for module_row in modules:
                await self.records.save_module(module_row)
            for row in rows:
                await self.records.save_slot(row)
            # (The old name is listed nowhere now: bank_reload.py renames only then.)
            for module_row in modules:
                await self.records.save_module(ModuleRow(old, module_row.module))
            for row in rows:
                await self.records.save_slot(SlotRow(old, row.module, row.slot))
        except StoreError as exc:
            log.error(
                "bank renamed, but its slot records not moved to the new name in the store; "
                "they are written again as each slot changes",
                old=old,
                bank=new,
                error=str(exc),
            )

    def _mechanism(self, bank: BankConfig) -> SlotSwitch:
        if bank.control is not None:
            return PoolBoardSwitch(
                bank.control, bank.switch, answer_timeout=min(2.0, self.command_timeout)
            )

        async def send(number: int, command: str) -> None:
            modem = self.pool.get(bank.modules[number])
            if modem is None:
                raise SwitchError(f"module {number}: no modem on {bank.modules[number]}")
            await modem.command(command, timeout=self.command_timeout)

        return ModuleSimSwitch(send, bank.switch)

    # -- what the daemon tells us ------------------------------------------------------

    def on_event(self, event: PoolEvent) -> None:
        """A modem event (after the inventory handled it): its module looks again."""
        module = self._by_port.get(event.port)
        if module is not None:
            module.wake.set()

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Be told whenever a module's status or a slot changes (tests, status page)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    # -- one module's loop ----------------------------------------------------------------

    async def _run(self, module: _Module) -> None:
        while True:
            try:
                if module.status is ModuleStatus.STARTING:
                    await self._adopt(module)
                else:
                    await self._step(module)
            except StoreError as exc:
                log.error(
                    "bank record not saved; trying again",
                    bank=module.bank.name,  # its name now: a reload may rename it
                    module=module.number,
                    port=module.port,
                    error=str(exc),
                )
                await self._idle(module, 5.0)

    async def _adopt(self, module: _Module) -> None:
        """At start: which SIM does the module hold? Recognised by ICCID, else learned."""
        if module.row.switching:
            # Stopped mid-switch: the new SIM may still be coming up; give it `settle`.
            await self._until(module, lambda: self._has_sim(module), self.settings.settle)
        else:
            await self._until(module, lambda: self._settled(module), self.settings.settle)
        modem = self.pool.get(module.port)
        iccid = modem.sim.iccid if modem is not None and modem.sim is not None else None
        now = self.clock()
        module.since = now
        module.iccid = iccid
        if iccid is not None:
            known = [
                row
                for (bank, number, _), row in self.slots.items()
                if bank == module.bank.name and number == module.number and row.iccid == iccid
            ]
            slot = known[0].slot if known else module.row.slot
            if slot is not None:
                await self._learn(module, slot, now)
            module.row.slot = slot
        elif module.row.switching and module.row.slot is not None:
            await self._mark(module, module.row.slot, SlotState.EMPTY, now)
        module.row.switching = False
        await self.records.save_module(module.row)
        module.status = ModuleStatus.HELD if module.row.held else ModuleStatus.IN
        log.info(
            "bank module adopted",
            bank=module.bank.name,
            module=module.number,
            slot=module.row.slot,
            iccid=iccid,
        )
        self._changed()

    def _has_sim(self, module: _Module) -> bool:
        modem = self.pool.get(module.port)
        return modem is not None and modem.ready

    def _settled(self, module: _Module) -> bool:
        modem = self.pool.get(module.port)
        if modem is None:
            return False
        return modem.ready or modem.state in (
            ModemState.NO_SIM,
            ModemState.SIM_LOCKED,
            ModemState.NOT_MODEM,
        )

    async def _step(self, module: _Module) -> None:
        now = self.clock()
        if module.row.held and module.requested is None:
            self._status(module, ModuleStatus.HELD)
            await self._idle(module, self.settings.dwell)
            return
        if module.retry_at > now:
            await self._idle(module, module.retry_at - now)
            return
        target = module.requested
        slot = module.row.slot
        out_of_use = slot is not None and slot > module.bank.slots  # `slots:` lowered by a reload
        if target is None and not out_of_use:
            due = module.since + self.settings.dwell if module.iccid is not None else now
            if now < due:
                self._status(module, ModuleStatus.IN)
                await self._idle(module, due - now)
                return
        current = self._current(module)
        if current is not None:
            busy_until = self.busy_until(current, now)
            if busy_until > now:
                self._status(module, ModuleStatus.WAITING)
                await self._idle(module, min(busy_until - now, _RECHECK))
                return
        if target is None:
            target = self.next_slot(module, now)
            if target is None:
                self._status(module, ModuleStatus.IN)
                module.since = now  # nothing better: this SIM stays another dwell
                await self._idle(module, self.settings.dwell)
                return
        module.requested = None
        await self._switch(module, target)

    def _current(self, module: _Module) -> str | None:
        """The SIM confirmed in the module, or whatever SIM it reports (never switch one blind)."""
        if module.iccid is not None:
            return module.iccid
        modem = self.pool.get(module.port)
        return modem.sim.iccid if modem is not None and modem.sim is not None else None

    # -- choosing ----------------------------------------------------------------------

    def busy_until(self, iccid: str, now: float) -> float:
        """Until when the SIM must stay: its activations' end (FINISH or release) plus grace."""
        end = 0.0
        for activation in self.inventory.activations.values():
            if activation.iccid != iccid:
                continue
            finished = activation.finished
            end = max(end, finished if finished is not None else activation.release_at)
        return end + self.settings.grace if end else 0.0

    def value(self, iccid: str | None) -> float:
        """Services the SIM's number can still be sold for, weighted by the hubs' demand."""
        if iccid is None:
            return 0.0
        sim = self.inventory.sims.get(iccid)
        if sim is None or not sim.enabled or sim.number is None or sim.country is None:
            return 0.0
        demand = self.inventory.demand
        total = 0.0
        for service in self.inventory.services:
            if self.inventory.allows(sim.number, service):
                total += (
                    1
                    + demand[(sim.country, sim.operator, service)]
                    + demand[(sim.country, ANY, service)]
                )
        return total

    def next_slot(self, module: _Module, now: float) -> int | None:
        best: tuple[float, float, int] | None = None
        for slot in range(1, module.bank.slots + 1):
            if slot == module.row.slot:
                continue
            row = self.slots[(module.bank.name, module.number, slot)]
            if not row.in_rotation:
                continue
            if row.state in (SlotState.EMPTY, SlotState.FAULTY) and (row.retry_at or 0) > now:
                continue
            value = self.value(row.iccid) if row.iccid is not None else math.inf
            if value <= 0:
                continue
            key = (value, -(row.last_in or 0.0), -slot)
            if best is None or key > best:
                best = key
        return None if best is None else -best[2]

    # -- switching ------------------------------------------------------------------------

    async def _switch(self, module: _Module, target: int) -> None:
        bank = module.bank
        log_ = log.bind(bank=bank.name, module=module.number, slot=target, port=module.port)
        old, old_slot = self._current(module), module.row.slot
        if old is not None:
            # Out of the counts first, then checked free: no GET_NUMBER can pick it
            # in between, and one already committing keeps it.
            self.inventory.withhold(old)
            hosts = self.inventory.hosts
            if hosts is not None:  # several hosts: another one may have just sold it
                try:
                    await hosts.confirm_withheld(old)
                except StoreError as exc:
                    log_.warning(
                        "cannot confirm no host sold the SIM; switch put off", error=str(exc)
                    )
                    self.inventory.withhold(old, False)
                    self._backoff(module)
                    return
            sim = self.inventory.sims.get(old)
            now = self.clock()
            if (sim is not None and not self.inventory.free(sim, now)) or self.busy_until(
                old, now
            ) > now:
                # A GET_NUMBER is committing it right now: it stays; look again shortly.
                self.inventory.withhold(old, False)
                await self._idle(module, _RECHECK)
                return
            modem = self.pool.get(module.port)
            if modem is not None and modem.ready:
                try:
                    await modem.sweep(timeout=max(self.command_timeout, 10.0))
                except (ModemError, TimeoutError) as exc:
                    log_.warning("SMS sweep before a switch failed; switch put off", error=str(exc))
                    self.inventory.withhold(old, False)
                    self._backoff(module)
                    return
        self._status(module, ModuleStatus.SWITCHING)
        module.row.slot, module.row.switching = target, True
        await self.records.save_module(module.row)
        outcome = SwitchOutcome.ERROR
        for attempt in (1, 2):
            outcome = await self._attempt(module, target, old, log_)
            if outcome in (SwitchOutcome.OK, SwitchOutcome.EMPTY):
                break
            if outcome is SwitchOutcome.UNCHANGED and old_slot is None and old is not None:
                # We did not know which slot it held (a first start): it held this one.
                outcome = SwitchOutcome.ADOPTED
                break
            log_.warning("switch did not take", outcome=outcome.value, attempt=attempt)
        self.switches[(module.bank.name, outcome.value)] += 1  # renamed meanwhile: the new
        await self._settle(module, target, old, old_slot, outcome)
        log_.info("switch", outcome=outcome.value, old_iccid=old, iccid=module.iccid)
        self._changed()

    async def _attempt(
        self, module: _Module, target: int, old: str | None, log_: structlog.BoundLogger
    ) -> SwitchOutcome:
        try:
            await self._switches[module.bank.name].switch(module.number, target)
        except SwitchError as exc:
            log_.warning("switch command failed", error=str(exc))
            return SwitchOutcome.ERROR
        modem = self.pool.get(module.port)
        if module.bank.reset_after_switch and modem is not None:
            modem.request_reset()

        def changed() -> bool:
            current = self.pool.get(module.port)
            return current is not None and current.sim is not None and current.sim.iccid != old

        if await self._until(module, changed, self.settings.settle):
            return SwitchOutcome.OK
        current = self.pool.get(module.port)
        if current is not None and current.sim is not None:
            return SwitchOutcome.UNCHANGED
        if current is not None and current.state is ModemState.NO_SIM:
            # No SIM, or a module that stopped answering before anyone noticed: ask it.
            try:
                await current.command("AT", timeout=self.command_timeout)
            except (ModemError, TimeoutError):
                return SwitchOutcome.LOST
            return SwitchOutcome.EMPTY
        return SwitchOutcome.LOST

    async def _settle(
        self,
        module: _Module,
        target: int,
        old: str | None,
        old_slot: int | None,
        outcome: SwitchOutcome,
    ) -> None:
        now = self.clock()
        if outcome in (SwitchOutcome.OK, SwitchOutcome.ADOPTED):
            await self._learn(module, target, now)
            module.failures = 0
        elif outcome is SwitchOutcome.EMPTY:
            await self._mark(module, target, SlotState.EMPTY, now)
            module.iccid = None
            module.failures = 0
        elif outcome is SwitchOutcome.UNCHANGED:
            await self._mark(module, target, SlotState.FAULTY, now)
            module.row.slot = old_slot  # the old SIM is still in: back on sale
        elif outcome is SwitchOutcome.ERROR:
            module.row.slot = old_slot  # nothing moved (as far as we can tell)
            self._backoff(module)
        else:  # LOST: the module never came back
            await self._mark(module, target, SlotState.FAULTY, now)
            module.iccid = None
            self._backoff(module)
        if old is not None and outcome in (
            SwitchOutcome.UNCHANGED,
            SwitchOutcome.ERROR,
            SwitchOutcome.LOST,  # the module may come back with the old SIM still in it
        ):
            self.inventory.withhold(old, False)
        module.since = now
        module.row.switching = False
        await self.records.save_module(module.row)
        if module.status is ModuleStatus.SWITCHING:
            self._status(module, ModuleStatus.IN)

    async def _learn(self, module: _Module, slot: int, now: float) -> None:
        """The SIM now in `module` came from `slot`: remember who it is."""
        modem = self.pool.get(module.port)
        sim = modem.sim if modem is not None else None
        if sim is None:
            return
        row = self._row(module, slot)
        row.iccid, row.imsi, row.number = sim.iccid, sim.imsi, sim.number
        row.state, row.last_in, row.failures, row.retry_at = SlotState.KNOWN, now, 0, None
        await self.records.save_slot(row)
        module.iccid = sim.iccid
        self.inventory.withhold(sim.iccid, False)

    def _row(self, module: _Module, slot: int) -> SlotRow:
        """`slot`'s row; made if missing (a slot above a lowered `slots`, never seen)."""
        key = (module.bank.name, module.number, slot)
        return self.slots.setdefault(key, SlotRow(*key))

    async def _mark(self, module: _Module, slot: int, state: SlotState, now: float) -> None:
        row = self._row(module, slot)
        row.state = state
        row.failures += 1
        delay = self.settings.retry_after * 2 ** min(row.failures - 1, 16)
        row.retry_at = now + min(delay, _MAX_BACKOFF)
        await self.records.save_slot(row)

    def _backoff(self, module: _Module) -> None:
        module.failures += 1
        delay = self.settings.retry_after * 2 ** min(module.failures - 1, 16)
        module.retry_at = self.clock() + min(delay, _MAX_BACKOFF)
        self._status(module, ModuleStatus.FAULTY)

    # -- operator actions ------------------------------------------------------------------

    def module(self, bank: str, number: int) -> _Module:
        module = self.modules.get((bank, number))
        if module is None:
            raise KeyError(f"no module {number} in bank {bank!r}")
        return module

    def switch_now(self, bank: str, number: int, slot: int) -> None:
        """Switch this module to `slot` as soon as its SIM is free (open activations wait)."""
        module = self.module(bank, number)
        if not 1 <= slot <= module.bank.slots:
            raise ValueError(f"slot {slot}: expected 1-{module.bank.slots}")
        module.requested = slot
        module.retry_at = 0.0
        module.wake.set()

    async def hold(self, bank: str, number: int, held: bool) -> None:
        """Stop (or resume) a module's rotation; its SIM stays in and on sale."""
        module = self.module(bank, number)
        module.row.held = held
        await self.records.save_module(module.row)
        module.wake.set()
        self._changed()

    async def set_in_rotation(self, bank: str, number: int, slot: int, enabled: bool) -> None:
        """Take a slot out of rotation (or put it back); a faulty one is retried at once."""
        module = self.module(bank, number)
        row = self.slots.get((bank, number, slot)) if 1 <= slot <= module.bank.slots else None
        if row is None:
            raise ValueError(f"slot {slot}: expected 1-{module.bank.slots}")
        row.in_rotation = enabled
        if enabled:
            row.retry_at = None
        await self.records.save_slot(row)
        module.wake.set()
        self._changed()

    # -- what the operator sees -------------------------------------------------------------

    def slot_state(self, module: _Module, row: SlotRow) -> str:
        """in | waiting | sold-out | no-number | empty | faulty | unknown | out (of rotation)."""
        if (
            row.slot == module.row.slot
            and row.iccid is not None
            and row.iccid == module.iccid
            and not module.row.switching
        ):
            return "in"
        if row.state in (SlotState.EMPTY, SlotState.FAULTY):
            return str(row.state)
        if not row.in_rotation:
            return "out"
        if row.iccid is None:
            return "unknown"
        sim = self.inventory.sims.get(row.iccid)
        if sim is None or sim.number is None:
            return "no-number"
        if self.value(row.iccid) <= 0:
            return "sold-out"
        return "waiting"

    def grid(self) -> list[dict[str, object]]:
        """Each bank as module x slot: identity, state, last time in (status page, JSON)."""
        out: list[dict[str, object]] = []
        for bank in self.banks:
            modules: list[dict[str, object]] = []
            for number in sorted(bank.modules):
                module = self.modules[(bank.name, number)]
                slots = []
                for slot in range(1, bank.slots + 1):
                    row = self.slots[(bank.name, number, slot)]
                    slots.append(
                        {
                            "slot": slot,
                            "iccid": row.iccid,
                            "number": row.number,
                            "state": self.slot_state(module, row),
                            "last_in": row.last_in,
                            "in_rotation": row.in_rotation,
                            "failures": row.failures,
                            "retry_at": row.retry_at,
                        }
                    )
                modules.append(
                    {
                        "module": number,
                        "port": module.port,
                        "status": str(module.status),
                        "slot": module.row.slot,
                        "iccid": module.iccid,
                        "held": module.row.held,
                        "since": module.since,
                        "slots": slots,
                    }
                )
            switches = {
                outcome: count
                for (name, outcome), count in self.switches.items()
                if name == bank.name
            }
            out.append({"name": bank.name, "modules": modules, "switches": switches})
        return out

    def slot_counts(self) -> Counter[tuple[str, str]]:
        """(bank, state) → slots, for Prometheus."""
        counts: Counter[tuple[str, str]] = Counter()
        for (bank, number, slot), row in self.slots.items():
            module = self.modules[(bank, number)]
            if slot <= module.bank.slots:  # slots above it left the bank at a reload
                counts[(bank, self.slot_state(module, row))] += 1
        return counts

    # -- waiting ---------------------------------------------------------------------------

    def _status(self, module: _Module, status: ModuleStatus) -> None:
        if module.status is not status:
            module.status = status
            self._changed()

    async def _idle(self, module: _Module, delay: float) -> None:
        """Sleep up to `delay`, or until an event or an operator wakes the module."""
        module.wake.clear()
        try:
            async with asyncio.timeout(max(0.0, delay)):
                await module.wake.wait()
        except TimeoutError:
            pass

    async def _until(self, module: _Module, predicate: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            module.wake.clear()
            if predicate():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await module.wake.wait()
            except TimeoutError:
                return predicate()
