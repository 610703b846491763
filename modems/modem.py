"""One modem's lifecycle: open, probe, initialise, serve wake-ups, recover.

One task per modem runs `Modem.run()`: a session opens the port and goes
PROBING → INITIALIZING → READY (or NO_SIM / SIM_LOCKED), then serves wake-ups
(`+CMTI`, SIM and registration codes) and periodic health checks until the
port goes away or the modem stops answering; then the port is closed and
reopened after a capped exponential back-off. A port that answers `AT` only
with errors is a modem still starting up: probed again after the back-off.
The first command that gets no answer takes the SIM out of sale
(UNRESPONSIVE, `SimLost`); a health check that is answered brings it back.
A `SimReady` the owner's handler raised on (its store refused the write) is
reported again after a capped back-off while the SIM stays in, as an SMS
the owner refused stays on the SIM for the next sweep; once the owner takes
any modem's SimReady, the pool has every waiting one reported at once.
A modem that stops answering (`hang_after` timeouts in a row) is reset with
`AT+CFUN=1,1` and reopened.

What the modem can do lives in one module per capability, each driven
through the modem's `Session` (session.py: command helpers, hang counter):
sim.py (PIN, ICCID, IMSI, number), messaging.py (storage, indications,
read/sweep/delete), network.py (signal, registration, operator), ussd.py
(requests whose answers come as `+CUSD` codes). What
differs per vendor is in vendors.py. `Modem` decides states and events.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import structlog

from .at import Unsolicited, split_args
from .channel import ATChannel, Reply, open_channel
from .codes import SIM_ABSENT_CODES
from .errors import (
    CmeError,
    CommandError,
    CommandTimeout,
    ModemDisconnected,
    ModemError,
    ModemNotReady,
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
from .messaging import Messaging
from .network import Network, moved
from .pdu import decode_pdu
from .replies import digits_of
from .session import ModemHung, Session
from .settings import ModemSettings
from .sim import SimCard
from .ussd import UssdSession
from .vendors import quirks_for

__all__ = ["HEALTH_LINE", "Backoff", "Modem", "ModemHung", "ModemSettings"]

log = structlog.get_logger("modems.modem")


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


def spread(interval: float, *, first: bool = False) -> float:
    """The wait before a periodic check: a modem's own phase, jittered, so 512 never go in step.

    Modems that come up together would otherwise check together, every
    interval, for ever: 512 times 3 commands in one burst that holds the event
    loop. The first wait is anywhere in [0.5, 1.5) intervals (a phase of its
    own); every later one is ±10 %, so phases never drift back into step.
    """
    return interval * (random.uniform(0.5, 1.5) if first else random.uniform(0.9, 1.1))


# A health check while the SIM is ready: signal, registration and SIM status on one
# V.250 line (the status last, so a modem that ends `+CPIN:` without OK is caught
# by its grace, as alone). `_ONE_LINE_REFUSALS` refusals while each alone works
# and the modem is asked one command at a time.
HEALTH_LINE = "AT+CSQ;+CREG?;+CPIN?"
_ONE_LINE_REFUSALS = 3


class _Wake(enum.Enum):
    CHECK_SIM = "check_sim"
    NETWORK = "network"
    SWEEP = "sweep"
    RESET = "reset"
    REPORT = "report"  # a waiting SimReady is due sooner (`report_soon`): wait anew
    CLOSED = "closed"  # the port closed: `_serve` finds it closed and ends the session


@dataclass(frozen=True, slots=True)
class _CmtiWake:
    """A `+CMTI` indication: a new message stored at `index` (in `storage`, if it said)."""

    storage: str | None
    index: int


@dataclass(slots=True, eq=False)
class _JobWake:
    """Work an owner asks the modem's own task to do (a sweep, a module command)."""

    op: Callable[[], Awaitable[object]]
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


_SIM_HINT_URCS = frozenset({"+CPIN", "^SIMST", "+SIMCARD", "+QUSIM", "RDY", "+CFUN"})
_NETWORK_URCS = frozenset({"+CREG", "+CGREG", "+CEREG", "+C5GREG"})


_CLOSED_STATES = frozenset({ModemState.REMOVED, ModemState.NOT_MODEM})


