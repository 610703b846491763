"""USSD: the pure `+CUSD` parser on every recorded answer and every form; the capability
over a real pty to the emulator (each vendor's form, menus closed, silence timed out);
a USSD that never answers does not hold up an SMS on the same modem.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from modems.at import line_name
from modems.channel import open_channel
from modems.codes import UssdStatus
from modems.emulator import VirtualModemBank, make_sim
from modems.emulator.device import VirtualModem
from modems.emulator.ussd_commands import NUMBER_SERVICES, NumberService, number_forms
from modems.errors import ModemDisconnected, ParseError
from modems.events import SimReady
from modems.pdu import Alphabet
from modems.session import Session
from modems.ussd import (
    UssdError,
    UssdSession,
    UssdTimeout,
    cbs_coding,
    encode_request,
    parse_cusd,
    phone_candidates,
)
from modems.vendors import quirks_for

from .conftest import FAST, SHARED, BankFactory, shared_dir

USSD_DIR = SHARED / "data" / "real-modem-replies" / "at-ussd"

# Every recording, and what it must decode to (the start of the text is enough
# where the rest is long; the E160's first capture has corrupted octets mid-text).
RECORDED = {
    "01-E160.dump": (0, "Ihr Guthaben", None),
    "02-E160.dump": (0, "Ihr Guthaben für die Nr.4915783647410 beträgt 5.78 Euro", 15),
    "03-unknown.dump": (1, "Kontostand: 3.00 EUR Bitte w{hlen Sie: 1 Konto aufladen", None),
    "04-unknown.dump": (2, "Maaf, permintaan Anda tidak dapat kami proses.", 0),
    "Uissue358-Quectel_M35.dump": (2, "Havi keret: 0Ft. Feltöltött egyenleg: 7777Ft", 15),
    "issue109-E3276.dump": (0, "Для справки о балансе наберите *105#. Услуга бесплатна.", 72),
    "issue178-dell.dump": (0, "On DATA Pack u have 3Gb 817Mb 169kb valid until 21/05/2016", 15),
    "issue377-HE910-D.dump": (2, "رصيدك 107.93 د.ل،الصلاحية  2018-11-09", 17),
}


def _cusd_args(path: Path) -> str:
    for line in path.read_text(encoding="latin-1").splitlines():
        named = line_name(line.strip())
        if named is not None and named[0] == "+CUSD":
            return named[1]
    raise AssertionError(f"{path.name}: no +CUSD line")


def test_every_recorded_answer_is_listed_and_parses() -> None:
    folder = shared_dir("data", "real-modem-replies", "at-ussd")
    assert {p.name for p in folder.glob("*.dump")} == set(RECORDED)
    for name, (status, text, dcs) in RECORDED.items():
        answer = parse_cusd(_cusd_args(folder / name))
        assert (answer.status, answer.dcs) == (status, dcs), name
        assert answer.text.startswith(text), (name, answer.text)
        assert "\x00" not in answer.text and "\ufffd" not in answer.text, name


def test_recorded_forms_in_detail() -> None:
    shared_dir("data", "real-modem-replies", "at-ussd")
    # UCS-2 with a language prefix (DCS 17): "ar", then the text, then NULs and
    # stale buffer bytes that are not part of it.
    arabic = parse_cusd(_cusd_args(USSD_DIR / "issue377-HE910-D.dump"))
    assert arabic.text.endswith("2018-11-09")
    # The German menu in the GSM character set: `{` is `ä` (TS 23.038 basic table).
    menu = parse_cusd(_cusd_args(USSD_DIR / "03-unknown.dump"), charset="GSM")
    assert menu.menu and "Bitte wählen Sie: 1 Konto aufladen 2 CallNow Transfer" in menu.text
    # Huawei's packed septets, with and without the vendor hint.
    e160 = _cusd_args(USSD_DIR / "02-E160.dump")
    assert parse_cusd(e160, packed=True).text == parse_cusd(e160).text
    # UCS-2 hex sent with DCS 15 (Quectel) is still UCS-2.
    assert "7777Ft" in parse_cusd(_cusd_args(USSD_DIR / "Uissue358-Quectel_M35.dump")).text


@pytest.mark.parametrize(
    ("dcs", "alphabet", "prefix"),
    [
        (None, Alphabet.GSM7, 0),
        (15, Alphabet.GSM7, 0),
        (0x00, Alphabet.GSM7, 0),
        (0x10, Alphabet.GSM7, 3),
        (0x11, Alphabet.UCS2, 2),
        (0x48, Alphabet.UCS2, 0),  # 72, what the E3276 sends
        (0x44, Alphabet.DATA8, 0),
        (0x98, Alphabet.UCS2, 0),
        (0xF4, Alphabet.DATA8, 0),
        (0xF0, Alphabet.GSM7, 0),
        (0x80, Alphabet.GSM7, 0),
    ],
)
def test_cbs_coding_per_ts_23_038(dcs: int | None, alphabet: Alphabet, prefix: int) -> None:
    assert cbs_coding(dcs) == (alphabet, prefix)


def test_each_answer_form() -> None:
    text = "Vash nomer +79150000001"
    packed = encode_request(text, packed=True)
    ucs2 = text.encode("utf-16-be").hex().upper()
    cyr = "Ваш номер +7 (915) 000-00-01.".encode("utf-16-be").hex().upper()
    forms = {
        f'0,"{text}",15': text,
        f'0,"{packed}",15': text,
        f'0,"{ucs2}",15': text,
        f'0,"{cyr}",72': "Ваш номер +7 (915) 000-00-01.",
        f'0,"{ucs2}",72': text,
        f'0,"{"en" + chr(13) + text}",16': text,  # GSM-7 with a language prefix
        '0,"1234",15': "1234",  # short hex-looking text stays text
        '2,"Service unavailable",15': "Service unavailable",
        "4": "",
        "5": "",
    }
    for args, expected in forms.items():
        assert parse_cusd(args).text == expected, args
    assert parse_cusd(f'0,"{ucs2}",15', charset="UCS2").text == text
    assert parse_cusd('1,"Menu: 1 Balans",15').menu
    assert parse_cusd("4").status == UssdStatus.NOT_SUPPORTED
    assert parse_cusd('0,"48656C6C6F20776F726C64",68').text == "Hello world"  # 8-bit data


@pytest.mark.parametrize("bad", ["", "x", '9,"a",15', '0,"a",abc', '0,"a",999', ","])
def test_malformed_cusd_raises_our_error(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_cusd(bad)


def test_encode_request() -> None:
    assert encode_request("*100#", packed=False) == "*100#"
    assert encode_request("*100#", packed=True) == "AA180C3602"  # ModemManager's Huawei form
    # 7 septets leave 7 spare bits: filled with CR, not read back as '@'.
    seven = encode_request("*111*1#", packed=True)
    assert parse_cusd(f'0,"{seven}",15', packed=True).text == "*111*1#"
    for bad in ('*100#"', "*100#;+CMGD=1", "", "x" * 200):
        with pytest.raises(UssdError):
            encode_request(bad, packed=False)


def test_phone_candidates() -> None:
    text = (
        "Ваш номер +7 (916) 123-45-67. Баланс 100.50 руб, код *111*0887#, "
        "8-916-123-45-68 89161234569 9161234560 on 2018-11-09, Nr.4915783647410"
    )
    assert phone_candidates(text) == [
        "+79161234567",
        "89161234568",
        "89161234569",
        "9161234560",
        "4915783647410",
    ]
    assert phone_candidates("(+380) 50 123 45 67") == ["+380501234567"]
    assert phone_candidates("Balance 107.93, valid until 21/05/2016, 3Gb 817Mb") == []
    assert phone_candidates("Menu: 1 Balans 2 Tarif 0 Vyhod") == []


# -- over a pty ------------------------------------------------------------------------

UssdFactory = Callable[..., Awaitable[tuple[VirtualModem, UssdSession]]]


@pytest.fixture
async def ussd_to(make_bank: BankFactory) -> AsyncIterator[UssdFactory]:
    sessions: list[Session] = []

    async def factory(profile: str = "generic", slot: int = 0) -> tuple[VirtualModem, UssdSession]:
        bank: VirtualModemBank = await make_bank(1, profiles=(profile,), first_index=slot)
        vm = bank[0]
        session = Session(vm.link, FAST)
        ussd = UssdSession(session)

        def on_urc(urc: object) -> None:
            name = getattr(urc, "name", "")
            if name == "+CUSD":
                ussd.on_urc(getattr(urc, "args", ""))

        session.attach(await open_channel(vm.link, on_urc))
        sessions.append(session)
        await session.attempt("ATE0")
        await session.attempt("AT+CMEE=1")
        await session.attempt('AT+CSCS="GSM"')  # what Messaging.setup does
        manufacturer = await session.text("AT+CGMI", "+CGMI")
        session.quirks = quirks_for(manufacturer, await session.text("AT+CGMM", "+CGMM"))
        return vm, ussd

    yield factory
    for session in sessions:
        session.detach()


@pytest.mark.parametrize(
    ("profile", "slot", "wire"),
    [
        ("generic", 1, '+CUSD: 0,"Vash nomer 79260000001",15'),  # MegaFon, text
        ("generic", 0, ",72"),  # MTS, Cyrillic: UCS-2 hex
        ("huawei", 1, '+CUSD: 0,"D6F01C0D72BFDB6539E8'),  # packed septets
        ("sierra", 1, '+CUSD: 0,"0056006100730068'),  # refuses CSCS="GSM": UCS-2 hex
    ],
)
async def test_each_vendor_form_reads_the_number(
    ussd_to: UssdFactory, profile: str, slot: int, wire: str
) -> None:
    vm, ussd = await ussd_to(profile, slot)
    assert vm.sim is not None
    code = NUMBER_SERVICES[vm.sim.operator].code
    answer = await ussd.request(code, timeout=5)
    assert answer.status == UssdStatus.DONE
    assert vm.sim.network_number is not None
    forms = number_forms(vm.sim.network_number)
    assert any(form in answer.text for form in forms.values()), answer.text
    assert vm.ussd.requests == [code]  # Huawei's packed request was understood
    assert any(wire in line for line in vm.ussd.sent), (wire, vm.ussd.sent)


async def test_menu_is_answered_or_closed(ussd_to: UssdFactory) -> None:
    vm, ussd = await ussd_to("generic", 3)  # Tele2: the number inside a menu
    assert vm.sim is not None
    answer = await ussd.request("*201#", timeout=5)
    assert answer.menu and "+79500000003" in answer.text and ussd.menu_open
    follow = await ussd.reply("1", timeout=5)
    assert follow.status == UssdStatus.ENDED and not ussd.menu_open
    with pytest.raises(UssdError):
        await ussd.reply("1", timeout=5)
    await ussd.request("*201#", timeout=5)
    await ussd.close()
    assert vm.ussd.closes == 1 and vm.ussd.open_menu is None and not ussd.menu_open
    # A menu left open is closed before the next request.
    await ussd.request("*201#", timeout=5)
    await ussd.request("*100#", timeout=5)
    assert vm.ussd.closes == 2


async def test_unknown_code_is_not_supported(ussd_to: UssdFactory) -> None:
    _, ussd = await ussd_to()
    answer = await ussd.request("*999#", timeout=5)
    assert answer.status == UssdStatus.NOT_SUPPORTED and answer.text == ""


async def test_silence_times_out_and_closes_the_dialogue(ussd_to: UssdFactory) -> None:
    vm, ussd = await ussd_to()
    assert vm.sim is not None
    vm.sim.ussd = NumberService("*111#", "never said", how="never")
    started = time.monotonic()
    with pytest.raises(UssdTimeout):
        await ussd.request("*111#", timeout=0.5)
    assert 0.4 < time.monotonic() - started < 3
    assert ussd.unanswered == 1 and vm.ussd.closes == 1
    # The channel is usable at once, and a late answer is not taken for the next request.
    assert (await ussd.request("*100#", timeout=5)).text.startswith("Balans")


async def test_the_channel_serves_other_commands_while_an_answer_is_pending(
    ussd_to: UssdFactory,
) -> None:
    vm, ussd = await ussd_to()
    assert vm.sim is not None
    vm.sim.ussd = NumberService("*111#", "Vash nomer {intl}", delay=1.5)
    pending = asyncio.create_task(ussd.request("*111#", timeout=5))
    await vm.wait_until(lambda: vm.ussd.requests == ["*111#"], timeout=5)
    started = time.monotonic()
    session = ussd._session  # the same channel the request went out on
    for _ in range(5):
        await session.command("AT+CSQ")
    assert time.monotonic() - started < 1.0 and not pending.done()
    answer = await asyncio.wait_for(pending, 5)
    assert vm.sim.network_number and vm.sim.network_number in answer.text


# -- a Modem in a pool: USSD never answered, SMS latency unchanged ---------------------


async def test_unanswered_ussd_does_not_delay_an_sms(make_bank: BankFactory, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(1, profiles=("generic",))
    vm = bank[0]
    assert vm.sim is not None
    vm.sim.ussd = NumberService("*111#", "never", how="never")
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: bool(recorder.of(SimReady)))
    modem = pool.get(vm.link)
    assert modem is not None

    async def latency() -> float:
        before = len(recorder.sms())
        sent = time.monotonic()
        vm.deliver("Your code: 1234", "VK")
        await recorder.wait_for(lambda: len(recorder.sms()) > before, timeout=5)
        return time.monotonic() - sent

    quiet = min([await latency() for _ in range(3)])
    pending = asyncio.create_task(modem.ussd.request("*111#", timeout=3))
    await vm.wait_until(lambda: vm.ussd.requests == ["*111#"], timeout=5)
    during = [await latency() for _ in range(3)]
    assert not pending.done()
    with pytest.raises(UssdTimeout):
        await pending
    # Event-driven reading stays in tens of milliseconds while the answer is awaited.
    assert max(during) < max(0.5, quiet * 10), (quiet, during)
    assert modem.ready


async def test_sim_swap_or_unplug_fails_a_pending_request(make_bank: BankFactory, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(1, profiles=("generic",))
    vm = bank[0]
    assert vm.sim is not None
    vm.sim.ussd = NumberService("*111#", "never", how="never")
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: bool(recorder.of(SimReady)))
    modem = pool.get(vm.link)
    assert modem is not None
    pending = asyncio.create_task(modem.ussd.request("*111#", timeout=20))
    await vm.wait_until(lambda: vm.ussd.requests == ["*111#"], timeout=5)
    vm.unplug()
    with pytest.raises(ModemDisconnected):
        await asyncio.wait_for(pending, 5)


def test_make_sim_without_number_still_has_one_on_the_network() -> None:
    sim = make_sim(5, with_number=False)
    assert sim.number is None and sim.network_number is not None


async def test_an_ok_held_until_the_answer_is_still_read(ussd_to: UssdFactory) -> None:
    vm, ussd = await ussd_to()
    assert vm.sim is not None
    vm.profile = replace(vm.profile, ussd_late_ok=True)
    vm.sim.ussd = NumberService("*111#", "Vash nomer {intl}", delay=1.0)  # > command_timeout
    answer = await ussd.request("*111#", timeout=5)
    assert vm.sim.network_number and vm.sim.network_number in answer.text
    # Quick answers with a late OK come as an information line of the command itself.
    vm.sim.ussd = NumberService("*111#", "Vash nomer {plus}", delay=0.05)
    answer = await ussd.request("*111#", timeout=5)
    assert answer.text == f"Vash nomer +{vm.sim.network_number}"
    assert (await ussd.request("*100#", timeout=5)).text.startswith("Balans")
