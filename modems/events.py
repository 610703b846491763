"""What the modem layer tells its owner. Frozen values; no behaviour."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .codes import REGISTERED, REGISTRATION_NAMES
from .pdu import DecodedPdu

__all__ = [
    "REGISTRATION_NAMES",
    "DeviceInfo",
    "EventHandler",
    "ModemState",
    "ModemStateChanged",
    "NetworkChanged",
    "NetworkInfo",
    "PoolEvent",
    "SimIdentity",
    "SimLost",
    "SimReady",
    "SmsReceived",
]


class ModemState(enum.Enum):
    DISCONNECTED = "disconnected"  # port closed; reopened after a back-off
    PROBING = "probing"  # port open, checking that it answers AT
    NOT_MODEM = "not_modem"  # never answered AT (a dongle's non-AT tty); re-probed later
    INITIALIZING = "initializing"  # setting echo, errors, PDU mode, storage, indications
    NO_SIM = "no_sim"  # no SIM, or the SIM failed (CME 10/13/15)
    SIM_LOCKED = "sim_locked"  # PIN/PUK needed and no (right) PIN configured
    READY = "ready"  # SIM identified, SMS indications on: this modem can earn
    UNRESPONSIVE = "unresponsive"  # a command got no answer: out of sale until it answers
    RESETTING = "resetting"  # stopped answering; being reset and reopened
    REMOVED = "removed"  # the port is gone from the host (unplugged)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    manufacturer: str | None = None
    model: str | None = None
    revision: str | None = None
    imei: str | None = None


@dataclass(frozen=True, slots=True)
class SimIdentity:
    iccid: str
    imsi: str | None
    number: str | None  # digits with country code, no "+"; None when the SIM does not say
    home_mcc: str | None
    home_mnc: str | None


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    registration: int | None  # 3GPP TS 27.007 stat: 1 home, 5 roaming
    operator: str | None  # MCC+MNC of the network in use
    rssi: int | None  # 0-31, 99 unknown

    @property
    def registered(self) -> bool:
        return self.registration in REGISTERED


@dataclass(frozen=True, slots=True)
class ModemStateChanged:
    port: str
    state: ModemState
    previous: ModemState
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class SimReady:
    port: str
    device: DeviceInfo
    sim: SimIdentity
    network: NetworkInfo


@dataclass(frozen=True, slots=True)
class SimLost:
    port: str
    iccid: str
    reason: str


@dataclass(frozen=True, slots=True)
class NetworkChanged:
    port: str
    iccid: str
    network: NetworkInfo


@dataclass(frozen=True, slots=True)
class SmsReceived:
    """One stored message read from a SIM; the owner makes it durable, then it is deleted.

    `message` is None when the PDU could not be decoded (`error` says why):
    the raw PDU is still handed over, so nothing is lost.
    """

    port: str
    iccid: str
    storage: str
    index: int
    pdu: str
    message: DecodedPdu | None
    error: str | None
    received_at: float  # time.time() when read from the modem


PoolEvent = ModemStateChanged | SimReady | SimLost | NetworkChanged | SmsReceived
EventHandler = Callable[[PoolEvent], Awaitable[None]]
