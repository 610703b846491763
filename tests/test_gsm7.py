"""GSM 7-bit decoding against 3GPP TS 23.038, through whole SMS-DELIVER PDUs.

Every expected character below is written from the spec's tables (§6.2.1,
§6.2.1.1, Annex A), not from `modems.gsm7`: the septets are put together by
this file's own small encoder from the code/character pairs it lists, so a
wrong entry in our tables fails here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from modems.events import SmsReceived
from modems.gsm7 import LOCKING_SHIFT, SINGLE_SHIFT
from modems.pdu import (
    SmsDeliver,
    StatusReport,
    decode_pdu,
    encode_deliver_parts,
    gsm7_decode,
    gsm7_septets,
    pack_septets,
)
from modems.reassembly import Part, Reassembler, join_parts
from supplier.backend import StoreBackend
from supplier.inbox import Inbox
from supplier.inventory import Inventory

from .hubkit import Clock
from .pg import Stores

# 6.2.1, code 0x00 to 0x7F; 0x1B is the escape (shown here as a placeholder).
SPEC_DEFAULT = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# 6.2.1.1: the extension table's characters (0x0A: form feed, the page break).
SPEC_EXTENSION = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

# SMSC none, SMS-DELIVER, from +79281234567, PID 0, DCS 0 (GSM-7).
HEAD = "0004" + "0B919782214365F7" + "0000"
HEAD_UDH = "0044" + "0B919782214365F7" + "0000"  # the same with a user data header
SCTS = "62112201035021"  # 2026-11-22 10:30:05 +03:00 (12 quarters, digits swapped)
WHEN = datetime(2026, 11, 22, 10, 30, 5, tzinfo=timezone(timedelta(hours=3)))


def deliver(pdu: str) -> SmsDeliver:
    message = decode_pdu(pdu)
    assert isinstance(message, SmsDeliver)
    return message


# -- the default alphabet and its extension table: every entry ------------------------------


def test_every_default_alphabet_entry() -> None:
    for code, char in enumerate(SPEC_DEFAULT):
        if code != 0x1B:
            assert gsm7_decode(bytes((code,))) == char, hex(code)


def test_every_extension_entry_and_the_fallback_for_the_rest() -> None:
    # TS 23.038 §6.2.1.1: a code with no extension character shows the default
    # table's character for that code; ESC ESC (reserved for a second
    # extension table) shows a space.
    for code in range(128):
        expected = " " if code == 0x1B else SPEC_EXTENSION.get(code, SPEC_DEFAULT[code])
        assert gsm7_decode(bytes((0x1B, code))) == expected, hex(code)


@pytest.mark.parametrize(
    ("user_data", "text"),
    [
        # 0x5F is the section sign (python-gsmmodem's table has a backtick).
        ("015F", "§"),
        # "A", ESC 0x0A, "B": a form feed (the old decoder gave a line feed).
        ("04C18D4208", "A\fB"),
        # "A", ESC ESC, "B": a space (the old decoder gave a raw U+001B).
        ("04C1CD4608", "A B"),
        # ESC then 0x5F, a code the extension table lacks: the default table's §.
        ("029B2F", "§"),
        # The published "hellohello" packing (Device::Gsm's tests): plain letters.
        ("0AE8329BFD4697D9EC37", "hellohello"),
    ],
)
def test_corrected_entries_in_whole_pdus(user_data: str, text: str) -> None:
    sms = deliver(HEAD + SCTS + user_data)
    assert sms.text == text
    assert sms.timestamp == WHEN


# Published vectors: AOSP's GsmSmsTest (frameworks/base telephony tests).
AOSP_TEST = "07914151551512f2040B916105551511f100006060605130308A04D4F29C0E"
AOSP_EXTENDED = (
    "07914151551512f2040B916105551511f100006080615131728A44D4F29C0E2"
    "AE3E96537B94C068DD16179784C2FCB41F4B0985D06B958ADD00FB0E94536AF9749"
    "74DA6D281BA00E95E26D509B946FC3DBF87A25D56A04"
)
AOSP_MULTIPART = (
    "07916163838408F6440B816105224431F700007060217175830AA0050003"
    "00020162B1582C168BC562B1582C168BC562B1582C168BC562B1582C"
    "168BC562B1582C168BC562B1582C168BC562B1582C168BC562B1582C"
    "168BC562B1582C168BC562B1582C168BC562B1582C168BC562B1582C"
    "168BC562B1582C168BC562B1582C168BC562B1582C168BC562B1582C"
    "168BC562B1582C168BC562B1582C168BC562B1582C168BC562",
    "07916163838408F6440B816105224431F700007060217185000A23050003"
    "00020262B1582C168BC96432994C2693C96432994C2693C96432990C",
)


def test_published_aosp_vectors() -> None:
    sms = deliver(AOSP_TEST)
    assert (sms.smsc, sms.sender, sms.text) == ("+14155551212", "+16505551111", "Test")
    assert deliver(AOSP_EXTENDED).text == (
        "Test extended character table .,-!?@~_\\/&\"';^|:()<{}>[]=%*+#"
    )
    parts = [Part.from_deliver("sim", deliver(pdu), 0.0) for pdu in AOSP_MULTIPART]
    assert join_parts(parts) == "1" * 153 + "1111111222222222222222222222"


def test_section_sign_is_encoded_and_backtick_is_not_gsm7() -> None:
    assert gsm7_septets("§") == b"\x5f"
    assert gsm7_septets("`") is None  # not in GSM-7 at all: the emulator sends it as UCS-2
    [pdu] = encode_deliver_parts("+1", "a`b §")
    assert deliver(pdu).text == "a`b §"


def test_every_table_has_128_codes_and_any_septets_decode() -> None:
    # A short table would raise IndexError on a high code: a lost SMS.
    for table in (*LOCKING_SHIFT.values(), *SINGLE_SHIFT.values()):
        assert len(table) == 128
    everything = bytes(range(128)) + bytes((0x1B, 0x1B, 0x1B))
    for locking in range(256):
        for single in (0, 1, 2, 3, 4, 13, 14, 255):
            assert len(gsm7_decode(everything, locking, single)) >= 126


# -- time stamps that real modems garble -------------------------------------------------


def test_time_zone_with_a_non_decimal_digit_keeps_the_message() -> None:
    # Zone octet C2 (seen from real modems): units digit 0xC. The message and
    # its local time are kept; only the zone is unknown (a naive datetime).
    sms = deliver(HEAD + "621122010350C2" + "04C18D4208")
    assert sms.text == "A\fB"
    assert sms.timestamp == datetime(2026, 11, 22, 10, 30, 5)
    assert sms.timestamp.tzinfo is None


@pytest.mark.parametrize(
    "scts",
    [
        "FFFFFFFFFFFFFF",  # all F digits
        "621C2201035021",  # month with a non-decimal digit
        "62312201035021",  # month 13
        "62112201A35021",  # minute with a non-decimal digit
    ],
)
def test_garbled_date_keeps_the_message_without_a_time_stamp(scts: str) -> None:
    sms = deliver(HEAD + scts + "015F")
    assert sms.text == "§"
    assert sms.timestamp is None


def test_status_report_with_garbled_time_stamps_is_decoded() -> None:
    # Android's status report vector with its zone octet garbled (C2) and its
    # discharge time all F digits: both are kept as far as they go.
    report = decode_pdu("0006E80C91666666666666909070618422C2" + "FFFFFFFFFFFFFF" + "00")
    assert isinstance(report, StatusReport)
    assert report.timestamp == datetime(2009, 9, 7, 16, 48, 22)
    assert report.discharge is None
    assert report.status == 0


@pytest.mark.backends
async def test_inbox_stores_a_message_with_an_unknown_zone(stores: Stores) -> None:
    async with _inbox(stores, "tz", Clock()) as (store, inbox):
        await inbox.accept(_received(HEAD + "621122010350C2" + "015F"))
        [sms] = await store.recent_sms()
    assert sms.text == "§"
    assert sms.sent is None  # not a guess in the host's zone


# -- national language tables (Annex A): one locking and one single shift vector each ------


def septets(text: str, table: dict[str, int], shift: dict[str, int]) -> bytes:
    """This test's own encoder: `table` and `shift` hold the spec's codes for the
    text's national characters; digits, lower-case Latin letters and the space
    keep their codes in every table."""
    out = bytearray()
    for char in text:
        if char in table:
            out.append(table[char])
        elif char in shift:
            out += bytes((0x1B, shift[char]))
        else:
            assert char in "0123456789 abcdefghijklmnopqrstuvwxyz", repr(char)
            out.append(ord(char))
    return bytes(out)


def national_pdu(
    data: bytes, *, locking: int = 0, single: int = 0, concat: tuple[int, int, int] | None = None
) -> str:
    """An SMS-DELIVER whose header names the tables (IEI 0x25 locking, 0x24 single)."""
    elements = b""
    if concat is not None:
        elements += bytes((0x00, 3, *concat))
    if locking:
        elements += bytes((0x25, 1, locking))
    if single:
        elements += bytes((0x24, 1, single))
    udh = bytes((len(elements),)) + elements
    fill = (7 - len(udh) * 8 % 7) % 7
    udl = (len(udh) * 8 + fill) // 7 + len(data)
    return HEAD_UDH + SCTS + f"{udl:02X}" + (udh + pack_septets(data, fill)).hex().upper()


# Locking shift tables (A.3): characters at 0x03, 0x04, 0x15 (three letters)
# and 0x42, 0x50 (a letter and a vowel sign). In the Indic and Urdu tables 0x28
# is ")" and 0x29 "(", and 0x2C is a comma.
INDIC_LOCKING = {
    4: ("Bengali", "\u0985\u0986\u0995\u09ae\u09be"),
    5: ("Gujarati", "\u0a85\u0a86\u0a95\u0aae\u0abe"),
    6: ("Hindi", "\u0905\u0906\u0915\u092e\u093e"),
    7: ("Kannada", "\u0c85\u0c86\u0c95\u0cae\u0cbe"),
    8: ("Malayalam", "\u0d05\u0d06\u0d15\u0d2e\u0d3e"),
    9: ("Oriya", "\u0b05\u0b06\u0b15\u0b2e\u0b3e"),
    10: ("Punjabi", "\u0a05\u0a06\u0a15\u0a2e\u0a3e"),
    11: ("Tamil", "\u0b85\u0b86\u0b95\u0bae\u0bbe"),
    12: ("Telugu", "\u0c05\u0c06\u0c15\u0c2e\u0c3e"),
    13: ("Urdu", "\u067b\u0680\u0685\u0637\u06ba"),
}
# Single shift tables (A.2): the digits 0-4 at 0x1C-0x1F and 0x20.
INDIC_DIGITS = {
    4: "\u09e8\u09e9\u09ea\u09eb\u09ec",  # Bengali has its 0 and 1 at 0x19, 0x1A: 2..6 here
    5: "\u0ae6\u0ae7\u0ae8\u0ae9\u0aea",
    6: "\u0966\u0967\u0968\u0969\u096a",
    7: "\u0ce6\u0ce7\u0ce8\u0ce9\u0cea",
    8: "\u0d66\u0d67\u0d68\u0d69\u0d6a",
    9: "\u0b66\u0b67\u0b68\u0b69\u0b6a",
    10: "\u0a66\u0a67\u0a68\u0a69\u0a6a",
    11: "\u0be6\u0be7\u0be8\u0be9\u0bea",
    12: "\u0c66\u0c67\u0c68\u0c69\u0c6a",
    13: "\u06f0\u06f1\u06f2\u06f3\u06f4",
}


@pytest.mark.parametrize("language", sorted(INDIC_LOCKING))
def test_indic_and_urdu_locking_shift(language: int) -> None:
    letters = INDIC_LOCKING[language][1]
    table = dict(zip(letters, (0x03, 0x04, 0x15, 0x42, 0x50), strict=True))
    table |= {")": 0x28, "(": 0x29, ",": 0x2C, ".": 0x2E}
    text = f"{letters[:3]} ({letters[3:]}), otp 4821."
    sms = deliver(national_pdu(septets(text, table, {}), locking=language))
    assert sms.text == text
    assert sms.locking_shift == language


@pytest.mark.parametrize("language", sorted(INDIC_DIGITS))
def test_indic_and_urdu_single_shift(language: int) -> None:
    # The default alphabet with the language's single shift table: native
    # digits after ESC, and "€" at ESC 0x65 as in every single shift table.
    digits = INDIC_DIGITS[language]
    shift = dict(zip(digits, (0x1C, 0x1D, 0x1E, 0x1F, 0x20), strict=True)) | {"€": 0x65}
    text = f"Code {digits} costs 5€"
    table = {"C": 0x43}
    sms = deliver(national_pdu(septets(text, table, shift), single=language))
    assert sms.text == text
    assert sms.single_shift == language


def test_kannada_0x24_is_dda_and_telugu_has_the_euro_sign() -> None:
    # The printed A.3.7 has U+0CAA at both 0x24 and 0x3D and no code for
    # U+0CA1 (a typo); Android sends U+0CA1 as 0x24. A.2.12 as Android and
    # CyberChef read it has the euro sign at 0x65, like every other table.
    assert deliver(national_pdu(b"\x24\x3d", locking=7)).text == "\u0ca1\u0caa"
    assert deliver(national_pdu(b"5\x1b\x65", single=12)).text == "5€"


def test_indic_locking_and_single_shift_together() -> None:
    # Hindi both ways; ESC 0x19 is the danda; ESC 0x60, undefined in the Hindi
    # single shift table, shows the Hindi locking table's 0x60 (U+0950, om).
    table = {"\u0915": 0x15, "\u094b": 0x5D, "\u0921": 0x24}
    shift = {"\u0964": 0x19, "\u0967": 0x1D, "\u0968": 0x1E, "A": 0x41}
    data = septets("\u0915\u094b\u0921 \u0967\u0968\u0964 A", table, shift) + b"\x1b\x60"
    sms = deliver(national_pdu(data, locking=6, single=6))
    assert sms.text == "\u0915\u094b\u0921 \u0967\u0968\u0964 A\u0950"


TURKISH_LOCKING = {"ı": 0x07, "Ğ": 0x0B, "ğ": 0x0C, "Ş": 0x1C, "ş": 0x1D, "İ": 0x40, "ç": 0x60}
TURKISH_SINGLE = {"Ğ": 0x47, "İ": 0x49, "Ş": 0x53, "ç": 0x63, "ğ": 0x67, "ı": 0x69, "ş": 0x73}
SPANISH_SINGLE = {"ç": 0x09, "Á": 0x41, "Í": 0x49, "Ó": 0x4F, "Ú": 0x55, "á": 0x61, "í": 0x69}
SPANISH_SINGLE |= {"ó": 0x6F, "ú": 0x75}
PORTUGUESE_LOCKING = {"ê": 0x04, "ú": 0x06, "í": 0x07, "ó": 0x08, "ç": 0x09, "Ô": 0x0B}
PORTUGUESE_LOCKING |= {"ô": 0x0C, "á": 0x0F, "ª": 0x12, "Ç": 0x13, "À": 0x14, "∞": 0x15}
PORTUGUESE_LOCKING |= {"â": 0x1D, "Ê": 0x1E, "º": 0x24, "Í": 0x40, "Ã": 0x5B, "ã": 0x7B}
PORTUGUESE_LOCKING |= {"õ": 0x7C, "`": 0x7D}
PORTUGUESE_SINGLE = {"ç": 0x09, "Φ": 0x12, "Γ": 0x13, "Ω": 0x15, "À": 0x41, "Í": 0x49}
PORTUGUESE_SINGLE |= {"Ó": 0x4F, "Ú": 0x55, "Ã": 0x5B, "Õ": 0x5C, "Â": 0x61, "í": 0x69}
PORTUGUESE_SINGLE |= {"ó": 0x6F, "ú": 0x75, "ã": 0x7B, "õ": 0x7C, "â": 0x7F}
LATIN = {c: ord(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ:"}


@pytest.mark.parametrize(
    ("locking", "single", "table", "shift", "text"),
    [
        (1, 0, TURKISH_LOCKING, {}, "Doğrulama kodunuz 4821 çalışıyor İŞ ığ Ğ ş"),
        (0, 1, {}, TURKISH_SINGLE, "Doğrulama kodunuz 4821 çalışıyor İŞ ığ Ğ ş"),
        (1, 1, {}, TURKISH_SINGLE, "Şifre 1234 ğ"),
        (0, 2, {}, SPANISH_SINGLE, "Código 4821 válido Ú Í Ó Á ç"),
        (3, 0, PORTUGUESE_LOCKING, {}, "Código 4821 válido ê ô Ô ª º ∞ À Ç Ê Í ã õ `"),
        (0, 3, {}, PORTUGUESE_SINGLE, "Código 4821 ação Φ Γ Ω À Í Ó Ú Ã Õ Â â"),
        (3, 3, PORTUGUESE_LOCKING, PORTUGUESE_SINGLE, "Código ÓÕ Φ"),
    ],
)
def test_latin_national_tables(
    locking: int, single: int, table: dict[str, int], shift: dict[str, int], text: str
) -> None:
    data = septets(text, LATIN | {"é": 0x05} | table, shift)
    sms = deliver(national_pdu(data, locking=locking, single=single))
    assert sms.text == text


def test_turkish_escape_to_an_undefined_code_shows_the_locking_table_character() -> None:
    # ESC 0x07: not in the default extension table; under the Turkish locking
    # shift table the character for 0x07 is dotless i, not the default ì.
    sms = deliver(national_pdu(b"\x1b\x07", locking=1))
    assert sms.text == "ı"


def test_reserved_codes_and_a_trailing_escape() -> None:
    # Bengali locking 0x0C is reserved in A.3.4: nothing to show but U+FFFD.
    assert deliver(national_pdu(b"\x03\x0c\x04", locking=4)).text == "\u0985\ufffd\u0986"
    # An escape with nothing after it (a sender that cut the message) shows nothing.
    assert gsm7_decode(b"ab\x1b") == "ab"


def test_unknown_language_and_spanish_locking_use_the_default_tables() -> None:
    data = bytes((0x5F, 0x1B, 0x65))
    assert deliver(national_pdu(data, locking=2)).text == "§€"  # Spanish has no locking table
    assert deliver(national_pdu(data, locking=14, single=99)).text == "§€"  # reserved ids


# -- multipart: each part carries its own header -------------------------------------------


def test_multipart_hindi_message_with_shift_tables() -> None:
    table = {"\u0915": 0x15, "\u094b": 0x5D, "\u0921": 0x24}
    shift = {"\u0966": 0x1C, "\u0967": 0x1D, "\u0968": 0x1E, "\u0969": 0x1F}
    word = "\u0915\u094b\u0921 \u0967\u0968\u0969\u0966 "
    text = word * 20  # 260 septets with the escapes: two parts
    data = septets(text, table, shift)
    cut = 140  # at most 146 septets fit beside this header
    assert data[cut - 1] != 0x1B  # no escape split between the parts
    pdus = [
        national_pdu(data[:cut], locking=6, single=6, concat=(0x42, 2, 1)),
        national_pdu(data[cut:], locking=6, single=6, concat=(0x42, 2, 2)),
    ]
    parts = [Part.from_deliver("sim", deliver(pdu), 0.0) for pdu in pdus]
    reassembler = Reassembler()
    assert reassembler.add(parts[1]) is None
    done = reassembler.add(parts[0])
    assert done is not None and done.complete and done.text == text


def test_multipart_parts_with_different_tables_each_decode_with_their_own() -> None:
    first = national_pdu(septets("kod ğ", TURKISH_LOCKING, {}), locking=1, concat=(9, 2, 1))
    second = national_pdu(b"\x0c", concat=(9, 2, 2))  # no shift IE: 0x0C is the default ø
    parts = [Part.from_deliver("sim", deliver(pdu), 0.0) for pdu in (first, second)]
    assert join_parts(parts) == "kod ğø"


@pytest.mark.backends
async def test_inbox_rebuilds_pending_national_parts_after_a_restart(stores: Stores) -> None:
    table = {"ğ": 0x0C, "ş": 0x1D}
    text = "doğrulama kodunuz ş " * 10
    data = septets(text, table, {})
    pdus = [
        national_pdu(data[:140], locking=1, concat=(7, 2, 1)),
        national_pdu(data[140:], locking=1, concat=(7, 2, 2)),
    ]
    clock = Clock()
    async with _inbox(stores, "n", clock) as (store, inbox):
        await inbox.accept(_received(pdus[0], index=1))
        assert await store.recent_sms() == []
    async with _inbox(stores, "n", clock) as (store, inbox):  # the daemon restarted
        await inbox.accept(_received(pdus[1], index=2))
        [sms] = await store.recent_sms()
    assert sms.text == text and sms.complete


# -- helpers: the inbox on its own, with a real store --------------------------------------


def _received(pdu: str, index: int = 1) -> SmsReceived:
    return SmsReceived(
        "/dev/x", "8970010000000000004", "SM", index, pdu, decode_pdu(pdu), None, 1.0
    )


@asynccontextmanager
async def _inbox(
    stores: Stores, name: str, clock: Clock
) -> AsyncIterator[tuple[StoreBackend, Inbox]]:
    store = await stores.open(name)
    try:
        inventory = Inventory(store, services=["vk"], release_after=600, clock=clock)
        await inventory.load()
        queued: list[Any] = []
        inbox = Inbox(store, inventory, reassembly_timeout=60, on_queued=queued.extend, clock=clock)
        await inbox.load()
        yield store, inbox
    finally:
        await store.close()