class Modem:
    """A GSM modem on one serial port. Create, `start()`, and later `stop()`."""

    def __init__(
        self,
        port: str,
        handler: EventHandler,
        settings: ModemSettings,
        *,
        on_report_taken: Callable[[], None] | None = None,
    ) -> None:
        self.port = port
        self.settings = settings
        self._handler = handler
        # Called when the owner took a SimReady: the pool has the others waiting report now.
        self._on_report_taken = on_report_taken
        self.state = ModemState.DISCONNECTED
        self.detail: str | None = None
        self.device = DeviceInfo()
        self.sim: SimIdentity | None = None
        self.network = NetworkInfo(None, None, None)
        self.resets = 0
        self.last_error: str | None = None
        self._session = Session(port, settings)
        self._sim = SimCard(self._session)
        self._messaging = Messaging(self._session)
        self._network = Network(self._session)
        self._ussd = UssdSession(self._session)
        self._seen_at = False
        self._wake: asyncio.Queue[_Wake | _CmtiWake | _JobWake] = asyncio.Queue(settings.wake_queue)
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(settings.reconnect_initial, settings.reconnect_max)
        # The SIM's SimReady the owner has not taken yet: when to report it again.
        self._report_at: float | None = None
        self._report_backoff = Backoff(settings.ready_retry_initial, settings.ready_retry_max)
        self._reports_refused = 0
        # Refusals in a row of the health check's line while each command alone worked:
        # at `_ONE_LINE_REFUSALS`, `session.concatenation` goes off (`_health`).
        self._one_line_refused = 0
        self._log = log.bind(port=port)

    # -- what the owner reads ------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state is ModemState.READY and self.sim is not None

    @property
    def timeouts(self) -> int:
        return self._session.timeouts

    @property
    def storage(self) -> str | None:
        return self._messaging.storage

    @property
    def storage_used(self) -> int | None:
        return self._messaging.storage_used

    @property
    def storage_total(self) -> int | None:
        return self._messaging.storage_total

    @property
    def indications(self) -> str | None:
        """The AT+CNMI setting that took; None = polling."""
        return self._messaging.indications

    @property
    def sms_read(self) -> int:
        return self._messaging.sms_read

    @property
    def ussd(self) -> UssdSession:
        """USSD requests; callable from any task (the channel serialises commands)."""
        return self._ussd

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
    def report_waiting(self) -> bool:
        """A SimReady the owner refused waits for its back-off to be reported again."""
        return self._report_at is not None

    def report_soon(self, within: float = 0.5) -> None:
        """The owner takes reports again (it took another modem's): report the waiting
        SimReady within `within` seconds (jittered: a pool's worth do not come at once)
        instead of at the end of its back-off, up to `ready_retry_max` away."""
        if self._report_at is None:
            return
        soon = asyncio.get_running_loop().time() + random.uniform(0.0, within)
        if soon < self._report_at:
            self._report_at = soon
            self._queue(_Wake.REPORT)

    async def sweep(self, timeout: float) -> None:
        """Read every stored SMS now and wait until each is durable with the owner.

        A SIM bank sweeps a SIM before switching it out, so nothing stays
        behind on a SIM that leaves. Raises `ModemNotReady` without a ready SIM.
        """
        await self._job(lambda: self._messaging.sweep(self._accept), timeout)

    async def command(self, line: str, timeout: float) -> None:
        """Give one command to the module in its own turn (Quectel `AT+QDSIM=<n>`)."""
        await self._job(lambda: self._session.command(line), timeout, need_sim=False)

    async def _job(
        self, op: Callable[[], Awaitable[object]], timeout: float, *, need_sim: bool = True
    ) -> None:
        if need_sim and not self.ready:
            raise ModemNotReady(f"{self.port}: no ready SIM")
        if self._task is None or self.state in _CLOSED_STATES:
            raise ModemNotReady(f"{self.port}: port not open ({self.state.value})")
        job = _JobWake(op)
        try:
            self._wake.put_nowait(job)
        except asyncio.QueueFull:
            raise ModemNotReady(f"{self.port}: busy") from None
        async with asyncio.timeout(timeout):
            await asyncio.shield(job.done)

    async def run(self) -> None:
        while True:
            delay: float
            try:
                await self._session_run()
                delay = self._backoff.next()
            except PortNotModem as exc:
                self._note_error(exc)
                await self._set_state(ModemState.NOT_MODEM, str(exc))
                delay = self.settings.not_modem_retry
            except ModemNotReady as exc:
                self._note_error(exc)
                await self._set_state(ModemState.PROBING, str(exc))
                delay = self._backoff.next()
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

    async def _session_run(self) -> None:
        await self._set_state(ModemState.PROBING)
        channel = await open_channel(
            self.port,
            self._on_urc,
            baudrate=self.settings.baudrate,
            max_line=self.settings.max_line,
        )
        self._session.attach(channel)
        await self._probe()
        await self._set_state(ModemState.INITIALIZING)
        await self._initialize()
        await self._check_sim()
        await self._serve()

    async def _probe(self) -> None:
        """ESC + CR clears a half-typed command (Gammu does this); then AT until OK."""
        channel = self._session.channel
        channel.write_raw(b"\x1b\r")
        await channel.settle(quiet=0.05, limit=0.5)
        answered_error: CommandError | None = None
        for _ in range(self.settings.probe_attempts):
            try:
                await channel.command("AT", timeout=self.settings.probe_timeout)
            except CommandTimeout:
                continue
            except CommandError as exc:
                # A stale final from the flushed input, or a modem still starting
                # up: either way an AT interpreter answered. Ask again.
                answered_error = exc
                continue
            self._seen_at = True
            self._session.answered()
            return
        if answered_error is not None:
            self._seen_at = True
            raise ModemNotReady(f"{self.port}: answers AT with {answered_error.final}")
        if self._seen_at:
            # It answered before: it is a modem that stopped answering.
            self._session.timeouts += 1
            self._session.reset_blind()
            raise ModemHung(f"{self.port}: no answer to AT after a reopen")
        raise PortNotModem(f"{self.port}: no answer to AT")

    async def _initialize(self) -> None:
        session = self._session
        await session.attempt("ATE0")  # some modems ignore it: the reader drops echoes
        if not await session.attempt("AT+CMEE=1"):
            await session.attempt("AT+CMEE=2")
        self.device = DeviceInfo(
            manufacturer=await session.text("AT+CGMI", "+CGMI"),
            model=await session.text("AT+CGMM", "+CGMM"),
            revision=await session.text("AT+CGMR", "+CGMR"),
            imei=digits_of(await session.text("AT+CGSN", "+CGSN")),
        )
        session.quirks = quirks_for(self.device.manufacturer, self.device.model)
        session.concatenation, self._one_line_refused = True, 0  # maybe another device
        for command in session.quirks.init_commands:
            await session.attempt(command)
        self._bind_log()

    # -- SIM ----------------------------------------------------------------------

    async def _check_sim(self, *, verify_iccid: bool = True) -> None:
        """Find out whether a usable SIM is in, and identify it if it is new.

        The periodic health check passes `verify_iccid=False`: while the SIM
        stays READY it is the same SIM (a swap goes through removal, which
        the SIM status shows), so its ICCID is not read again every tick.
        """
        card = self._sim
        status = await card.status()
        if status is None:
            await self._lose_sim("SIM removed")
            await self._set_state(ModemState.NO_SIM, "no SIM")
            return
        if status in ("SIM PIN", "SIM PIN2") and self.settings.pin and not card.pin_failed:
            error = await card.unlock(self.settings.pin)
            if error is not None:
                self._note_error(error)
            status = await card.status()
            if status is None:
                await self._set_state(ModemState.NO_SIM, "no SIM")
                return
        if status != "READY":
            await self._lose_sim(f"SIM locked: {status}")
            detail = "wrong PIN" if card.pin_failed else f"SIM needs {status.removeprefix('SIM ')}"
            await self._set_state(ModemState.SIM_LOCKED, detail)
            return
        if not verify_iccid and self.ready:
            return
        iccid = await card.read_iccid()
        if self.sim is not None and self.sim.iccid == iccid and self.state is ModemState.READY:
            return
        await self._lose_sim("SIM changed")
        await self._messaging.setup()
        self.sim = await card.identify(iccid)
        self._bind_log()
        await self._refresh_network(force_operator=True)
        await self._set_state(ModemState.READY)
        self._backoff.reset()
        await self._report_ready()
        await self._messaging.sweep(self._accept)

    async def _report_ready(self) -> None:
        """Tell the owner the SIM is ready; if it cannot take it now, again after a back-off."""
        if self.sim is None or self.state is not ModemState.READY:
            self._forget_report()  # nothing to report (`_lose_sim` forgot it already)
            return
        try:
            await self._handler(SimReady(self.port, self.device, self.sim, self.network))
        except Exception as exc:  # noqa: BLE001 - whatever failed, the SIM is reported again
            delay = self._report_backoff.next()
            self._report_at = asyncio.get_running_loop().time() + delay
            # One line per episode (an owner's store that is down refuses every report).
            level = self._log.debug if self._reports_refused else self._log.error
            level("SIM ready not taken; reporting it again", error=repr(exc), retry_in=delay)
            self._reports_refused += 1
            return
        if self._reports_refused:
            self._log.info("SIM ready taken again", refused_reports=self._reports_refused)
        self._forget_report()
        if self._on_report_taken is not None:
            self._on_report_taken()

    def _forget_report(self) -> None:
        self._report_at = None
        self._report_backoff.reset()
        self._reports_refused = 0

    async def _lose_sim(self, reason: str) -> None:
        self._forget_report()  # a SimReady not taken yet: the SIM it was for is gone
        if self.sim is None:
            return
        sim, self.sim = self.sim, None
        self._log.info("SIM lost", iccid=sim.iccid, reason=reason)
        self._bind_log()
        await self._emit(SimLost(self.port, sim.iccid, reason))

    # -- serving ------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        next_health = loop.time() + spread(self.settings.health_interval, first=True)
        next_sweep = loop.time() + spread(self.settings.sweep_interval, first=True)
        channel = self._session.channel
        # One watcher for the whole session, not two futures and a wait per wake-up:
        # at 512 modems those were a good part of the idle daemon's loop.
        closed = asyncio.ensure_future(channel.wait_closed())
        closed.add_done_callback(self._on_closed)
        try:
            await self._serve_until_closed(channel, next_health, next_sweep)
        finally:
            closed.cancel()

    async def _serve_until_closed(
        self, channel: ATChannel, next_health: float, next_sweep: float
    ) -> None:
        loop = asyncio.get_running_loop()
        messaging = self._messaging
        while True:
            now = loop.time()
            deadline = min(next_health, next_sweep) if self.ready else next_health
            if self._report_at is not None:
                deadline = min(deadline, self._report_at)
            wake = await self._next_wake(max(0.0, deadline - now))
            if not channel.is_open:
                raise ModemDisconnected(f"{self.port}: {channel.lost_reason or 'port lost'}")
            try:
                await self._on_wake(wake)
                now = loop.time()
                if self._report_at is not None and now >= self._report_at:
                    await self._report_ready()
                if now >= next_health:
                    next_health = now + spread(self.settings.health_interval)
                    await self._health()
                polling = not messaging.indications
                if self.ready and (now >= next_sweep or messaging.sweep_due or polling):
                    next_sweep = now + spread(self.settings.sweep_interval)
                    await messaging.sweep(self._accept)
            except CommandTimeout as exc:
                # Below the hang threshold, so no reset yet; but a modem that does
                # not answer cannot deliver an SMS: out of sale at once, back on
                # sale when a health check finds it answering again.
                self._note_error(exc)
                await self._lose_sim("modem not answering")
                await self._set_state(ModemState.UNRESPONSIVE, str(exc))
            except CmeError as exc:
                if exc.code in SIM_ABSENT_CODES:
                    await self._check_sim()
                else:
                    self._note_error(exc)
            except (CommandError, ParseError) as exc:
                self._note_error(exc)

    async def _on_wake(self, wake: _Wake | _CmtiWake | _JobWake | None) -> None:
        """What a wake-up asks for; SMS and network work only while a SIM is ready."""
        messaging = self._messaging
        if isinstance(wake, _JobWake):
            try:
                await wake.op()
            except BaseException as exc:
                if not wake.done.done():
                    wake.done.set_exception(exc)
                    wake.done.exception()  # the owner may have given up waiting
                raise
            if not wake.done.done():
                wake.done.set_result(None)
        elif isinstance(wake, _CmtiWake):
            if not self.ready:
                return
            if wake.storage is not None and wake.storage != messaging.storage:
                self._log.warning("+CMTI for another storage", storage=wake.storage)
                await messaging.sweep(self._accept)
            else:
                await messaging.read(wake.index, self._accept)
        elif wake is _Wake.RESET:
            self._session.reset_blind()
            raise ModemHung(f"{self.port}: reset requested")
        elif wake is _Wake.CHECK_SIM:
            await self._check_sim()
        elif wake is _Wake.NETWORK and self.ready:
            await self._refresh_network()
        elif wake is _Wake.SWEEP and self.ready:
            await messaging.sweep(self._accept)

    async def _next_wake(self, timeout: float) -> _Wake | _CmtiWake | _JobWake | None:
        """The next wake-up (the port closing is one: `_Wake.CLOSED`), or None at `timeout`."""
        if not self._wake.empty():
            return self._wake.get_nowait()
        try:
            async with asyncio.timeout(timeout):
                return await self._wake.get()
        except TimeoutError:
            return None  # a wake-up that came as it ran out stays queued (Queue.get's contract)

    async def _health(self) -> None:
        """SIM status, signal and registration, on one command line while the SIM is
        ready: one exchange instead of three (at 512 modems, every 10 s, the health
        checks were most of the idle daemon's CPU). Anything but a ready SIM in the
        line's answer falls back to one command at a time, which says what it is."""
        tried = self.ready and self._session.concatenation
        if tried:
            try:
                reply = await self._session.command(HEALTH_LINE, info_grace=self._sim.cpin_grace)
            except CommandError:
                pass  # refused, or an error from one part: one at a time says which
            else:
                if self._sim.status_from(reply) == "READY":
                    self._one_line_refused = 0
                    await self._refresh_network(reply)
                    return
        await self._check_sim(verify_iccid=False)
        if self.ready:
            await self._refresh_network()
            if tried:
                self._note_one_line_refused()

    def _note_one_line_refused(self) -> None:
        """The line did not show a ready SIM, each command alone did: a modem that
        does not take concatenated commands (or drops parts) is asked one at a time."""
        self._one_line_refused += 1
        if self._one_line_refused >= _ONE_LINE_REFUSALS:
            self._session.concatenation = False  # the sweep's line goes too (messaging.py)
            self._log.info("health check on one line refused; one command at a time")

    async def _refresh_network(
        self, reply: Reply | None = None, *, force_operator: bool = False
    ) -> None:
        """Read the network (from `reply` when a health check's line answered it)."""
        previous = self.network
        if reply is not None:
            self.network = await self._network.read_from(previous, reply)
        else:
            self.network = await self._network.read(previous, force_operator=force_operator)
        if self.sim is None or self.state is not ModemState.READY:
            return
        if moved(previous, self.network):
            await self._emit(NetworkChanged(self.port, self.sim.iccid, self.network))

    # -- SMS ----------------------------------------------------------------------

    async def _accept(self, index: int, pdu: str) -> bool:
        """Hand one stored message to the owner; True once it is durable there."""
        sim = self.sim
        storage = self._messaging.storage
        if sim is None or storage is None:
            return False
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
        await self._handler(event)
        return True

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
                self._queue(_CmtiWake(fields[0] or None, index))
        elif name in _SIM_HINT_URCS:
            self._queue(_Wake.CHECK_SIM)
        elif name in _NETWORK_URCS:
            self._queue(_Wake.NETWORK)
        elif name == "+CUSD":
            self._ussd.on_urc(urc.args)
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

    def _on_closed(self, watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled():
            self._queue(_Wake.CLOSED)

    def _queue(self, wake: _Wake | _CmtiWake | _JobWake) -> None:
        try:
            self._wake.put_nowait(wake)
        except asyncio.QueueFull:
            self._messaging.sweep_due = True  # a flood: a sweep reads whatever it announced

    # -- helpers ------------------------------------------------------------------------

    def _close_channel(self) -> None:
        self._ussd.detach()
        self._session.detach()
        while not self._wake.empty():
            wake = self._wake.get_nowait()
            if isinstance(wake, _JobWake) and not wake.done.done():
                wake.done.set_exception(ModemDisconnected(f"{self.port}: port closed"))
                wake.done.exception()

    def _note_error(self, exc: Exception) -> None:
        self.last_error = str(exc)
        self._log.debug("modem error", error=str(exc))

    def _bind_log(self) -> None:
        """Log context: the port, the model once known, the ICCID while a SIM is in."""
        context: dict[str, str | None] = {"port": self.port, "model": self.device.model}
        if self.sim is not None:
            context["iccid"] = self.sim.iccid
        self._log = log.bind(**context)
        self._messaging.log = self._log

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
            self._log.error("event handler failed", kind=type(event).__name__, error=repr(exc))
