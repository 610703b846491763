"""Emulated USSD: the networks' "what is my number" and balance services, per home network.

`AT+CUSD=1,"code",15` is answered `OK`; the network's answer follows as an
unsolicited `+CUSD` after the service's delay, in the form the modem's
profile and `AT+CSCS` give it (docs/modems.md): Huawei packed GSM 7-bit hex
(its requests come packed too), text in the GSM or IRA character set,
UCS-2 hex when the set is UCS2 or the text is not GSM-7 (Cyrillic, DCS 72).
A service may answer with the number in the text (several formats), by SMS
from a service sender a few seconds later, as a menu (`+CUSD: 1`, left open
until `AT+CUSD=2` or a reply), slowly, or never; an unknown code gets
`+CUSD: 4` (not supported).
"""

from __future__ import annotations

import asyncio
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modems.at import split_args
from modems.codes import CmeCode, UssdStatus
from modems.pdu import gsm7_decode, gsm7_septets, pack_septets, unpack_septets

if TYPE_CHECKING:
    from .interpreter import EmulatedModem, VirtualSim

__all__ = ["BALANCE_CODE", "COMMANDS", "NUMBER_SERVICES", "NumberService", "UssdState"]

BALANCE_CODE = "*100#"


@dataclass(frozen=True, slots=True)
class NumberService:
    """How one network answers its own-number code."""

    code: str
    # The answer; `{number}` forms: {intl} 79150000001, {plus} +79150000001,
    # {national} the trunk form (8915… / 050…), {spaced} +7 (915) 000-00-01.
    text: str
    how: str = "reply"  # reply | sms | menu | never | unsupported
    delay: float = 0.3  # seconds before the +CUSD
    sms_sender: str = ""  # how: sms — the service sender, and the SMS text
    sms_text: str = ""
    sms_delay: float = 3.0


# Per home network (the bank's OPERATORS), the codes real operators publish.
NUMBER_SERVICES: dict[str, NumberService] = {
    "25001": NumberService("*111*0887#", "Ваш номер {spaced}."),  # MTS: Cyrillic → UCS-2
    "25002": NumberService("*205#", "Vash nomer {intl}"),  # MegaFon
    "25099": NumberService(  # Beeline: "request accepted", the number by SMS
        "*110*10#",
        "Zapros prinyat. Ozhidaite SMS.",
        how="sms",
        sms_sender="Beeline",
        sms_text="Vash nomer {national}",
    ),
    "25020": NumberService(  # Tele2: the number in a menu that waits for a choice
        "*201#", "Vash nomer {plus}. 1 Balans 2 Tarif 0 Vyhod", how="menu"
    ),
    "25501": NumberService("*161#", "Vash nomer: {national}"),  # Vodafone UA, 0-form
    "25503": NumberService("*161#", "Your number is {spaced}", delay=1.0),  # Kyivstar
    "40101": NumberService("*160#", "Vash nomer {plus}"),  # Beeline KZ
    "62130": NumberService("*663#", "Your number is {national}"),  # MTN Nigeria
}
_TRUNK = {"7": "8"}  # national prefix where it is not 0


def number_forms(number: str) -> dict[str, str]:
    """The ways operators write a subscriber's number (`number` has its country code)."""
    for code in ("380", "234", "7"):
        if number.startswith(code):
            break
    else:
        code = number[:2]
    national = number[len(code) :]
    trunk = _TRUNK.get(code, "0")
    split = 3 if len(national) >= 10 else 2
    head, tail = national[:split], national[split:]
    groups = f"({head}) {tail[:3]}-{tail[3:5]}-{tail[5:]}"
    return {
        "intl": number,
        "plus": "+" + number,
        "national": trunk + national,
        "spaced": f"+{code} {groups}",
    }


@dataclass
class UssdState:
    """One emulated modem's USSD dialogue and what tests look at."""

    open_menu: NumberService | None = None
    requests: list[str] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)  # time.monotonic() of each
    closes: int = 0
    sent: list[str] = field(default_factory=list)  # every +CUSD line written
    answers_due: int = 0  # +CUSD lines scheduled so far
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def reset(self) -> None:
        """Power-up: no dialogue open, no answer still on its way."""
        self.open_menu = None
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


