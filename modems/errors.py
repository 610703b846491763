"""One exception root for the modem layer."""

from __future__ import annotations


class ModemError(Exception):
    """Root of every error the modem layer raises on purpose."""


class ModemDisconnected(ModemError):
    """The serial port went away; every pending command fails with this."""


class CommandTimeout(ModemError):
    """A command got no final result within its timeout."""


class CommandError(ModemError):
    """A command ended in an error final result (ERROR, +CME, +CMS, vendor)."""

    def __init__(self, command: str, final: str, code: int | None = None) -> None:
        super().__init__(f"{command!r} failed: {final}")
        self.command = command
        self.final = final
        self.code = code


class CmeError(CommandError):
    """`+CME ERROR: n` (equipment / SIM error)."""


class CmsError(CommandError):
    """`+CMS ERROR: n` (message service error)."""


class CommandNotSupported(CommandError):
    """Plain `ERROR` or a vendor's `COMMAND NOT SUPPORT` for a command."""


class ParseError(ModemError):
    """An AT reply did not have the shape the command promises."""


class PduError(ModemError):
    """An SMS PDU could not be decoded."""


class PortNotModem(ModemError):
    """The port opened but never answered `AT` (e.g. a dongle's diagnostics tty)."""


class ModemNotReady(ModemError):
    """The port answers `AT`, but only with errors: a modem still starting up.

    Any final result proves an AT interpreter (Qualcomm-based modems answer
    `+CME ERROR: 14` or `ERROR` for seconds after power-up): probe again after
    the normal back-off, never declare it `not_modem`.
    """
