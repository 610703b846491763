"""The emulator's AT interpreter without a pty: command bytes in, answer bytes out."""

from __future__ import annotations

import pytest

from modems.codes import CmeCode, CmsCode
from modems.emulator import PROFILES, EmulatedModem, make_sim
from modems.replies import iccid_from_crsm, normalize_iccid


class Wire:
    """What the emulated modem wrote, split into lines."""

    def __init__(self) -> None:
        self.data = bytearray()

    def lines(self) -> list[str]:
        text = self.data.decode("latin-1")
        self.data.clear()
        return [line for line in text.replace("\r", "\n").split("\n") if line]


def modem(profile: str = "generic", **kwargs: object) -> tuple[EmulatedModem, Wire]:
    wire = Wire()
    em = EmulatedModem(
        "modem007", PROFILES[profile], make_sim(7), output=wire.data.extend, **kwargs
    )  # type: ignore[arg-type]
    em.power_on()
    em.feed(b"ATE0\r")
    wire.lines()
    return em, wire


def ask(em: EmulatedModem, wire: Wire, command: str) -> list[str]:
    em.feed(command.encode("latin-1") + b"\r")
    return [line for line in wire.lines() if line != command]  # Sierra echoes despite ATE0


async def test_echo_until_ate0_then_plain_answers() -> None:
    wire = Wire()
    em = EmulatedModem("m", PROFILES["generic"], make_sim(1), output=wire.data.extend)
    em.power_on()
    em.feed(b"AT\r")
    assert wire.lines() == ["AT", "OK"]
    em.feed(b"ATE0\r")
    wire.lines()
    em.feed(b"AT+CSQ\r")
    assert wire.lines() == ["+CSQ: 21,99", "OK"]


async def test_nothing_is_written_before_power_on() -> None:
    wire = Wire()
    em = EmulatedModem("m", PROFILES["generic"], make_sim(1), output=wire.data.extend)
    em.feed(b"AT\r")
    assert wire.lines() == [] and em.commands == ["AT"]


async def test_cme_codes_follow_cmee() -> None:
    em, wire = modem()
    em.remove_sim()
    wire.lines()
    assert ask(em, wire, "AT+CIMI") == ["ERROR"]  # CMEE=0 after power-up
    ask(em, wire, "AT+CMEE=1")
    assert ask(em, wire, "AT+CIMI") == [f"+CME ERROR: {int(CmeCode.SIM_NOT_INSERTED)}"]


@pytest.mark.parametrize("profile", ["generic", "huawei", "wavecom", "sierra"])
async def test_iccid_commands_answer_as_the_profile_says(profile: str) -> None:
    em, wire = modem(profile)
    assert em.sim is not None
    for _ in range(em.profile.busy_after_boot):
        ask(em, wire, "AT+CPIN?")  # Wavecom: busy for the first SIM commands after boot
    answered = 0
    for command, prefix in (("AT^ICCID?", "^ICCID"), ("AT+CRSM=176,12258,0,0,10", "+CRSM")):
        lines = ask(em, wire, command)
        name = command[2:].rstrip("?").split("=")[0]
        if name not in em.profile.iccid_commands:
            assert lines == [em.profile.unknown_reply]
            continue
        answered += 1
        value = lines[0].split(":", 1)[1]
        iccid = iccid_from_crsm(value) if prefix == "+CRSM" else normalize_iccid(value)
        assert iccid == em.sim.iccid and lines[-1] == "OK"
    assert answered >= 1


async def test_messages_are_stored_listed_read_and_deleted() -> None:
    em, wire = modem()
    ask(em, wire, "AT+CNMI=2,1,0,0,0")
    pdu = em.deliver("hello")[0]
    assert wire.lines() == ['+CMTI: "SM",1']
    listing = ask(em, wire, "AT+CMGL=4")
    assert listing[0].startswith("+CMGL: 1,0,,") and listing[1:] == [pdu, "OK"]
    assert ask(em, wire, "AT+CMGR=1")[1:] == [pdu, "OK"]
    assert ask(em, wire, "AT+CMGD=1") == ["OK"]
    assert em.deleted == [pdu] and not em.stored()
    assert ask(em, wire, "AT+CMGD=99") == [f"+CMS ERROR: {int(CmsCode.INVALID_MEMORY_INDEX)}"]


async def test_wavecom_cpin_has_no_final_and_is_busy_after_boot() -> None:
    em, wire = modem("wavecom")
    ask(em, wire, "AT+CMEE=1")
    for _ in range(em.profile.busy_after_boot):
        assert ask(em, wire, "AT+CPIN?") == [f"+CME ERROR: {int(CmeCode.DEVICE_BUSY)}"]
    assert ask(em, wire, "AT+CPIN?") == ["+CPIN: READY"]


async def test_a_hung_modem_hears_and_never_answers() -> None:
    em, wire = modem()
    em.hang()
    assert ask(em, wire, "AT") == [] and em.commands[-1] == "AT"
    em.unhang()
    assert ask(em, wire, "AT") == ["OK"]
