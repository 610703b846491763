"""An emulated SIM-bank pool board: a control port, modules, and SIMs in slots.

The board's control port is a pty that takes `AT+SWIT<module:02d>-<slot:04d>`
and connects that slot's SIM to that module (an emulated modem on its own
pty). How the board answers is its profile: `ok` (answers OK), `silent`
(answers nothing, as many boards do); `fail_slots` are slots whose switch
does not take (the module keeps its SIM: the ICCID does not change).
With `module_switch` the modules hold the SIMs themselves (`SimModule`:
Quectel's dual-SIM `AT+QDSIM=<n>`, sent to the module's own port) and the
control port is left unused.

After a switch the module loses its SIM (`+CPIN: NOT READY` on profiles that
say so), gets the new one after `switch_delay` (`+CPIN: READY`), and is
registered `ready_delay` later (`+CREG: 1` when asked for): the realistic
10-90 s, scaled down by the caller. An empty slot leaves the module without
a SIM. Faults: the control port unplugged (`control.unplug()`), a module
that never comes back after a switch (`stuck`).

The network here is the bank's: an SMS for a SIM that is not in any module
is held (`held`) and delivered when the SIM is back, unless it expired.
"""

from __future__ import annotations

import asyncio
import os
import re
import time

from modems.codes import CmeCode, RegStatus
from modems.pdu import encode_deliver_parts

from .bank import make_sim
from .device import VirtualModem
from .interpreter import VirtualSim
from .profiles import PROFILES, VendorProfile

__all__ = ["BANK_ANSWERS", "ControlPort", "SimBank", "SimModule"]

BANK_ANSWERS = ("ok", "silent")

_SWIT_RE = re.compile(r"AT\+SWIT(\d{2})-(\d{4})", re.IGNORECASE)


class ControlPort(VirtualModem):
    """The board's control pty: it understands only `AT+SWIT` (and `AT`)."""

    def __init__(self, link: str, bank: SimBank) -> None:
        super().__init__(link, PROFILES["generic"], None)
        self.bank = bank

    def _command_line(self, line: str) -> None:
        self.commands.append(line)
        self.command_count += 1
        self._changed()
        text = line.strip()
        match = _SWIT_RE.fullmatch(text)
        if match is not None:
            accepted = self.bank.switch(int(match.group(1)), int(match.group(2)))
            if self.bank.answer == "ok":
                self.write_lines("OK" if accepted else "ERROR")
            return
        if self.bank.answer == "ok":
            self.write_lines("OK" if text.upper() == "AT" else "ERROR")


class SimModule(VirtualModem):
    """A module that holds its bank's SIMs itself and switches with a module command
    (Quectel `AT+QDSIM=<n>`, n from 0; `AT+QDSIM?` says which): a bank made with
    `module_switch=True`. The relay's timing and faults are the bank's, as for a board."""

    def __init__(
        self,
        link: str,
        profile: VendorProfile,
        sim: VirtualSim | None,
        *,
        bank: SimBank,
        number: int,
    ) -> None:
        super().__init__(link, profile, sim)
        self.bank = bank
        self.number = number

    def _execute(self, command: str) -> tuple[list[str], str] | None:
        if command[:6].upper() != "+QDSIM":
            return super()._execute(command)
        arg = command[6:].strip()
        if arg == "?":
            return [f"+QDSIM: {self.bank.current[self.number] - 1}"], "OK"
        if arg == "=?":
            return [f"+QDSIM: (0-{self.bank.slots - 1})"], "OK"
        index = arg[1:].strip() if arg.startswith("=") else ""
        if not index.isdigit() or not self.bank.switch(self.number, int(index) + 1):
            return [], self.cme(CmeCode.OPERATION_NOT_ALLOWED)
        return [], "OK"