def _service_for(sim: VirtualSim) -> NumberService | None:
    return sim.ussd if sim.ussd is not None else NUMBER_SERVICES.get(sim.operator)


def _answer(modem: EmulatedModem, status: int, text: str) -> str:
    """`+CUSD: m,"…",dcs` in the form this modem writes."""
    if not text:
        return f"+CUSD: {status}"
    septets = gsm7_septets(text)
    if septets is not None and modem.profile.ussd_packed:
        return f'+CUSD: {status},"{pack_septets(septets).hex().upper()}",15'
    if septets is None or modem.charset == "UCS2":
        dcs = 72 if septets is None else 15
        return f'+CUSD: {status},"{text.encode("utf-16-be").hex().upper()}",{dcs}'
    return f'+CUSD: {status},"{text}",15'


def _later(modem: EmulatedModem, delay: float, action: Callable[[], None]) -> None:
    state = modem.ussd
    state.timers = [t for t in state.timers if not t.cancelled()]
    state.timers.append(asyncio.get_running_loop().call_later(delay, action))


def _send(modem: EmulatedModem, delay: float, status: int, text: str) -> None:
    line = _answer(modem, status, text)
    late_ok = modem.profile.ussd_late_ok
    modem.ussd.answers_due += 1

    def write() -> None:
        if not modem.hung:
            modem.ussd.sent.append(line)
            modem.write_lines(line, "OK") if late_ok else modem.write_lines(line)

    _later(modem, delay, write)


def _request_text(modem: EmulatedModem, raw: str) -> str:
    if modem.profile.ussd_packed and raw and len(raw) % 2 == 0:
        try:
            octets = binascii.unhexlify(raw)
        except binascii.Error:
            return raw
        return gsm7_decode(unpack_septets(octets, len(octets) * 8 // 7)).rstrip("\r@")
    return raw


def cusd(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str] | None:
    before = modem.ussd.answers_due
    result = _cusd(modem, name, arg)
    if modem.profile.ussd_late_ok and modem.ussd.answers_due > before:
        return None  # the OK goes out after the answer (_send)
    return result


def _cusd(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    if arg == "?":
        return ["+CUSD: 1"], "OK"
    if modem.sim_error():
        return [], modem.cme(CmeCode.SIM_NOT_INSERTED)
    fields = split_args(arg[1:]) if arg.startswith("=") else []
    state = modem.ussd
    if fields and fields[0] == "2":
        state.open_menu = None
        state.closes += 1
        return [], "OK"
    if len(fields) < 2:
        return [], "OK"  # `AT+CUSD=1`: result codes on, nothing asked
    sim = modem.sim
    assert sim is not None
    code = _request_text(modem, fields[1])
    state.requests.append(code)
    state.request_times.append(time.monotonic())
    menu, state.open_menu = state.open_menu, None
    number = sim.number or sim.network_number
    if menu is not None:  # a reply to the open menu: the network ends the dialogue
        _send(modem, 0.1, UssdStatus.ENDED, f"Vybrano {code}. Spasibo.")
        return [], "OK"
    if code == BALANCE_CODE:
        _send(modem, 0.2, UssdStatus.DONE, f"Balans: {sim.balance} rub.")
        return [], "OK"
    service = _service_for(sim)
    if service is None or service.code != code or number is None:
        _send(modem, 0.1, UssdStatus.NOT_SUPPORTED, "")
        return [], "OK"
    text = service.text.format(**number_forms(number))
    if service.how == "never":
        return [], "OK"
    if service.how == "unsupported":
        _send(modem, service.delay, UssdStatus.NOT_SUPPORTED, "")
    elif service.how == "menu":
        state.open_menu = service
        _send(modem, service.delay, UssdStatus.MENU, text)
    else:
        _send(modem, service.delay, UssdStatus.DONE, text)
    if service.how == "sms":
        body = service.sms_text.format(**number_forms(number))
        _later(modem, service.sms_delay, lambda: _deliver(modem, body, service.sms_sender))
    return [], "OK"


def _deliver(modem: EmulatedModem, text: str, sender: str) -> None:
    modem.deliver(text, sender)


# Each handler gets (modem, name, argument after the name incl. "=" or "?").
COMMANDS: dict[str, Callable[[EmulatedModem, str, str], tuple[list[str], str] | None]] = {
    "+CUSD": cusd,
}
