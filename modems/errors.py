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


# +CME error numbers from 3GPP TS 27.007 §9.2 that decide what the modem layer does.
CME_OPERATION_NOT_ALLOWED = 3
CME_SIM_NOT_INSERTED = 10
CME_SIM_PIN_REQUIRED = 11
CME_SIM_PUK_REQUIRED = 12
CME_SIM_FAILURE = 13
CME_SIM_BUSY = 14
CME_SIM_WRONG = 15
CME_INCORRECT_PASSWORD = 16
CME_SIM_NOT_READY = 515  # vendor: "device busy" / not ready (Wavecom after AT+CFUN=1)

SIM_ABSENT_CODES = frozenset({CME_SIM_NOT_INSERTED, CME_SIM_FAILURE, CME_SIM_WRONG})
RETRY_CODES = frozenset({CME_SIM_BUSY, CME_SIM_NOT_READY})
