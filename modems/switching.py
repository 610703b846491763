"""SIM slot switching: which SIM of a bank a modem module holds.

A switch mechanism is one small interface, `SlotSwitch.switch(module,
slot)`, so a gateway's HTTP "switch" can be added beside these two:

- `PoolBoardSwitch`: a SIM-bank pool board's control serial port. The
  command is a template, `AT+SWIT{module:02d}-{slot:04d}` by default (module
  01-99, slot 0001-9999, both from 1). Some boards answer `OK`, some answer
  nothing at all: silence is not a failure. An error final is; so is a
  control port that cannot be opened (unplugged), which is reopened on the
  next switch.
- `ModuleSimSwitch`: a module that holds its SIMs itself and switches with a
  module command (Quectel `AT+QDSIM=<n>`, n from 0), sent through the
  module's own session (`Modem.command`).

Whether a switch took is not decided here: only the module reporting a
different ICCID afterwards confirms it (the caller checks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from .at import Unsolicited
from .channel import ATChannel, open_channel
from .errors import CommandError, CommandTimeout, ModemDisconnected, ModemError

__all__ = [
    "DEFAULT_SWITCH_TEMPLATE",
    "ModuleSimSwitch",
    "PoolBoardSwitch",
    "SlotSwitch",
    "SwitchError",
    "SwitchResult",
    "render_switch",
]

log = structlog.get_logger("modems.switching")

DEFAULT_SWITCH_TEMPLATE = "AT+SWIT{module:02d}-{slot:04d}"


class SwitchError(ModemError):
    """The switch command could not be given (port gone, error answer)."""


class SwitchResult:
    """How the board answered: `OK`, or nothing (many boards stay silent)."""

    ANSWERED = "answered"
    SILENT = "silent"


def render_switch(template: str, module: int, slot: int) -> str:
    """The board's command for (module, slot); both counted from 1."""
    if not 1 <= module <= 99 or not 1 <= slot <= 9999:
        raise ValueError(f"module {module} / slot {slot} out of range (1-99 / 1-9999)")
    return template.format(module=module, slot=slot)


class SlotSwitch(Protocol):
    """Connects `slot`'s SIM to `module`; raises `SwitchError` if it cannot."""

    template: str  # the command's template; a new one applies from the next switch

    async def switch(self, module: int, slot: int) -> str: ...

    async def close(self) -> None: ...


class PoolBoardSwitch:
    """A pool board's control port: one command in flight, opened on demand."""

    def __init__(
        self,
        port: str,
        template: str = DEFAULT_SWITCH_TEMPLATE,
        *,
        answer_timeout: float = 2.0,
        baudrate: int = 115200,
    ) -> None:
        self.port = port
        self.template = template
        self.answer_timeout = answer_timeout
        self.baudrate = baudrate
        self._channel: ATChannel | None = None
        self._lock = asyncio.Lock()
        self._log = log.bind(port=port)

    def _on_urc(self, urc: Unsolicited) -> None:
        self._log.debug("control port line", line=urc.text[:80])

    async def _open(self) -> ATChannel:
        channel = self._channel
        if channel is not None and channel.is_open:
            return channel
        self._channel = None
        try:
            channel = await open_channel(self.port, self._on_urc, baudrate=self.baudrate)
        except ModemDisconnected as exc:
            raise SwitchError(f"control port {self.port}: {exc}") from None
        self._channel = channel
        return channel

    async def switch(self, module: int, slot: int) -> str:
        command = render_switch(self.template, module, slot)
        async with self._lock:
            channel = await self._open()
            try:
                await channel.command(command, timeout=self.answer_timeout)
            except CommandTimeout:
                # Boards that never answer: the switch went out all the same.
                self._log.debug("switch not answered (normal for some boards)", command=command)
                return SwitchResult.SILENT
            except CommandError as exc:
                raise SwitchError(f"{command}: board answered {exc.final}") from None
            except ModemDisconnected as exc:
                self._close()
                raise SwitchError(f"control port {self.port}: {exc}") from None
        return SwitchResult.ANSWERED

    def _close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    async def close(self) -> None:
        async with self._lock:
            self._close()


ModuleCommand = Callable[[int, str], Awaitable[None]]


class ModuleSimSwitch:
    """A module with its own SIM holders (Quectel `AT+QDSIM=<n>`, n counted from 0).

    `send(module, command)` gives the command to that module's modem (the
    daemon passes `Modem.command` of the module's port).
    """

    def __init__(self, send: ModuleCommand, template: str = "AT+QDSIM={index}") -> None:
        self._send = send
        self.template = template

    async def switch(self, module: int, slot: int) -> str:
        command = self.template.format(index=slot - 1, slot=slot, module=module)
        try:
            await self._send(module, command)
        except CommandTimeout:
            return SwitchResult.SILENT
        except ModemError as exc:
            raise SwitchError(f"{command}: {exc}") from None
        return SwitchResult.ANSWERED

    async def close(self) -> None:
        return None
