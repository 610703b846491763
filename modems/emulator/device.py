"""One emulated GSM modem on a pseudo-terminal.

The daemon opens the pty's slave side (through a stable symlink) with the
same serial code as real hardware; the emulator holds the master side, reads
command lines, answers them like the vendor profile says, stores incoming
SMS in PDU form and announces them with `+CMTI`. Faults are injected through
methods (unplug, hang, garbage, SIM removal, full storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from modems.at import split_args
from modems.pdu import encode_deliver_parts

from .profiles import VendorProfile

__all__ = ["Slot", "VirtualModem", "VirtualSim"]

_MAX_OUTPUT = 64 * 1024  # a real modem drops output nobody reads; so do we
_MAX_INPUT_LINE = 4096

_Result = tuple[list[str], str]  # information lines, final result


@dataclass
class Slot:
    pdu: str
    status: int = 0  # 0 received unread, 1 received read


@dataclass
class VirtualSim:
    iccid: str
    imsi: str
    number: str | None  # digits with country code; None: the SIM does not know it
    pin: str | None = None
    # SIM storage ("SM") travels with the card.
    sm: dict[int, Slot] = field(default_factory=dict)

    @property
    def operator(self) -> str:
        return self.imsi[:5]


def _swap(digits: str) -> str:
    text = digits + ("F" if len(digits) % 2 else "")
    return "".join(text[i + 1] + text[i] for i in range(0, len(text), 2))


class VirtualModem:
    """An emulated modem. `open()` creates its pty and symlink; `close()` removes them."""

    def __init__(
        self,
        link: str,
        profile: VendorProfile,
        sim: VirtualSim | None,
        *,
        rssi: int = 21,
        registration: int = 1,
        pace: float | None = None,
    ) -> None:
        self.link = link
        self.profile = profile
        self.sim = sim
        self.rssi = rssi
        self.registration = registration
        self.pace = pace  # bytes per second for replies, None: as fast as possible
        self.me: dict[int, Slot] = {}
        self.network_queue: list[str] = []  # PDUs the network holds while storage is full
        self.hung = False
        self.plugged = False
        self.cmti_log: list[tuple[float, int, str]] = []  # (monotonic, index, pdu)
        # Every message stored, indication or not: the moment its +CMTI is (or would be) written.
        self.arrival_log: list[tuple[float, int, str]] = []
        self.deleted: list[str] = []
        self.commands: list[str] = []
        self.max_command_log = 2000
        self.command_count = 0  # every command line heard (the log above is trimmed)
        self._master: int | None = None
        self._slave: int | None = None
        self._in = bytearray()
        self._out = bytearray()
        self._writer_registered = False
        self._flood: asyncio.TimerHandle | None = None
        self._listeners: list[Callable[[], None]] = []
        self._pin_ok = False
        self._pin_tries = 3
        self._boot_state()

    # -- pty ------------------------------------------------------------------------

    @property
    def device(self) -> str | None:
        return os.ttyname(self._slave) if self._slave is not None else None

    def open(self) -> None:
        """Power on: a new pty (a new /dev/pts number, like a USB re-enumeration)."""
        master, slave = os.openpty()
        # Raw mode before anyone reads: a cooked pty would echo our output back to us.
        tty.setraw(slave)
        tty.setraw(master)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = f"{self.link}.tmp{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.link)
        asyncio.get_running_loop().add_reader(master, self._read_ready)
        self.plugged = True
        self._boot_state()
        self._start_flood()
        self._changed()

    def close(self) -> None:
        """Power off: the port disappears; the daemon's reads fail."""
        loop = asyncio.get_running_loop()
        if self._flood is not None:
            self._flood.cancel()
            self._flood = None
        if self._master is not None:
            loop.remove_reader(self._master)
            if self._writer_registered:
                loop.remove_writer(self._master)
                self._writer_registered = False
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.link)
        self._out.clear()
        self._in.clear()
        self.plugged = False
        self._changed()

    def _read_ready(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:
                return  # nobody has the slave open right now
            raise
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
        if self._master is None:
            return
        if self.pace:
            delay = len(data) / self.pace
            asyncio.get_running_loop().call_later(delay, self._write_now, data)
        else:
            self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        if self._master is None:
            return
        if len(self._out) + len(data) > _MAX_OUTPUT:
            return
        self._out += data
        self._flush()

    def _flush(self) -> None:
        if self._master is None:
            return
        loop = asyncio.get_running_loop()
        while self._out:
            try:
                written = os.write(self._master, self._out)
            except BlockingIOError:
                break
            except OSError:
                self._out.clear()
                break
            del self._out[:written]
        if self._out and not self._writer_registered:
            loop.add_writer(self._master, self._flush)
            self._writer_registered = True
        elif not self._out and self._writer_registered:
            loop.remove_writer(self._master)
            self._writer_registered = False

    def _lines(self, *lines: str) -> None:
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
        self.flooding = self.profile.rssi_flood is not None
        self.busy_left = self.profile.busy_after_boot
        self._pin_ok = self.sim is not None and self.sim.pin is None

    def _start_flood(self) -> None:
        interval = self.profile.rssi_flood
        if interval is None or not self.flooding or self._master is None:
            return

        def tick() -> None:
            if not self.flooding or self._master is None:
                self._flood = None
                return
            if not self.hung:
                self._lines(f"^RSSI: {self.rssi}", "^DSFLOWRPT: 0000000A,00000000,00000000")
            self._flood = asyncio.get_running_loop().call_later(interval, tick)

        self._flood = asyncio.get_running_loop().call_later(interval, tick)

    # -- storage --------------------------------------------------------------------------

    def _store(self, name: str | None = None) -> dict[int, Slot] | None:
        name = name or self.storage
        if name in ("SM", "SM_P"):
            return self.sim.sm if self.sim is not None else None
        return self.me

    def stored(self) -> dict[int, Slot]:
        """The messages in the storage the modem currently receives into."""
        store = self._store()
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
        store = self._store()
        if store is None or not self._sim_ready():
            self.network_queue.append(pdu)
            return None
        index = self._free_index(store)
        if index is None:
            self.network_queue.append(pdu)
            return None
        store[index] = Slot(pdu)
        self.arrival_log.append((time.monotonic(), index, pdu))
        if self.cnmi_mt == 1 and self._master is not None and not self.hung:
            self.cmti_log.append((time.monotonic(), index, pdu))
            self._lines(f'+CMTI: "{self.storage}",{index}')
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
        store = self._store()
        if store is None:
            return 0
        count = 0
        while (index := self._free_index(store)) is not None:
            store[index] = Slot(encode_deliver_parts(sender, f"{text} {count}")[0])
            count += 1
        self._changed()
        return count

    def _drain_network_queue(self) -> None:
        queued, self.network_queue = self.network_queue, []
        for pdu in queued:
            self.receive_pdu(pdu)

    # -- faults ------------------------------------------------------------------------------

    def unplug(self) -> None:
        self.close()

    def replug(self) -> None:
        self.open()

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
        self._pin_ok = False
        if self.profile.sim_removed_urc:
            self._lines(self.profile.sim_removed_urc)
        self._changed()
        return sim

    def insert_sim(self, sim: VirtualSim) -> None:
        self.sim = sim
        self._pin_ok = sim.pin is None
        if self.profile.sim_inserted_urc:
            self._lines(self.profile.sim_inserted_urc)
        self._drain_network_queue()
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
        stripped = line.strip()
        if not stripped.upper().startswith("AT"):
            self._lines("ERROR")
            return
        body = stripped[2:]
        commands = _split_commands(body) or [""]
        out: list[str] = []
        for command in commands:
            result = self._execute(command.strip())
            if result is None:  # answered on its own (no final OK)
                self._lines(*out)
                self._changed()
                return
            lines, final = result
            out.extend(lines)
            if final != "OK":
                out.append(final)
                self._lines(*out)
                self._changed()
                return
        out.append("OK")
        self._lines(*out)
        self._changed()

    def _cme(self, code: int) -> str:
        if self.cmee == 0:
            return "ERROR"
        return f"+CME ERROR: {code}"

    def _cms(self, code: int) -> str:
        return f"+CMS ERROR: {code}"

    def _sim_ready(self) -> bool:
        return self.sim is not None and self._pin_ok

    def _sim_error(self) -> str | None:
        if self.sim is None:
            return self._cme(10)
        if not self._pin_ok:
            return self._cme(11)
        if self.busy_left > 0:
            self.busy_left -= 1
            return self._cme(515)
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

    def _h_cpin(self, name: str, arg: str) -> tuple[list[str], str] | None:
        if arg == "?":
            if self.sim is None:
                return [], self._cme(10)
            if self.busy_left > 0:
                self.busy_left -= 1
                return [], self._cme(515)
            if self._pin_ok:
                state = "READY"
            elif self._pin_tries <= 0:
                state = "SIM PUK"
            else:
                state = "SIM PIN"
            if self.profile.cpin_without_ok:
                self._lines(f"+CPIN: {state}")
                return None
            return [f"+CPIN: {state}"], "OK"
        if arg.startswith("="):
            if self.sim is None:
                return [], self._cme(10)
            given = split_args(arg[1:])[0] if arg[1:] else ""
            if self._pin_ok:
                return [], self._cme(3)
            if self._pin_tries <= 0:
                return [], self._cme(12)
            if given == self.sim.pin:
                self._pin_ok = True
                self._pin_tries = 3
                return [], "OK"
            self._pin_tries -= 1
            return [], self._cme(16)
        return [], "ERROR"

    def _h_cimi(self, name: str, arg: str) -> tuple[list[str], str]:
        error = self._sim_error()
        if error:
            return [], error
        assert self.sim is not None
        return [self.sim.imsi], "OK"

    def _h_iccid(self, name: str, arg: str) -> tuple[list[str], str]:
        if name not in self.profile.iccid_commands:
            return [], self.profile.unknown_reply
        if self.sim is None:
            return [], self._cme(10)
        if self.busy_left > 0:
            self.busy_left -= 1
            return [], self._cme(515)
        iccid = self.sim.iccid
        if name == "+CCID":
            return [f"+CCID: {iccid}"], "OK"
        if name == "+ICCID":
            return [f"ICCID: {iccid}"], "OK"
        if name == "^ICCID":
            return [f"^ICCID: {_swap(iccid)}"], "OK"
        if name == "+QCCID":
            return [f"+QCCID: {iccid}"], "OK"
        if name == "!ICCID":
            return [f"!ICCID: {iccid}"], "OK"
        if name == "+CRSM":
            if arg.replace(" ", "") != "=176,12258,0,0,10":
                return [], self._cme(3)
            return [f'+CRSM: 144,0,"{_swap(iccid)}"'], "OK"
        return [], self.profile.unknown_reply

    def _h_cnum(self, name: str, arg: str) -> tuple[list[str], str]:
        error = self._sim_error()
        if error:
            return [], error
        assert self.sim is not None
        if self.profile.number_in_cnum and self.sim.number:
            return [f'+CNUM: "","+{self.sim.number}",145'], "OK"
        return [], "OK"

    def _h_cpbs(self, name: str, arg: str) -> tuple[list[str], str]:
        error = self._sim_error()
        if error:
            return [], error
        self.phonebook = split_args(arg[1:])[0] if arg.startswith("=") else "SM"
        return [], "OK"

    def _h_cpbr(self, name: str, arg: str) -> tuple[list[str], str]:
        error = self._sim_error()
        if error:
            return [], error
        assert self.sim is not None
        own = self.phonebook == "ON"
        if own and arg == "=1" and self.sim.number and not self.profile.number_in_cnum:
            return [f'+CPBR: 1,"+{self.sim.number}",145,"Own number"'], "OK"
        return [], self._cme(22)

    def _h_simple(self, name: str, arg: str) -> tuple[list[str], str]:
        return [], "OK"

    def _h_cscs(self, name: str, arg: str) -> tuple[list[str], str]:
        if arg == "?":
            return ['+CSCS: "GSM"'], "OK"
        if arg == "=?":
            return ['+CSCS: ("IRA","GSM","UCS2")'], "OK"
        return [], "OK"

    def _h_cmgf(self, name: str, arg: str) -> tuple[list[str], str]:
        if arg == "?":
            return ["+CMGF: 0"], "OK"
        if arg == "=?":
            return ["+CMGF: (0)"], "OK"
        # The emulator speaks PDU mode only (the daemon never uses text mode).
        return ([], "OK") if arg == "=0" else ([], self._cms(303))

    def _h_cpms(self, name: str, arg: str) -> tuple[list[str], str]:
        if arg == "=?":
            options = ",".join(f'"{s}"' for s in self.profile.storages)
            return [f"+CPMS: ({options}),({options}),({options})"], "OK"
        if arg == "?":
            used = len(self._store() or {})
            total = self.profile.capacity
            entry = f'"{self.storage}",{used},{total}'
            return [f"+CPMS: {entry},{entry},{entry}"], "OK"
        error = self._sim_error()
        if error:
            return [], error
        wanted = split_args(arg[1:])
        if not wanted or any(s not in self.profile.storages for s in wanted):
            return [], self._cms(302)
        self.storage = wanted[-1] if len(wanted) >= 3 else wanted[0]
        used = len(self._store() or {})
        total = self.profile.capacity
        return [f"+CPMS: {used},{total},{used},{total},{used},{total}"], "OK"

    def _h_cnmi(self, name: str, arg: str) -> tuple[list[str], str]:
        if arg == "=?":
            return [f"+CNMI: {self.profile.cnmi_ranges}"], "OK"
        if arg == "?":
            return [f"+CNMI: 2,{self.cnmi_mt},0,0,0"], "OK"
        setting = arg[1:].replace(" ", "")
        if setting in self.profile.cnmi_rejects:
            return [], self._cms(303)
        fields = setting.split(",")
        try:
            self.cnmi_mt = int(fields[1]) if len(fields) > 1 and fields[1] else 0
        except ValueError:
            return [], "ERROR"
        return [], "OK"

    def _h_cmgr(self, name: str, arg: str) -> tuple[list[str], str]:
        error = self._sim_error()
        if error:
            return [], error
        try:
            index = int(arg[1:])
        except ValueError:
            return [], self._cms(321)
        slot = (self._store() or {}).get(index)
        if slot is None:
            return ([], self._cms(321)) if self.profile.empty_read_error else ([], "OK")
        status = slot.status
        slot.status = 1
        return [f"+CMGR: {status},,{len(slot.pdu) // 2 - _smsc_octets(slot.pdu)}", slot.pdu], "OK"

    def _h_cmgl(self, name: str, arg: str) -> tuple[list[str], str]:
        error = self._sim_error()
        if error:
            return [], error
        try:
            wanted = int(arg[1:]) if arg.startswith("=") else 0
        except ValueError:
            return [], self._cms(302)
        lines = []
        for index, slot in sorted((self._store() or {}).items()):
            if wanted not in (4, slot.status):
                continue
            length = len(slot.pdu) // 2 - _smsc_octets(slot.pdu)
            lines += [f"+CMGL: {index},{slot.status},,{length}", slot.pdu]
            slot.status = 1
        return lines, "OK"

    def _h_cmgd(self, name: str, arg: str) -> tuple[list[str], str]:
        error = self._sim_error()
        if error:
            return [], error
        fields = split_args(arg[1:])
        store = self._store()
        if store is None:
            return [], self._cms(310)
        try:
            index = int(fields[0])
            flag = int(fields[1]) if len(fields) > 1 and fields[1] else 0
        except (ValueError, IndexError):
            return [], self._cms(321)
        if flag == 4:
            self.deleted.extend(slot.pdu for slot in store.values())
            store.clear()
        else:
            base = self.profile.index_base
            if not base <= index < base + self.profile.capacity:
                return [], self._cms(321)
            slot = store.pop(index, None)
            if slot is not None:
                self.deleted.append(slot.pdu)
        if self.network_queue:
            asyncio.get_running_loop().call_soon(self._drain_network_queue)
        return [], "OK"

    def _h_csq(self, name: str, arg: str) -> tuple[list[str], str]:
        return [f"+CSQ: {self.rssi},99"], "OK"

    def _h_creg(self, name: str, arg: str) -> tuple[list[str], str]:
        if arg.startswith("="):
            try:
                self.creg_mode = int(arg[1:] or 0)
            except ValueError:
                return [], "ERROR"
            return [], "OK"
        status = self.registration if self._sim_ready() else 0
        return [f"{name}: {self.creg_mode},{status}"], "OK"

    def _h_cops(self, name: str, arg: str) -> tuple[list[str], str]:
        if arg.startswith("=3,"):
            self.cops_format = int(arg[3:] or 0)
            return [], "OK"
        if arg == "?":
            if not self._sim_ready() or self.registration not in (1, 5) or self.sim is None:
                return ["+COPS: 0"], "OK"
            oper = self.sim.operator if self.cops_format == 2 else "EMULATED"
            return [f'+COPS: 0,{self.cops_format},"{oper}",2'], "OK"
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
        self._lines("RDY")

    def _h_cusd(self, name: str, arg: str) -> tuple[list[str], str]:
        if self._sim_error():
            return [], self._cme(10)
        # `AT+CUSD=1` only turns result codes on; a request carries the USSD string.
        if self.sim is not None and self.sim.number and '"' in arg:
            reply = f'+CUSD: 0,"Your number is {self.sim.number}",15'
            asyncio.get_running_loop().call_soon(self._lines, reply)
        return [], "OK"

    def _h_cgatt(self, name: str, arg: str) -> tuple[list[str], str]:
        if self._sim_error():
            return [], self._cme(10)
        return (["+CGATT: 1"], "OK") if arg == "?" else ([], "OK")

    _TABLE: ClassVar[dict[str, Callable[[VirtualModem, str, str], _Result | None]]] = {
        "+CGMI": _h_ident,
        "+CGMM": _h_ident,
        "+CGMR": _h_ident,
        "+CGSN": _h_ident,
        "+GSN": _h_ident,
        "+CMEE": _h_cmee,
        "^CURC": _h_curc,
        "+CPIN": _h_cpin,
        "+CIMI": _h_cimi,
        "+CCID": _h_iccid,
        "+ICCID": _h_iccid,
        "^ICCID": _h_iccid,
        "+QCCID": _h_iccid,
        "!ICCID": _h_iccid,
        "+CRSM": _h_iccid,
        "+CNUM": _h_cnum,
        "+CPBS": _h_cpbs,
        "+CPBR": _h_cpbr,
        "+CSCS": _h_cscs,
        "+CMGF": _h_cmgf,
        "+CPMS": _h_cpms,
        "+CNMI": _h_cnmi,
        "+CMGR": _h_cmgr,
        "+CMGL": _h_cmgl,
        "+CMGD": _h_cmgd,
        "+CSQ": _h_csq,
        "+CREG": _h_creg,
        "+CGREG": _h_creg,
        "+COPS": _h_cops,
        "+CFUN": _h_cfun,
        "+CUSD": _h_cusd,
        "+CGATT": _h_cgatt,
        "+CSMS": _h_simple,
        "+CSCA": _h_simple,
        "+CLIP": _h_simple,
    }


def _split_commands(body: str) -> list[str]:
    """`+CSQ;+CREG?` → [`+CSQ`, `+CREG?`] (V.250 concatenation), quotes respected."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in body:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if current or parts:
        parts.append("".join(current))
    return [p for p in parts if p.strip()] if parts else []


def _split_name(command: str) -> tuple[str, str]:
    """`+CMGR=3` → (`+CMGR`, `=3`); `^ICCID?` → (`^ICCID`, `?`)."""
    for index, char in enumerate(command):
        if char in "=?":
            return command[:index].upper(), command[index:]
    return command.upper(), ""


def _smsc_octets(pdu: str) -> int:
    try:
        return int(pdu[:2], 16) + 1
    except ValueError:
        return 0
