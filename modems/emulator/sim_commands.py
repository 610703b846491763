"""Emulated SIM commands: PIN, IMSI, ICCID (each vendor's form), own number."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from modems.at import split_args
from modems.bcd import swap_nibbles
from modems.codes import CmeCode

if TYPE_CHECKING:
    from .interpreter import EmulatedModem

__all__ = ["COMMANDS"]


def cpin(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str] | None:
    if arg == "?":
        if modem.sim is None:
            return [], modem.cme(CmeCode.SIM_NOT_INSERTED)
        if modem.busy_left > 0:
            modem.busy_left -= 1
            return [], modem.cme(CmeCode.DEVICE_BUSY)
        if modem.pin_ok:
            state = "READY"
        elif modem.pin_tries <= 0:
            state = "SIM PUK"
        else:
            state = "SIM PIN"
        # Old Wavecom: no final OK after the answer ("" ends the line there).
        return [f"+CPIN: {state}"], "" if modem.profile.cpin_without_ok else "OK"
    if arg.startswith("="):
        if modem.sim is None:
            return [], modem.cme(CmeCode.SIM_NOT_INSERTED)
        given = split_args(arg[1:])[0] if arg[1:] else ""
        if modem.pin_ok:
            return [], modem.cme(CmeCode.OPERATION_NOT_ALLOWED)
        if modem.pin_tries <= 0:
            return [], modem.cme(CmeCode.SIM_PUK_REQUIRED)
        if given == modem.sim.pin:
            modem.pin_ok = True
            modem.pin_tries = 3
            return [], "OK"
        modem.pin_tries -= 1
        return [], modem.cme(CmeCode.INCORRECT_PASSWORD)
    return [], "ERROR"


def cimi(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    error = modem.sim_error()
    if error:
        return [], error
    assert modem.sim is not None
    return [modem.sim.imsi], "OK"


def iccid(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    if name not in modem.profile.iccid_commands:
        return [], modem.profile.unknown_reply
    if modem.sim is None:
        return [], modem.cme(CmeCode.SIM_NOT_INSERTED)
    if modem.busy_left > 0:
        modem.busy_left -= 1
        return [], modem.cme(CmeCode.DEVICE_BUSY)
    iccid = modem.sim.iccid
    if name == "+CCID":
        return [f"+CCID: {iccid}"], "OK"
    if name == "+ICCID":
        return [f"ICCID: {iccid}"], "OK"
    if name == "^ICCID":
        return [f"^ICCID: {swap_nibbles(iccid)}"], "OK"
    if name == "+QCCID":
        return [f"+QCCID: {iccid}"], "OK"
    if name == "!ICCID":
        return [f"!ICCID: {iccid}"], "OK"
    if name == "+CRSM":
        if arg.replace(" ", "") != "=176,12258,0,0,10":
            return [], modem.cme(CmeCode.OPERATION_NOT_ALLOWED)
        return [f'+CRSM: 144,0,"{swap_nibbles(iccid)}"'], "OK"
    return [], modem.profile.unknown_reply


def cnum(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    error = modem.sim_error()
    if error:
        return [], error
    assert modem.sim is not None
    if modem.profile.number_in_cnum and modem.sim.number:
        return [f'+CNUM: "","+{modem.sim.number}",145'], "OK"
    return [], "OK"


def cpbs(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    error = modem.sim_error()
    if error:
        return [], error
    modem.phonebook = split_args(arg[1:])[0] if arg.startswith("=") else "SM"
    return [], "OK"


def cpbr(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    error = modem.sim_error()
    if error:
        return [], error
    assert modem.sim is not None
    own = modem.phonebook == "ON"
    if own and arg == "=1" and modem.sim.number and not modem.profile.number_in_cnum:
        return [f'+CPBR: 1,"+{modem.sim.number}",145,"Own number"'], "OK"
    return [], modem.cme(CmeCode.NOT_FOUND)


# Each handler gets (modem, name, argument after the name incl. "=" or "?").
COMMANDS: dict[str, Callable[[EmulatedModem, str, str], tuple[list[str], str] | None]] = {
    "+CPIN": cpin,
    "+CIMI": cimi,
    "+CCID": iccid,
    "+ICCID": iccid,
    "^ICCID": iccid,
    "+QCCID": iccid,
    "!ICCID": iccid,
    "+CRSM": iccid,
    "+CNUM": cnum,
    "+CPBS": cpbs,
    "+CPBR": cpbr,
}
