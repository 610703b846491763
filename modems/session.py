"""The command helpers every capability uses, and the hang counter.

One `Session` per modem, alive across reopens: `attach()` gives it the
channel of the port just opened, `detach()` drops it. Every command a
capability sends goes through `command()`, which counts timeouts; after
`hang_after` in a row the modem is reset blind and `ModemHung` is raised.
"""

from __future__ import annotations

import asyncio

from .channel import ATChannel, Reply
from .codes import RETRY_CODES
from .errors import CmeError, CommandError, CommandTimeout, ModemDisconnected, ModemError
from .settings import ModemSettings
from .vendors import GENERIC, VendorQuirks

__all__ = ["ModemHung", "Session"]


class ModemHung(ModemError):
    """The modem stopped answering: `hang_after` command timeouts in a row."""


class Session:
    """Commands to one modem: timeouts, busy retries, optional settings, text answers."""

    def __init__(self, port: str, settings: ModemSettings) -> None:
        self.port = port
        self.settings = settings
        self.quirks: VendorQuirks = GENERIC  # set once AT+CGMI/AT+CGMM have answered
        # Several commands on one line (V.250 `AT+CSQ;+CREG?`) for the periodic work;
        # off once the modem is seen to refuse such lines (Modem._health decides).
        self.concatenation = True
        self.timeouts = 0
        self._timeouts_in_row = 0
        self._channel: ATChannel | None = None

    def attach(self, channel: ATChannel) -> None:
        self._channel = channel

    def detach(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @property
    def channel(self) -> ATChannel:
        if self._channel is None or not self._channel.is_open:
            raise ModemDisconnected(f"{self.port}: port is not open")
        return self._channel

    def answered(self) -> None:
        """The modem answered something: it is not hung."""
        self._timeouts_in_row = 0

    def timed_out(self) -> None:
        """Count one command that got no answer."""
        self.timeouts += 1
        self._timeouts_in_row += 1

    async def command(
        self, command: str, *, timeout: float | None = None, info_grace: float | None = None
    ) -> Reply:
        channel = self.channel
        try:
            reply = await channel.command(
                command,
                timeout=timeout or self.settings.command_timeout,
                info_grace=info_grace,
            )
        except CommandTimeout:
            self.timed_out()
            if self._timeouts_in_row >= self.settings.hang_after:
                self.reset_blind()
                raise ModemHung(
                    f"{self.port}: {self._timeouts_in_row} commands in a row got no answer"
                ) from None
            raise
        except CommandError:
            self.answered()
            raise
        self.answered()
        return reply

    async def retrying(self, command: str, *, info_grace: float | None = None) -> Reply:
        """Retry `SIM busy` (CME 14) and `device busy` (515, Wavecom after CFUN=1), capped."""
        delay = self.settings.busy_delay
        for attempt in range(self.settings.busy_retries + 1):
            try:
                return await self.command(command, info_grace=info_grace)
            except CmeError as exc:
                if exc.code not in RETRY_CODES or attempt == self.settings.busy_retries:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def attempt(self, command: str) -> bool:
        """A command whose failure is acceptable (an optional vendor setting)."""
        try:
            await self.command(command)
        except CommandError:
            return False
        return True

    async def text(self, command: str, prefix: str) -> str | None:
        """The text of a one-line answer (`+CGMI: x` or a bare `x`), None on an error.

        Busy answers are retried: a modem just powered up may answer its
        identity commands `+CME ERROR: 14` for a while.
        """
        try:
            reply = await self.retrying(command)
        except CommandError:
            return None
        value = reply.first(prefix) or next(iter(reply.bare()), None)
        return value.strip().strip('"').strip() or None if value else None

    def reset_blind(self) -> None:
        """`AT+CFUN=1,1` without waiting: the modem reboots, the port is reopened after."""
        channel = self._channel
        if channel is not None and channel.is_open:
            channel.write_raw(b"AT+CFUN=1,1\r")
