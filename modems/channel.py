"""The AT channel: one serial port, one command in flight, unsolicited codes aside.

`data_received` only feeds the pure `ATReader` and dispatches its events:
final results and information lines go to the pending command, unsolicited
codes to the `on_urc` callback (also when they arrive in the middle of a
reply). The waiter is registered before the command is written and removed
in `finally`; every wait is under `asyncio.timeout`; when the port goes away
the pending command fails with `ModemDisconnected`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import serial
import serial_asyncio
import structlog

from .at import (
    ATReader,
    Echo,
    Final,
    FinalKind,
    Info,
    Overflow,
    Prompt,
    Unsolicited,
    command_prefixes,
    line_name,
)
from .errors import (
    CmeError,
    CmsError,
    CommandError,
    CommandNotSupported,
    CommandTimeout,
    ModemDisconnected,
)

__all__ = ["NO_FINAL", "ATChannel", "Reply", "open_channel"]

log = structlog.get_logger("modems.channel")

CTRL_Z = b"\x1a"
NO_FINAL = "(no final result)"  # the text of the OK made up after an info_grace
ESC = b"\x1b"


@dataclass(frozen=True, slots=True)
class Reply:
    """A command's information lines and its final result."""

    command: str
    lines: tuple[str, ...]
    final: Final

    def values(self, prefix: str) -> list[str]:
        """What follows `prefix:` on each line that has it (`+CSQ` → [`21,99`])."""
        out = []
        for line in self.lines:
            named = line_name(line)
            if named is not None and named[0] == prefix.upper():
                out.append(named[1])
        return out

    def first(self, prefix: str) -> str | None:
        values = self.values(prefix)
        return values[0] if values else None

    def bare(self) -> list[str]:
        """Lines without a `+NAME:` prefix (IMEI, IMSI, PDUs)."""
        return [line for line in self.lines if line_name(line) is None]


@dataclass(slots=True)
class _Pending:
    command: str
    future: asyncio.Future[Final]
    prefix: str | None
    pdu: bytes | None
    info_grace: float | None
    lines: list[str] = field(default_factory=list)
    grace_handle: asyncio.TimerHandle | None = None


