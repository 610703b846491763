"""One modem: open, probe, initialise, identify the SIM, watch health, read SMS.

One task per modem runs `Modem.run()`: a session opens the port and goes
PROBING → INITIALIZING → READY (or NO_SIM / SIM_LOCKED), then serves wake-ups
(`+CMTI`, SIM and registration codes) and periodic health checks until the
port goes away or the modem stops answering; then the port is closed and
reopened after a capped exponential back-off. A modem that stops answering
(`hang_after` timeouts in a row) is reset with `AT+CFUN=1,1` and reopened.

SMS: read (`AT+CMGR`) → hand to the owner, who returns once it is durable →
delete (`AT+CMGD`). If the owner fails, the message stays on the SIM and is
picked up again by the next sweep (`AT+CMGL=4`), which also runs at start,
after every reconnect and every `sweep_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from dataclasses import dataclass, replace

import structlog

from .at import Unsolicited, split_args
from .channel import NO_FINAL, ATChannel, Reply, open_channel
from .errors import (
    RETRY_CODES,
    SIM_ABSENT_CODES,
    CmeError,
    CmsError,
    CommandError,
    CommandNotSupported,
    CommandTimeout,
    ModemDisconnected,
    ModemError,
    ParseError,
    PduError,
    PortNotModem,
)
from .events import (
    DeviceInfo,
    EventHandler,
    ModemState,
    ModemStateChanged,
    NetworkChanged,
    NetworkInfo,
    PoolEvent,
    SimIdentity,
    SimLost,
    SimReady,
    SmsReceived,
)
from .pdu import decode_pdu
from .replies import (
    choose_cnmi,
    iccid_from_crsm,
    normalize_iccid,
    parse_cnmi_ranges,
    parse_cops_numeric,
    parse_cpms_options,
    parse_cpms_usage,
    parse_creg,
    parse_csq,
    parse_list_entry,
    parse_number_entry,
    split_imsi,
)

__all__ = ["Backoff", "Modem", "ModemHung", "ModemSettings"]

log = structlog.get_logger("modems.modem")


class ModemHung(ModemError):
    """The modem stopped answering: `hang_after` command timeouts in a row."""


@dataclass(frozen=True, slots=True)
class ModemSettings:
    baudrate: int = 115200
    pin: str | None = None
    command_timeout: float = 5.0  # smstools uses 5 s, Kannel 3 s
    probe_timeout: float = 1.0
    probe_attempts: int = 3
    health_interval: float = 10.0
    sweep_interval: float = 60.0
    hang_after: int = 3
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    not_modem_retry: float = 60.0
    busy_retries: int = 5
    busy_delay: float = 0.5
    storage_preference: tuple[str, ...] = ("SM", "ME")
    max_line: int = 8192
    wake_queue: int = 1024
    # False: identify the modem and SIM but never read (or delete) stored SMS
    # (`supplier scan`, which must not take messages away from the daemon).
    read_sms: bool = True


class Backoff:
    """Capped exponential back-off with jitter (so 64 modems do not retry in step)."""

    def __init__(self, initial: float, cap: float, factor: float = 2.0) -> None:
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * self.factor)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.initial


class _Wake(enum.Enum):
    CHECK_SIM = "check_sim"
    NETWORK = "network"
    SWEEP = "sweep"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class _NewSms:
    storage: str | None
    index: int


# ICCID commands, tried in turn until one answers (docs/modems.md); the one
# that worked is remembered for the next SIM in the same modem.
_ICCID_COMMANDS: tuple[tuple[str, str], ...] = (
    ("AT+CCID", "+CCID"),
    ("AT+ICCID", "+ICCID"),
    ("AT^ICCID?", "^ICCID"),
    ("AT+QCCID", "+QCCID"),
    ("AT!ICCID?", "!ICCID"),
    ("AT+CRSM=176,12258,0,0,10", "+CRSM"),
)
_SIM_HINT_URCS = frozenset({"+CPIN", "^SIMST", "+SIMCARD", "+QUSIM", "RDY", "+CFUN"})
_NETWORK_URCS = frozenset({"+CREG", "+CGREG", "+CEREG", "+C5GREG"})
_CMS_INVALID_INDEX = frozenset({321, 322})  # empty slot / memory full on read


class Modem:
    """A GSM modem on one serial port. Create, `start()`, and later `stop()`."""

    def __init__(self, port: str, handler: EventHandler, settings: ModemSettings) -> None:
        self.port = port
        self.settings = settings
        self._handler = handler
        self.state = ModemState.DISCONNECTED
        self.detail: str | None = None
        self.device = DeviceInfo()
        self.sim: SimIdentity | None = None
        self.network = NetworkInfo(None, None, None)
        self.storage: str | None = None
        self.storage_used: int | None = None
        self.storage_total: int | None = None
        self.indications: str | None = None  # the AT+CNMI setting that took, None = polling
        self.timeouts = 0
        self.resets = 0
        self.sms_read = 0
        self.last_error: str | None = None
        self._timeouts_in_row = 0
        self._seen_at = False
        self._pin_failed = False
        # Old Wavecom answers AT+CPIN? with no final OK. Until that is seen the
        # +CPIN line gets a grace period for its OK; once seen, it completes
        # the command at once (a health check must not stall SMS reading).
        self._cpin_grace = 0.3
        self._iccid_command: tuple[str, str] | None = None
        self._channel: ATChannel | None = None
        self._wake: asyncio.Queue[_Wake | _NewSms] = asyncio.Queue(settings.wake_queue)
        self._sweep_due = False
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(settings.reconnect_initial, settings.reconnect_max)
        self._log = log.bind(port=port)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"modem {self.port}")

    async def stop(self, *, removed: bool = False) -> None:
        """Stop the modem's task and close its port; report the SIM lost."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        self._close_channel()
        reason = "port removed" if removed else "stopped"
        await self._lose_sim(reason)
        await self._set_state(ModemState.REMOVED if removed else ModemState.DISCONNECTED, reason)

    def request_reset(self) -> None:
        """Ask for a reset (`AT+CFUN=1,1` and reopen), e.g. from an operator."""
        self._queue(_Wake.RESET)

    @property
    def ready(self) -> bool:
        return self.state is ModemState.READY and self.sim is not None

    async def run(self) -> None:
        while True:
            delay: float
            try:
                await self._session()
                delay = self._backoff.next()
            except PortNotModem as exc:
                self._note_error(exc)
                await self._set_state(ModemState.NOT_MODEM, str(exc))
                delay = self.settings.not_modem_retry
            except ModemHung as exc:
                self._note_error(exc)
                self.resets += 1
                await self._lose_sim("modem stopped answering")
                await self._set_state(ModemState.RESETTING, str(exc))
                delay = self._backoff.next()
            except ModemDisconnected as exc:
                self._note_error(exc)
                await self._lose_sim("port lost")
                await self._set_state(ModemState.DISCONNECTED, str(exc))
                delay = self._backoff.next()
            except ModemError as exc:
                # A reply of an unexpected shape during set-up: start over.
                self._note_error(exc)
                self._log.warning("modem session failed", error=str(exc))
                await self._lose_sim(f"modem error: {exc}")
                await self._set_state(ModemState.DISCONNECTED, str(exc))
                delay = self._backoff.next()
            finally:
                self._close_channel()
            await asyncio.sleep(delay)

    # -- one session: open → probe → init → serve ------------------------------------

    async def _session(self) -> None:
        await self._set_state(ModemState.PROBING)
        self._channel = await open_channel(
            self.port,
            self._on_urc,
            baudrate=self.settings.baudrate,
            max_line=self.settings.max_line,
        )
        await self._probe()
        await self._set_state(ModemState.INITIALIZING)
        await self._initialize()
        await self._check_sim()
        await self._serve()

    async def _probe(self) -> None:
        """ESC + CR clears a half-typed command (Gammu does this); then AT until OK."""
        channel = self._require_channel()
        channel.write_raw(b"\x1b\r")
        await channel.settle(quiet=0.05, limit=0.5)
        for _ in range(self.settings.probe_attempts):
            try:
                await channel.command("AT", timeout=self.settings.probe_timeout)
            except CommandTimeout:
                continue
            except CommandError:
                continue  # a stale final from the flushed input; ask again
            self._seen_at = True
            self._timeouts_in_row = 0
            return
        if self._seen_at:
            # It answered before: it is a modem that stopped answering.
            self.timeouts += 1
            self._reset_blind()
            raise ModemHung(f"{self.port}: no answer to AT after a reopen")
        raise PortNotModem(f"{self.port}: no answer to AT")

    async def _initialize(self) -> None:
        await self._try("ATE0")  # some modems ignore it: the reader drops echoes
        if not await self._try("AT+CMEE=1"):
            await self._try("AT+CMEE=2")
        manufacturer = await self._text("AT+CGMI", "+CGMI")
        self.device = DeviceInfo(
            manufacturer=manufacturer,
            model=await self._text("AT+CGMM", "+CGMM"),
            revision=await self._text("AT+CGMR", "+CGMR"),
            imei=_digits(await self._text("AT+CGSN", "+CGSN")),
        )
        if manufacturer and "huawei" in manufacturer.lower():
            # Huawei floods ^RSSI/^BOOT/^MODE/^DSFLOWRPT unless told not to.
            await self._try("AT^CURC=0")
        self._log = self._log.bind(model=self.device.model)

    async def _setup_messaging(self) -> None:
        await self._retrying("AT+CMGF=0")  # PDU mode: text mode loses non-Latin text
        await self._try('AT+CSCS="GSM"')  # keep identity answers out of UCS-2 hex
        await self._setup_storage()
        await self._setup_indications()

    async def _setup_storage(self) -> None:
        offered: list[str] = []
        try:
            reply = await self._cmd("AT+CPMS=?")
            offered = parse_cpms_options(reply.first("+CPMS") or "")
        except (CommandError, ParseError) as exc:
            self._log.debug("AT+CPMS=? unusable", error=str(exc))
        choices = [s for s in self.settings.storage_preference if not offered or s in offered]
        if not choices:
            choices = offered[:1]
        last_error: Exception | None = None
        for storage in choices:
            # One storage for reading, writing and receiving: reading two
            # stores reads the same message twice on some modems.
            try:
                reply = await self._retrying(f'AT+CPMS="{storage}","{storage}","{storage}"')
            except CommandError as exc:
                last_error = exc
                continue
            self.storage = storage
            usage = reply.first("+CPMS")
            if usage:
                with contextlib.suppress(ParseError):
                    self.storage_used, self.storage_total = parse_cpms_usage(usage)
            return
        raise ModemError(f"{self.port}: no usable SMS storage ({last_error})")

    async def _setup_indications(self) -> None:
        ranges = None
        try:
            reply = await self._cmd("AT+CNMI=?")
            ranges = parse_cnmi_ranges(reply.first("+CNMI") or "")
        except (CommandError, ParseError) as exc:
            self._log.debug("AT+CNMI=? unusable", error=str(exc))
        for candidate in choose_cnmi(ranges) or choose_cnmi(None):
            setting = ",".join(str(v) for v in candidate)
            if await self._try(f"AT+CNMI={setting}"):
                self.indications = setting
                return
        # No +CMTI: fall back to sweeping at every health check.
        self.indications = None
        self._log.warning("no new-SMS indications; polling instead")

    # -- SIM ----------------------------------------------------------------------

    async def _check_sim(self, *, verify_iccid: bool = True) -> None:
        """Find out whether a usable SIM is in, and identify it if it is new.

        The periodic health check passes `verify_iccid=False`: while the SIM
        stays READY it is the same SIM (a swap goes through removal, which
        the SIM status shows), so its ICCID is not read again every tick.
        """
        status = await self._pin_status()
        if status is None:
            await self._lose_sim("SIM removed")
            await self._set_state(ModemState.NO_SIM, "no SIM")
            return
        if status in ("SIM PIN", "SIM PIN2") and self.settings.pin and not self._pin_failed:
            try:
                await self._cmd(f'AT+CPIN="{self.settings.pin}"')
            except CommandError as exc:
                # Never try a wrong PIN twice: three wrong tries lock the SIM.
                self._pin_failed = True
                self._note_error(exc)
            status = await self._pin_status()
            if status is None:
                await self._set_state(ModemState.NO_SIM, "no SIM")
                return
        if status != "READY":
            await self._lose_sim(f"SIM locked: {status}")
            detail = "wrong PIN" if self._pin_failed else f"SIM needs {status.removeprefix('SIM ')}"
            await self._set_state(ModemState.SIM_LOCKED, detail)
            return
        if not verify_iccid and self.ready:
            return
        iccid = await self._read_iccid()
        if self.sim is not None and self.sim.iccid == iccid and self.state is ModemState.READY:
            return
        await self._lose_sim("SIM changed")
        await self._setup_messaging()
        imsi = await self._read_imsi()
        home_mcc, home_mnc = split_imsi(imsi) if imsi else (None, None)
        self.sim = SimIdentity(iccid, imsi, await self._read_number(), home_mcc, home_mnc)
        self._log = log.bind(port=self.port, iccid=iccid, model=self.device.model)
        await self._refresh_network(force_operator=True)
        await self._set_state(ModemState.READY)
        self._backoff.reset()
        await self._emit(SimReady(self.port, self.device, self.sim, self.network))
        await self._sweep()

    async def _pin_status(self) -> str | None:
        """`READY`, `SIM PIN`, `SIM PUK`, …; None when there is no usable SIM."""
        try:
            reply = await self._retrying("AT+CPIN?", info_grace=self._cpin_grace)
        except CmeError as exc:
            if exc.code in SIM_ABSENT_CODES or exc.code in RETRY_CODES:
                return None
            if exc.code == 11:
                return "SIM PIN"
            if exc.code == 12:
                return "SIM PUK"
            raise
        if reply.final.text == NO_FINAL:
            self._cpin_grace = 0.0
        value = (reply.first("+CPIN") or "").strip().strip('"').upper()
        if value in ("NOT INSERTED", "NOT READY", "SIM FAILURE", "REMOVED", ""):
            return None
        return value

    async def _read_iccid(self) -> str:
        commands = list(_ICCID_COMMANDS)
        if self._iccid_command is not None:
            commands.remove(self._iccid_command)
            commands.insert(0, self._iccid_command)
        for command, prefix in commands:
            try:
                reply = await self._retrying(command)
                if prefix == "+CRSM":
                    iccid = iccid_from_crsm(reply.first("+CRSM") or "")
                else:
                    raw = reply.first(prefix) or next(iter(reply.bare()), "")
                    iccid = normalize_iccid(raw)
            except CmeError as exc:
                if exc.code in SIM_ABSENT_CODES:
                    raise
                continue
            except (CommandNotSupported, CommandError, ParseError):
                continue
            self._iccid_command = (command, prefix)
            return iccid
        raise ModemError(f"{self.port}: no command gave the SIM's ICCID")

    async def _read_imsi(self) -> str | None:
        try:
            reply = await self._retrying("AT+CIMI")
        except CommandError:
            return None
        for line in reply.bare() + reply.values("+CIMI"):
            digits = _digits(line)
            if digits and 6 <= len(digits) <= 15:
                return digits
        return None

    async def _read_number(self) -> str | None:
        """`AT+CNUM`, else the SIM's own-number phonebook; often empty on prepaid SIMs."""
        number = await self._number_from("AT+CNUM", "+CNUM")
        if number is None and await self._try('AT+CPBS="ON"'):
            number = await self._number_from("AT+CPBR=1", "+CPBR")
        return number

    async def _number_from(self, command: str, prefix: str) -> str | None:
        try:
            reply = await self._cmd(command)
        except CommandError:
            return None
        for value in reply.values(prefix):
            if number := parse_number_entry(value):
                return number
        return None

    async def _lose_sim(self, reason: str) -> None:
        if self.sim is None:
            return
        sim, self.sim = self.sim, None
        self._log.info("SIM lost", iccid=sim.iccid, reason=reason)
        self._log = log.bind(port=self.port, model=self.device.model)
        await self._emit(SimLost(self.port, sim.iccid, reason))

    # -- serving ------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        next_health = loop.time() + self.settings.health_interval
        next_sweep = loop.time() + self.settings.sweep_interval
        channel = self._require_channel()
        while True:
            now = loop.time()
            deadline = min(next_health, next_sweep) if self.ready else next_health
            wake = await self._next_wake(channel, max(0.0, deadline - now))
            if not channel.is_open:
                raise ModemDisconnected(f"{self.port}: {channel.lost_reason or 'port lost'}")
            try:
                if isinstance(wake, _NewSms):
                    if self.ready:
                        if wake.storage is not None and wake.storage != self.storage:
                            self._log.warning("+CMTI for another storage", storage=wake.storage)
                            await self._sweep()
                        else:
                            await self._read_index(wake.index)
                elif wake is _Wake.RESET:
                    self._reset_blind()
                    raise ModemHung(f"{self.port}: reset requested")
                elif wake is _Wake.CHECK_SIM:
                    await self._check_sim()
                elif wake is _Wake.NETWORK and self.ready:
                    await self._refresh_network()
                elif wake is _Wake.SWEEP and self.ready:
                    await self._sweep()
                now = loop.time()
                if now >= next_health:
                    next_health = now + self.settings.health_interval
                    await self._health()
                if self.ready and (now >= next_sweep or self._sweep_due or not self.indications):
                    next_sweep = now + self.settings.sweep_interval
                    await self._sweep()
            except CommandTimeout as exc:
                self._note_error(exc)  # below the hang threshold: carry on
            except CmeError as exc:
                if exc.code in SIM_ABSENT_CODES:
                    await self._check_sim()
                else:
                    self._note_error(exc)
            except (CommandError, ParseError) as exc:
                self._note_error(exc)

    async def _next_wake(self, channel: ATChannel, timeout: float) -> _Wake | _NewSms | None:
        if not self._wake.empty():
            return self._wake.get_nowait()
        getter = asyncio.ensure_future(self._wake.get())
        closed = asyncio.ensure_future(channel.wait_closed())
        try:
            done, _ = await asyncio.wait(
                {getter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for future in (getter, closed):
                if not future.done():
                    future.cancel()
        if getter in done and not getter.cancelled():
            return getter.result()
        return None

    async def _health(self) -> None:
        await self._check_sim(verify_iccid=False)
        if self.ready:
            await self._refresh_network()

    async def _refresh_network(self, *, force_operator: bool = False) -> None:
        previous = self.network
        rssi = previous.rssi
        registration = previous.registration
        try:
            reply = await self._cmd("AT+CSQ")
            rssi = parse_csq(reply.first("+CSQ") or "")[0]
        except (CommandError, ParseError) as exc:
            self._log.debug("AT+CSQ failed", error=str(exc))
        try:
            reply = await self._cmd("AT+CREG?")
            registration = parse_creg(reply.first("+CREG") or "").status
        except (CommandError, ParseError) as exc:
            self._log.debug("AT+CREG? failed", error=str(exc))
        operator = previous.operator
        if force_operator or registration != previous.registration or operator is None:
            operator = await self._read_operator() if registration in (1, 5) else None
        self.network = NetworkInfo(registration, operator, rssi)
        if self.sim is None or self.state is not ModemState.READY:
            return
        moved = abs((rssi or 0) - (previous.rssi or 0)) >= 3
        moved = moved or (rssi == 99) != (previous.rssi == 99)
        if (registration, operator) != (previous.registration, previous.operator) or moved:
            await self._emit(NetworkChanged(self.port, self.sim.iccid, self.network))

    async def _read_operator(self) -> str | None:
        await self._try("AT+COPS=3,2")
        try:
            reply = await self._cmd("AT+COPS?")
            return parse_cops_numeric(reply.first("+COPS") or "")
        except (CommandError, ParseError):
            return None

    # -- SMS ----------------------------------------------------------------------

    async def _read_index(self, index: int) -> None:
        if not self.settings.read_sms:
            return
        try:
            reply = await self._cmd(f"AT+CMGR={index}")
        except CmsError as exc:
            if exc.code in _CMS_INVALID_INDEX:
                return  # already read and deleted (a sweep got there first)
            raise
        pdus = [line for line in reply.bare() if line]
        if pdus:
            await self._deliver(index, pdus[-1])

    async def _sweep(self) -> None:
        """Read every stored message (`AT+CMGL=4`): at start, after reconnects, periodically."""
        self._sweep_due = False
        if not self.settings.read_sms:
            return
        reply = await self._cmd("AT+CMGL=4", timeout=max(self.settings.command_timeout, 10.0))
        entries: list[tuple[int, str]] = []
        index: int | None = None
        for line in reply.lines:
            if line.upper().startswith("+CMGL"):
                try:
                    index = parse_list_entry(line.split(":", 1)[1])[0]
                except (ParseError, IndexError) as exc:
                    self._log.warning("bad +CMGL line", line=line, error=str(exc))
                    index = None
            elif index is not None:
                entries.append((index, line))
                index = None
        for entry_index, pdu in entries:
            await self._deliver(entry_index, pdu)
        try:
            usage = await self._cmd("AT+CPMS?")
            value = usage.first("+CPMS")
            if value:
                self.storage_used, self.storage_total = parse_cpms_usage(value)
        except (CommandError, ParseError):
            pass
        full = self.storage_total and (self.storage_used or 0) >= self.storage_total
        if full:
            # Full storage silently stops reception: say so loudly.
            self._log.error("SMS storage full", used=self.storage_used)

    async def _deliver(self, index: int, pdu: str) -> None:
        sim = self.sim
        storage = self.storage
        if sim is None or storage is None:
            return
        error: str | None = None
        try:
            message = decode_pdu(pdu)
        except PduError as exc:
            message, error = None, str(exc)
            self._log.warning("undecodable PDU kept raw", index=index, error=error)
        event = SmsReceived(
            port=self.port,
            iccid=sim.iccid,
            storage=storage,
            index=index,
            pdu=pdu,
            message=message,
            error=error,
            received_at=time.time(),
        )
        try:
            await self._handler(event)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the SMS stays on the SIM
            self._log.error("SMS not accepted; kept on the SIM", index=index, error=repr(exc))
            self._sweep_due = True
            return
        self.sms_read += 1
        try:
            await self._cmd(f"AT+CMGD={index}")
        except CommandError as exc:
            # Left on the SIM: the next sweep reads it again and the owner's
            # duplicate check drops it.
            self._log.warning("delete failed", index=index, error=str(exc))

    # -- unsolicited codes ------------------------------------------------------------

    def _on_urc(self, urc: Unsolicited) -> None:
        name = urc.name
        if name == "+CMTI":
            fields = split_args(urc.args)
            try:
                index = int(fields[1]) if len(fields) > 1 else -1
            except ValueError:
                index = -1
            if index < 0:
                # SIM7000 sends `+CMTI: ,-1`; SIM800 adds "MMS PUSH": sweep instead.
                self._queue(_Wake.SWEEP)
            else:
                self._queue(_NewSms(fields[0] or None, index))
        elif name in _SIM_HINT_URCS:
            self._queue(_Wake.CHECK_SIM)
        elif name in _NETWORK_URCS:
            self._queue(_Wake.NETWORK)
        elif name == "^RSSI":
            try:
                rssi = int(urc.args)
            except ValueError:
                return
            if 0 <= rssi <= 31 or rssi == 99:
                self.network = replace(self.network, rssi=rssi)
        elif name in ("+CMT", "+CDS"):
            # Direct delivery (mt=2) was never asked for; if a modem does it
            # anyway the message is also in storage or lost to us: sweep.
            self._queue(_Wake.SWEEP)
        elif not name:
            self._log.debug("stray line", line=urc.text[:80])

    def _queue(self, wake: _Wake | _NewSms) -> None:
        try:
            self._wake.put_nowait(wake)
        except asyncio.QueueFull:
            self._sweep_due = True  # a flood: a sweep reads whatever it announced

    # -- command helpers --------------------------------------------------------------

    def _require_channel(self) -> ATChannel:
        if self._channel is None or not self._channel.is_open:
            raise ModemDisconnected(f"{self.port}: port is not open")
        return self._channel

    async def _cmd(
        self, command: str, *, timeout: float | None = None, info_grace: float | None = None
    ) -> Reply:
        channel = self._require_channel()
        try:
            reply = await channel.command(
                command,
                timeout=timeout or self.settings.command_timeout,
                info_grace=info_grace,
            )
        except CommandTimeout:
            self.timeouts += 1
            self._timeouts_in_row += 1
            if self._timeouts_in_row >= self.settings.hang_after:
                self._reset_blind()
                raise ModemHung(
                    f"{self.port}: {self._timeouts_in_row} commands in a row got no answer"
                ) from None
            raise
        except CommandError:
            self._timeouts_in_row = 0
            raise
        self._timeouts_in_row = 0
        return reply

    async def _retrying(self, command: str, *, info_grace: float | None = None) -> Reply:
        """Retry `SIM busy` (CME 14) and `device busy` (515, Wavecom after CFUN=1), capped."""
        delay = self.settings.busy_delay
        for attempt in range(self.settings.busy_retries + 1):
            try:
                return await self._cmd(command, info_grace=info_grace)
            except CmeError as exc:
                if exc.code not in RETRY_CODES or attempt == self.settings.busy_retries:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _try(self, command: str) -> bool:
        """A command whose failure is acceptable (an optional vendor setting)."""
        try:
            await self._cmd(command)
        except CommandError:
            return False
        return True

    async def _text(self, command: str, prefix: str) -> str | None:
        try:
            reply = await self._cmd(command)
        except CommandError:
            return None
        value = reply.first(prefix) or next(iter(reply.bare()), None)
        return value.strip().strip('"').strip() or None if value else None

    def _reset_blind(self) -> None:
        """`AT+CFUN=1,1` without waiting: the modem reboots, the port is reopened after."""
        channel = self._channel
        if channel is not None and channel.is_open:
            channel.write_raw(b"AT+CFUN=1,1\r")

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        while not self._wake.empty():
            self._wake.get_nowait()

    def _note_error(self, exc: Exception) -> None:
        self.last_error = str(exc)
        self._log.debug("modem error", error=str(exc))

    # -- events -------------------------------------------------------------------------

    async def _set_state(self, state: ModemState, detail: str | None = None) -> None:
        if state is self.state and detail == self.detail:
            return
        previous, self.state, self.detail = self.state, state, detail
        self._log.info("modem state", state=state.value, previous=previous.value, detail=detail)
        await self._emit(ModemStateChanged(self.port, state, previous, detail))

    async def _emit(self, event: PoolEvent) -> None:
        try:
            await self._handler(event)
        except Exception as exc:  # noqa: BLE001 - an owner's bug must not kill the modem
            self._log.error("event handler failed", event=type(event).__name__, error=repr(exc))


def _digits(value: str | None) -> str | None:
    if not value:
        return None
    digits = "".join(ch for ch in value if ch.isdigit())
    return digits or None
