"""Names for the numbers modems send: one `IntEnum` per wire vocabulary.

The modem layer compares these names, never bare numbers; the emulator
answers with them. Each is an `IntEnum` so a parsed `int` compares equal to
its member and an unknown number (a vendor's own code) still fits in an `int`.
"""

from __future__ import annotations

import enum

__all__ = [
    "REGISTERED",
    "REGISTRATION_NAMES",
    "RETRY_CODES",
    "SIM_ABSENT_CODES",
    "CmeCode",
    "CmsCode",
    "RegStatus",
    "SmsStatus",
    "UssdStatus",
]


class CmeCode(enum.IntEnum):
    """`+CME ERROR: n`, 3GPP TS 27.007 §9.2 (the ones this layer meets), plus vendors'."""

    PHONE_FAILURE = 0
    OPERATION_NOT_ALLOWED = 3
    OPERATION_NOT_SUPPORTED = 4
    SIM_NOT_INSERTED = 10
    SIM_PIN_REQUIRED = 11
    SIM_PUK_REQUIRED = 12
    SIM_FAILURE = 13
    SIM_BUSY = 14
    SIM_WRONG = 15
    INCORRECT_PASSWORD = 16
    MEMORY_FULL = 20
    INVALID_INDEX = 21
    NOT_FOUND = 22
    NO_NETWORK_SERVICE = 30
    NETWORK_TIMEOUT = 31
    UNKNOWN = 100
    DEVICE_BUSY = 515  # vendor: "device busy" / not ready (Wavecom after AT+CFUN=1)


class CmsCode(enum.IntEnum):
    """`+CMS ERROR: n`, 3GPP TS 27.005 §3.2.5 (the ones this layer meets)."""

    OPERATION_NOT_ALLOWED = 302
    OPERATION_NOT_SUPPORTED = 303
    SIM_NOT_INSERTED = 310
    INVALID_MEMORY_INDEX = 321
    MEMORY_FULL = 322


class RegStatus(enum.IntEnum):
    """`+CREG`/`+CGREG` stat, 3GPP TS 27.007 §7.2."""

    NOT_SEARCHING = 0
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    UNKNOWN = 4
    ROAMING = 5
    HOME_SMS_ONLY = 6
    ROAMING_SMS_ONLY = 7
    EMERGENCY_ONLY = 8
    HOME_CSFB_NOT_PREFERRED = 9
    ROAMING_CSFB_NOT_PREFERRED = 10


class SmsStatus(enum.IntEnum):
    """A stored message's `<stat>` in PDU mode (`AT+CMGL=n`, `+CMGL`, `+CMGR`), TS 27.005 §3.1."""

    RECEIVED_UNREAD = 0
    RECEIVED_READ = 1
    STORED_UNSENT = 2
    STORED_SENT = 3
    ALL = 4  # only as the `AT+CMGL` filter


class UssdStatus(enum.IntEnum):
    """`+CUSD: <m>`, 3GPP TS 27.007 §7.15: how the network left the USSD dialogue."""

    DONE = 0  # no further action required
    MENU = 1  # the network waits for a reply (`AT+CUSD=1,"…"`) or `AT+CUSD=2`
    ENDED = 2  # terminated by the network
    OTHER_CLIENT = 3  # another local client has responded
    NOT_SUPPORTED = 4  # operation not supported
    TIMED_OUT = 5  # network time out


# The SIM is not there (or not usable): the modem is NO_SIM.
SIM_ABSENT_CODES = frozenset({CmeCode.SIM_NOT_INSERTED, CmeCode.SIM_FAILURE, CmeCode.SIM_WRONG})
# Busy for a moment after power-up or CFUN=1: ask again after a short wait.
RETRY_CODES = frozenset({CmeCode.SIM_BUSY, CmeCode.DEVICE_BUSY})
# Registered to a network that can deliver SMS to this SIM: what the inventory sells.
REGISTERED = frozenset({RegStatus.HOME, RegStatus.ROAMING})
# How operators read the stat values (status page, `supplier scan`).
REGISTRATION_NAMES: dict[int, str] = {
    RegStatus.NOT_SEARCHING: "not searching",
    RegStatus.HOME: "home",
    RegStatus.SEARCHING: "searching",
    RegStatus.DENIED: "denied",
    RegStatus.UNKNOWN: "unknown",
    RegStatus.ROAMING: "roaming",
}