class ATChannel(asyncio.Protocol):
    """asyncio protocol for one modem port."""

    def __init__(
        self,
        name: str,
        on_urc: Callable[[Unsolicited], None],
        *,
        max_line: int = 8192,
    ) -> None:
        self.name = name
        self._on_urc = on_urc
        self._reader = ATReader(max_line=max_line)
        self._transport: asyncio.Transport | None = None
        self._pending: _Pending | None = None
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._lost_reason: str | None = None
        self._last_data = 0.0
        self._desynced = False  # a command timed out: its reply may still be on the way
        self.bytes_in = 0
        self.junk_lines = 0

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._last_data = asyncio.get_running_loop().time()
        for event in self._reader.feed(data):
            self._dispatch(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost_reason = str(exc) if exc else "closed"
        self._transport = None
        self._closed.set()
        pending = self._pending
        if pending is not None and not pending.future.done():
            pending.future.set_exception(
                ModemDisconnected(f"{self.name}: port lost during {pending.command!r}")
            )

    # -- dispatch -----------------------------------------------------------------

    def _dispatch(self, event: object) -> None:
        pending = self._pending
        if isinstance(event, Unsolicited):
            if not event.name:
                self.junk_lines += 1
            self._on_urc(event)
        elif isinstance(event, Final):
            if pending is not None and not pending.future.done():
                pending.future.set_result(event)
            else:
                log.debug("stray final result", port=self.name, line=event.text)
        elif isinstance(event, Info):
            if pending is not None and not pending.future.done():
                pending.lines.append(event.text)
                self._maybe_grace(pending, event.text)
        elif isinstance(event, Prompt):
            if pending is not None and pending.pdu is not None and self._transport is not None:
                self._transport.write(pending.pdu + CTRL_Z)
        elif isinstance(event, Overflow):
            self.junk_lines += 1
            log.warning("overlong line dropped", port=self.name, size=event.dropped)
        elif isinstance(event, Echo):
            pass  # the modem ignored ATE0; the reader already matched it to the command

    def _maybe_grace(self, pending: _Pending, line: str) -> None:
        """Old Wavecom answers `AT+CPIN?` with `+CPIN: READY` and no final `OK`.

        For commands that allow it, the information line completes the
        command if no final result follows within `info_grace` seconds (on a
        concatenated line, the line answering its last part).
        """
        if pending.info_grace is None or pending.grace_handle is not None:
            return
        named = line_name(line)
        if named is None or named[0] != pending.prefix:
            return

        def complete() -> None:
            if not pending.future.done():
                pending.future.set_result(Final(FinalKind.OK, NO_FINAL))

        loop = asyncio.get_running_loop()
        pending.grace_handle = loop.call_later(pending.info_grace, complete)

    # -- commands -----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._closed.is_set()

    @property
    def lost_reason(self) -> str | None:
        return self._lost_reason

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def write_raw(self, data: bytes) -> None:
        if self._transport is None:
            raise ModemDisconnected(f"{self.name}: port is closed")
        self._transport.write(data)

    async def settle(self, quiet: float = 0.1, limit: float = 1.0) -> None:
        """Wait until the modem has been silent for `quiet` seconds (at most `limit`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        self._last_data = loop.time()
        while True:
            now = loop.time()
            remaining = self._last_data + quiet - now
            if remaining <= 0 or now >= deadline:
                return
            await asyncio.sleep(min(remaining, deadline - now))

    async def command(
        self,
        command: str,
        *,
        timeout: float = 5.0,
        prefix: str | None = None,
        pdu: str | None = None,
        info_grace: float | None = None,
    ) -> Reply:
        """Send one command and return its reply; error finals raise `CommandError`s."""
        async with self._lock:
            if self._transport is None or self._closed.is_set():
                raise ModemDisconnected(f"{self.name}: port is closed")
            if self._desynced:
                # A late answer to the command that timed out would be taken for
                # this one's: let the line go quiet first (stray lines are dropped).
                await self.settle(quiet=0.2, limit=2.0)
                self._desynced = False
            loop = asyncio.get_running_loop()
            pending = _Pending(
                command=command,
                future=loop.create_future(),
                prefix=None,
                pdu=pdu.encode("ascii") if pdu is not None else None,
                info_grace=info_grace,
            )
            self._reader.begin(command, prefix)
            if prefix:
                pending.prefix = prefix.upper()
            else:  # a concatenated line's grace waits on its last part's answer
                prefixes = command_prefixes(command)
                pending.prefix = prefixes[-1] if prefixes else None
            self._pending = pending
            try:
                self._transport.write(command.encode("ascii") + b"\r")
                async with asyncio.timeout(timeout):
                    final = await pending.future
            except TimeoutError:
                self._desynced = True
                raise CommandTimeout(
                    f"{self.name}: no answer to {command!r} in {timeout}s"
                ) from None
            finally:
                self._pending = None
                self._reader.end()
                if pending.grace_handle is not None:
                    pending.grace_handle.cancel()
            reply = Reply(command, tuple(pending.lines), final)
        if not final.ok:
            raise _error_for(command, final)
        return reply

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _error_for(command: str, final: Final) -> CommandError:
    if final.kind is FinalKind.CME_ERROR:
        return CmeError(command, final.text, final.code)
    if final.kind is FinalKind.CMS_ERROR:
        return CmsError(command, final.text, final.code)
    if final.kind in (FinalKind.ERROR, FinalKind.NOT_SUPPORTED, FinalKind.TOO_MANY_PARAMETERS):
        return CommandNotSupported(command, final.text)
    return CommandError(command, final.text)


class _SerialTransport(serial_asyncio.SerialTransport):  # type: ignore[misc]
    """pyserial-asyncio's transport, reading the descriptor directly.

    pyserial's `Serial.read()` calls `select()`, which raises for descriptors
    numbered 1024 and up — and a host with a few hundred ports (5 descriptors
    each) has those. The event loop (epoll) has already said the descriptor
    is readable, so one `os.read` is all that is needed.

    A write goes out at once when nothing is waiting to be written (as
    asyncio's own socket transports do): pyserial-asyncio always waits for
    the loop to say the port is writable, which costs two epoll_ctl calls
    and a loop iteration per AT command; at 512 modems that was the largest
    part of the idle CPU.
    """

    def write(self, data: bytes) -> None:
        if self._closing or self.get_write_buffer_size() or not data:
            super().write(data)
            return
        try:
            n = os.write(self._serial.fd, data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._fatal_error(exc, "Fatal write error on serial transport")
            return
        if n < len(data):
            super().write(data[n:])  # the rest when the port is writable

    def _read_ready(self) -> None:
        try:
            data = os.read(self._serial.fd, self._max_read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(exc=serial.SerialException(f"read failed: {exc}"))
            return
        if not data:
            self._close(exc=serial.SerialException("device disconnected"))
            return
        self._protocol.data_received(data)


async def open_channel(
    path: str,
    on_urc: Callable[[Unsolicited], None],
    *,
    baudrate: int = 115200,
    max_line: int = 8192,
) -> ATChannel:
    """Open `path` as a serial port (no flow control: ptys and most dongles have none)."""
    loop = asyncio.get_running_loop()
    channel = ATChannel(path, on_urc, max_line=max_line)
    try:
        port = serial.serial_for_url(
            path,
            baudrate=baudrate,
            rtscts=False,
            dsrdtr=False,
            xonxoff=False,
            exclusive=True,
        )
    except (serial.SerialException, OSError, ValueError) as exc:
        raise ModemDisconnected(f"{path}: cannot open: {exc}") from None
    transport = _SerialTransport(loop, channel, port)
    # The transport calls connection_made on the next loop turn; the channel
    # is usable as soon as it is returned.
    channel.connection_made(transport)
    return channel
