"""Emulated network commands: signal, registration, operator, attach (USSD: ussd_commands)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from modems.codes import REGISTERED, CmeCode, RegStatus

if TYPE_CHECKING:
    from .interpreter import EmulatedModem

__all__ = ["COMMANDS"]


def csq(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    return [f"+CSQ: {modem.rssi},99"], "OK"


def creg(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    if arg.startswith("="):
        try:
            modem.creg_mode = int(arg[1:] or 0)
        except ValueError:
            return [], "ERROR"
        return [], "OK"
    status = modem.registration if modem.sim_ready() else RegStatus.NOT_SEARCHING
    return [f"{name}: {modem.creg_mode},{int(status)}"], "OK"


def cops(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    if arg.startswith("=3,"):
        modem.cops_format = int(arg[3:] or 0)
        return [], "OK"
    if arg == "?":
        if not modem.sim_ready() or modem.registration not in REGISTERED or modem.sim is None:
            return ["+COPS: 0"], "OK"
        oper = modem.sim.operator if modem.cops_format == 2 else "EMULATED"
        return [f'+COPS: 0,{modem.cops_format},"{oper}",2'], "OK"
    return [], "OK"


def cgatt(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    if modem.sim_error():
        return [], modem.cme(CmeCode.SIM_NOT_INSERTED)
    return (["+CGATT: 1"], "OK") if arg == "?" else ([], "OK")


# Each handler gets (modem, name, argument after the name incl. "=" or "?").
COMMANDS: dict[str, Callable[[EmulatedModem, str, str], tuple[list[str], str] | None]] = {
    "+CSQ": csq,
    "+CREG": creg,
    "+CGREG": creg,
    "+COPS": cops,
    "+CGATT": cgatt,
}