class SimBank:
    """`modules` emulated modules x `slots` SIM slots behind one control port
    (or, with `module_switch`, in modules that switch their SIMs themselves)."""

    def __init__(
        self,
        directory: str,
        modules: int,
        slots: int,
        *,
        profile: str = "generic",
        answer: str = "ok",
        fail_slots: frozenset[tuple[int, int]] = frozenset(),
        empty_slots: frozenset[tuple[int, int]] = frozenset(),
        no_number_slots: frozenset[tuple[int, int]] = frozenset(),
        switch_delay: float = 0.05,
        ready_delay: float = 0.05,
        sms_expiry: float = 3600.0,
        first_index: int = 1000,
        module_switch: bool = False,
    ) -> None:
        if answer not in BANK_ANSWERS:
            raise ValueError(f"bank answer {answer!r}: expected one of {BANK_ANSWERS}")
        if not 1 <= modules <= 99 or not 1 <= slots <= 9999:
            raise ValueError(f"bank of {modules} modules x {slots} slots: expected 1-99 x 1-9999")
        if profile not in PROFILES:
            raise ValueError(f"unknown modem profile {profile!r}; known: {sorted(PROFILES)}")
        self.directory = directory
        self.answer = answer
        self.fail_slots = set(fail_slots)
        self.switch_delay = switch_delay
        self.ready_delay = ready_delay
        self.sms_expiry = sms_expiry
        self.slots = slots
        self.stuck: set[int] = set()  # modules that never come back after a switch
        self.switches: list[tuple[int, int]] = []  # every AT+SWIT heard, in order
        # ICCID → (expiry, PDU) the network holds while that SIM is in no module.
        self.held: dict[str, list[tuple[float, str]]] = {}
        self.expired = 0
        self.sims: dict[tuple[int, int], VirtualSim | None] = {}
        for module in range(1, modules + 1):
            for slot in range(1, slots + 1):
                key = (module, slot)
                index = first_index + (module - 1) * slots + (slot - 1)
                sim = None if key in empty_slots else make_sim(index)
                if sim is not None and key in no_number_slots:
                    sim.number = None
                self.sims[key] = sim
        self.control = ControlPort(os.path.join(directory, "control"), self)
        self.modules: dict[int, VirtualModem] = {}
        self.current: dict[int, int] = {}
        for module in range(1, modules + 1):
            self.current[module] = 1
            link = os.path.join(directory, f"module{module:02d}")
            first = self.sims[(module, 1)]
            self.modules[module] = (
                SimModule(link, PROFILES[profile], first, bank=self, number=module)
                if module_switch
                else VirtualModem(link, PROFILES[profile], first)
            )
        self._timers: set[asyncio.TimerHandle] = set()

    @property
    def module_paths(self) -> dict[int, str]:
        return {number: modem.link for number, modem in self.modules.items()}

    async def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self.control.open()
        for modem in self.modules.values():
            modem.open()

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for port in [self.control, *self.modules.values()]:
            if port.plugged:
                port.close()

    # -- switching ---------------------------------------------------------------------

    def switch(self, module: int, slot: int) -> bool:
        """The board connects `slot` to `module`; False for a module or slot it lacks."""
        if module not in self.modules or not 1 <= slot <= self.slots:
            return False
        self.switches.append((module, slot))
        if (module, slot) in self.fail_slots or self.current[module] == slot:
            return True  # the relay does not move: the module keeps its SIM
        self.current[module] = slot
        modem = self.modules[module]
        old = modem.remove_sim()
        if old is not None:
            self.sims[(module, self._slot_of(module, old))] = old
        self._later(self.switch_delay, self._insert, module, slot)
        return True

    def _slot_of(self, module: int, sim: VirtualSim) -> int:
        for (mod, slot), candidate in self.sims.items():
            if mod == module and candidate is sim:
                return slot
        raise LookupError(sim.iccid)

    def _later(self, delay: float, callback: object, *args: int) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            callback(*args)  # type: ignore[operator]

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def _insert(self, module: int, slot: int) -> None:
        modem = self.modules[module]
        if self.current[module] != slot:
            return  # switched again meanwhile
        if module in self.stuck:
            modem.hang()  # never comes back
            return
        sim = self.sims[(module, slot)]
        if sim is None:
            return  # an empty slot: the module stays without a SIM
        modem.registration = RegStatus.SEARCHING
        modem.insert_sim(sim)
        self._later(self.ready_delay, self._registered, module, slot)

    def _registered(self, module: int, slot: int) -> None:
        modem = self.modules[module]
        if self.current[module] != slot or modem.sim is None:
            return
        modem.registration = RegStatus.HOME
        if modem.creg_mode and modem.plugged:
            modem.write_lines(f"+CREG: {int(RegStatus.HOME)}")
        self._release_held(modem.sim)
        modem._changed()  # the interpreter's observer hook: waiters re-check

    # -- the network ---------------------------------------------------------------------

    def holder(self, iccid: str) -> VirtualModem | None:
        for modem in self.modules.values():
            if modem.sim is not None and modem.sim.iccid == iccid:
                return modem
        return None

    def sim_by_number(self, number: str) -> VirtualSim | None:
        for sim in self.sims.values():
            if sim is not None and sim.number == number:
                return sim
        for modem in self.modules.values():
            if modem.sim is not None and modem.sim.number == number:
                return modem.sim
        return None

    def send_sms(self, number: str, text: str, sender: str = "VK") -> bool:
        """The network delivers an SMS to `number`: now if its SIM is in, else held.

        False if no SIM of the bank has that number.
        """
        sim = self.sim_by_number(number)
        if sim is None:
            return False
        modem = self.holder(sim.iccid)
        if modem is not None and modem.sim_ready() and modem.registration == RegStatus.HOME:
            modem.deliver(text, sender)
            return True
        expires = time.monotonic() + self.sms_expiry
        held = self.held.setdefault(sim.iccid, [])
        held.extend((expires, pdu) for pdu in encode_deliver_parts(sender, text))
        return True

    def _release_held(self, sim: VirtualSim | None) -> None:
        if sim is None:
            return
        modem = self.holder(sim.iccid)
        held = self.held.pop(sim.iccid, [])
        now = time.monotonic()
        for expires, pdu in held:
            if now > expires or modem is None:
                self.expired += 1
            else:
                modem.receive_pdu(pdu)
