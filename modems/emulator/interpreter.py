"""The emulated modem's AT interpreter and state: everything but the port.

`EmulatedModem` takes command bytes (`feed`) and writes its answers through
`output`, so an emulated command is tested without a pty
(tests/test_emulator_interpreter.py); `device.VirtualModem` adds the
pseudo-terminal, as the daemon's own at.py (parser) and channel.py (port)
are split. It answers like its vendor profile says, stores incoming SMS in
PDU form and announces them with `+CMTI`; faults are injected through
methods (hang, garbage, SIM removal, full storage, errors after power-up).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from modems.at import split_commands
from modems.codes import CmeCode, CmsCode, RegStatus, SmsStatus
from modems.pdu import encode_deliver_parts

from . import network_commands, sim_commands, sms_commands, ussd_commands
from .profiles import VendorProfile

__all__ = ["EmulatedModem", "Slot", "VirtualSim"]

_MAX_INPUT_LINE = 4096

_Result = tuple[list[str], str]  # information lines, final result


@dataclass
class Slot:
    pdu: str
    status: int = SmsStatus.RECEIVED_UNREAD


@dataclass
class VirtualSim:
    iccid: str
    imsi: str
    number: str | None  # digits with country code; None: the SIM does not know it
    pin: str | None = None
    # What the network knows the number to be (USSD answers), stored on the SIM or not.
    network_number: str | None = None
    ussd: ussd_commands.NumberService | None = None  # None: its network's (NUMBER_SERVICES)
    balance: str = "100.00"
    # SIM storage ("SM") travels with the card.
    sm: dict[int, Slot] = field(default_factory=dict)

    @property
    def operator(self) -> str:
        return self.imsi[:5]


class EmulatedModem:
    """One emulated modem without a port: `power_on()`, then `feed()` it command bytes."""

    def __init__(
        self,
        link: str,
        profile: VendorProfile,
        sim: VirtualSim | None,
        *,
        rssi: int = 21,
        registration: int = RegStatus.HOME,
        output: Callable[[bytes], None] | None = None,
    ) -> None:
        self.link = link  # its name; the IMEI is made from its digits
        self.profile = profile
        self.sim = sim
        self.rssi = rssi
        self.registration = registration
        self.me: dict[int, Slot] = {}
        self.network_queue: list[str] = []  # PDUs the network holds while storage is full
        self.hung = False
        self.plugged = False  # powered and connected: answers and URCs go out
        self.cmti_log: list[tuple[float, int, str]] = []  # (monotonic, index, pdu)
        # Every message stored, indication or not: the moment its +CMTI is (or would be) written.
        self.arrival_log: list[tuple[float, int, str]] = []
        self.deleted: list[str] = []
        self.commands: list[str] = []
        self.max_command_log = 2000
        self.command_count = 0  # every command line heard (the log above is trimmed)
        self._output = output
        self._in = bytearray()
        self._flood: asyncio.TimerHandle | None = None
        self._listeners: list[Callable[[], None]] = []
        self.pin_ok = False
        self.pin_tries = 3
        # Finals answered, in turn, to the first command lines after every
        # power-up (Qualcomm-based modems: `+CME ERROR: 14` or `ERROR` for a while).
        self.power_up_errors: tuple[str, ...] = ()
        # False: a line of several commands (`AT+CSQ;+CREG?`) is answered ERROR, as
        # some old firmware does (V.250 concatenation not supported).
        self.concatenation = True
        self._errors_left: list[str] = []
        self.ussd = ussd_commands.UssdState()
        self._boot_state()

    # -- bytes in, bytes out -----------------------------------------------------------

    def power_on(self) -> None:
        """Power-up settings, as after plugging in."""
        self.plugged = True
        self._boot_state()
        self._start_flood()
        self._changed()

    def power_off(self) -> None:
        if self._flood is not None:
            self._flood.cancel()
            self._flood = None
        self._in.clear()
        self.plugged = False
        self._changed()

    def feed(self, data: bytes) -> None:
        """Bytes typed at the modem: each CR or LF ends a command line, ESC cancels one."""
        for byte in data:
            if byte == 0x1B:  # ESC cancels the line being typed
                self._in.clear()
                continue
            if byte in (0x0D, 0x0A):
                if self._in:
                    line = self._in.decode("latin-1")
                    self._in.clear()
                    self._command_line(line)
                continue
            if len(self._in) < _MAX_INPUT_LINE:
                self._in.append(byte)

    def _write(self, data: bytes) -> None:
        if self.plugged and self._output is not None:
            self._output(data)

    def write_lines(self, *lines: str) -> None:
        self._write(b"".join(b"\r\n" + line.encode("latin-1") + b"\r\n" for line in lines))

    # -- state changes observers (tests wait on them with timeouts) -------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def _changed(self) -> None:
        for callback in list(self._listeners):
            callback()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait for `predicate()` to hold, re-checked whenever the modem's state changes."""
        event = asyncio.Event()
        unsubscribe = self.subscribe(event.set)
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await event.wait()
                    event.clear()
        finally:
            unsubscribe()

    # -- power-up state ----------------------------------------------------------------

    def _boot_state(self) -> None:
        self.echo = True
        self.cmee = 0
        self.cnmi_mt = 0
        self.creg_mode = 0
        self.cops_format = 0
        self.storage = self.profile.storages[0]
        self.phonebook = "SM"
        self.charset = self.profile.charsets[0]  # AT+CSCS: the first is the power-up one
        self.ussd.reset()
        self.flooding = self.profile.rssi_flood is not None
        self.busy_left = self.profile.busy_after_boot
        self._errors_left = list(self.power_up_errors)
        self.pin_ok = self.sim is not None and self.sim.pin is None

    def _start_flood(self) -> None:
        interval = self.profile.rssi_flood
        if interval is None or not self.flooding or not self.plugged:
            return

        def tick() -> None:
            if not self.flooding or not self.plugged:
                self._flood = None
                return
            if not self.hung:
                self.write_lines(f"^RSSI: {self.rssi}", "^DSFLOWRPT: 0000000A,00000000,00000000")
            self._flood = asyncio.get_running_loop().call_later(interval, tick)

        self._flood = asyncio.get_running_loop().call_later(interval, tick)

    # -- storage --------------------------------------------------------------------------

    def store(self, name: str | None = None) -> dict[int, Slot] | None:
        name = name or self.storage
        if name in ("SM", "SM_P"):
            return self.sim.sm if self.sim is not None else None
        return self.me

    def stored(self) -> dict[int, Slot]:
        """The messages in the storage the modem currently receives into."""
        store = self.store()
        return dict(store) if store is not None else {}

    def has_pdu(self, pdu: str) -> bool:
        return any(slot.pdu == pdu for slot in self.stored().values())

    def _free_index(self, store: dict[int, Slot]) -> int | None:
        base = self.profile.index_base
        for index in range(base, base + self.profile.capacity):
            if index not in store:
                return index
        return None

    def receive_pdu(self, pdu: str) -> int | None:
        """The network delivers one PDU: stored and announced, or held while storage is full."""
        store = self.store()
        if store is None or not self.sim_ready():
            self.network_queue.append(pdu)
            return None
        index = self._free_index(store)
        if index is None:
            self.network_queue.append(pdu)
            return None
        store[index] = Slot(pdu)
        self.arrival_log.append((time.monotonic(), index, pdu))
        if self.cnmi_mt == 1 and self.plugged and not self.hung:
            self.cmti_log.append((time.monotonic(), index, pdu))
            self.write_lines(f'+CMTI: "{self.storage}",{index}')
        self._changed()
        return index

    def deliver(
        self,
        text: str,
        sender: str = "VK",
        *,
        ucs2: bool | None = None,
        reference: int | None = None,
        reference_bits: int = 8,
        order: list[int] | None = None,
    ) -> list[str]:
        """Deliver an SMS (split into parts as needed); returns the PDUs in delivery order."""
        if reference is None:
            reference = random.randrange(256 if reference_bits == 8 else 65536)
        pdus = encode_deliver_parts(
            sender, text, reference=reference, reference_bits=reference_bits, ucs2=ucs2
        )
        if order is not None:
            pdus = [pdus[i] for i in order]
        for pdu in pdus:
            self.receive_pdu(pdu)
        return pdus

    def fill_storage(self, sender: str = "+100", text: str = "old message") -> int:
        """Fill every free slot (messages that arrived while nobody listened)."""
        store = self.store()
        if store is None:
            return 0
        count = 0
        while (index := self._free_index(store)) is not None:
            store[index] = Slot(encode_deliver_parts(sender, f"{text} {count}")[0])
            count += 1
        self._changed()
        return count

    def drain_network_queue(self) -> None:
        queued, self.network_queue = self.network_queue, []
        for pdu in queued:
            self.receive_pdu(pdu)

    # -- faults ------------------------------------------------------------------------------

    def hang(self) -> None:
        self.hung = True
        self._changed()

    def unhang(self) -> None:
        self.hung = False
        self._changed()

    def garbage(self, data: bytes | None = None) -> None:
        self._write(data if data is not None else bytes(random.randrange(256) for _ in range(64)))

    def remove_sim(self) -> VirtualSim | None:
        sim, self.sim = self.sim, None
        self.pin_ok = False
        if self.profile.sim_removed_urc:
            self.write_lines(self.profile.sim_removed_urc)
        self._changed()
        return sim

    def insert_sim(self, sim: VirtualSim) -> None:
        self.sim = sim
        self.pin_ok = sim.pin is None
        if self.profile.sim_inserted_urc:
            self.write_lines(self.profile.sim_inserted_urc)
        self.drain_network_queue()
        self._changed()

    # -- the AT interpreter ---------------------------------------------------------------

    def _command_line(self, line: str) -> None:
        self.commands.append(line)
        self.command_count += 1
        if len(self.commands) > self.max_command_log:
            del self.commands[: len(self.commands) // 2]
        self._changed()  # a waiter may be watching the command log
        if self.hung:
            return  # heard, never answered
        if self.echo or self.profile.echo_ignores_ate0:
            self._write(line.encode("latin-1") + b"\r")
        if self._errors_left:
            self.write_lines(self._errors_left.pop(0))
            self._changed()
            return
        stripped = line.strip()
        if not stripped.upper().startswith("AT"):
            self.write_lines("ERROR")
            return
        body = stripped[2:]
        commands = split_commands(body) or [""]
        if len(commands) > 1 and not self.concatenation:
            self.write_lines("ERROR")
            self._changed()
            return
        out: list[str] = []
        for command in commands:
            result = self._execute(command.strip())
            if result is None:  # answered on its own (no final OK)
                self.write_lines(*out)
                self._changed()
                return
            lines, final = result
            out.extend(lines)
            if not final:  # the answer without a final result (the line ends there)
                self.write_lines(*out)
                self._changed()
                return
            if final != "OK":
                out.append(final)
                self.write_lines(*out)
                self._changed()
                return
        out.append("OK")
        self.write_lines(*out)
        self._changed()

    # Used by the command modules (sim_commands, sms_commands, network_commands).

    def cme(self, code: CmeCode) -> str:
        """A `+CME ERROR: n` final, or plain `ERROR` until `AT+CMEE=1` (as modems do)."""
        if self.cmee == 0:
            return "ERROR"
        return f"+CME ERROR: {int(code)}"

    def cms(self, code: CmsCode) -> str:
        return f"+CMS ERROR: {int(code)}"

    def sim_ready(self) -> bool:
        return self.sim is not None and self.pin_ok

    def sim_error(self) -> str | None:
        """The final a SIM command gets while the SIM is absent, locked or busy; None if usable."""
        if self.sim is None:
            return self.cme(CmeCode.SIM_NOT_INSERTED)
        if not self.pin_ok:
            return self.cme(CmeCode.SIM_PIN_REQUIRED)
        if self.busy_left > 0:
            self.busy_left -= 1
            return self.cme(CmeCode.DEVICE_BUSY)
        return None

    def _execute(self, command: str) -> tuple[list[str], str] | None:
        upper = command.upper()
        if upper in ("", "Z", "&F", "&W"):
            return [], "OK"
        if upper in ("E0", "E1", "E"):
            self.echo = upper == "E1"
            return [], "OK"
        if upper == "I":
            return [self.profile.manufacturer, self.profile.model], "OK"
        name, arg = _split_name(command)
        handler = self._TABLE.get(name)
        if handler is None:
            return [], self.profile.unknown_reply
        return handler(self, name, arg)

    # Each handler gets (name, argument after the name incl. "=" or "?").

    def _h_ident(self, name: str, arg: str) -> tuple[list[str], str]:
        value = {
            "+CGMI": self.profile.manufacturer,
            "+CGMM": self.profile.model,
            "+CGMR": self.profile.revision,
            "+CGSN": "35" + self.link_digits().rjust(13, "0")[-13:],
            "+GSN": "35" + self.link_digits().rjust(13, "0")[-13:],
        }[name]
        return [value], "OK"

    def link_digits(self) -> str:
        digits = "".join(ch for ch in self.link if ch.isdigit())
        return digits or "0"

    def _h_cmee(self, name: str, arg: str) -> tuple[list[str], str]:
        if arg.startswith("="):
            self.cmee = int(arg[1:] or 0)
            return [], "OK"
        return [f"+CMEE: {self.cmee}"], "OK"

    def _h_curc(self, name: str, arg: str) -> tuple[list[str], str]:
        if self.profile.rssi_flood is None:
            return [], self.profile.unknown_reply
        self.flooding = arg != "=0"
        if self.flooding:
            self._start_flood()
        return [], "OK"

    def _h_simple(self, name: str, arg: str) -> tuple[list[str], str]:
        return [], "OK"

    def _h_cfun(self, name: str, arg: str) -> tuple[list[str], str]:
        if arg.replace(" ", "") == "=1,1":
            # Reboot: answer, then come back with power-up settings.
            asyncio.get_running_loop().call_soon(self._reboot)
            return [], "OK"
        if arg == "=1":
            self.busy_left = self.profile.busy_after_boot
        return [], "OK"

    def _reboot(self) -> None:
        self._boot_state()
        self._start_flood()
        self.write_lines("RDY")

    _TABLE: ClassVar[dict[str, Callable[[EmulatedModem, str, str], _Result | None]]] = {
        "+CGMI": _h_ident,
        "+CGMM": _h_ident,
        "+CGMR": _h_ident,
        "+CGSN": _h_ident,
        "+GSN": _h_ident,
        "+CMEE": _h_cmee,
        "^CURC": _h_curc,
        "+CFUN": _h_cfun,
        "+CSMS": _h_simple,
        "+CSCA": _h_simple,
        "+CLIP": _h_simple,
        **sim_commands.COMMANDS,
        **sms_commands.COMMANDS,
        **network_commands.COMMANDS,
        **ussd_commands.COMMANDS,
    }


def _split_name(command: str) -> tuple[str, str]:
    """`+CMGR=3` → (`+CMGR`, `=3`); `^ICCID?` → (`^ICCID`, `?`)."""
    for index, char in enumerate(command):
        if char in "=?":
            return command[:index].upper(), command[index:]
    return command.upper(), ""
