"""SMS PDU decoding and multipart reassembly (docs/modems.md's list of what goes wrong)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modems.errors import PduError
from modems.pdu import (
    Alphabet,
    Concat,
    SmsDeliver,
    decode_pdu,
    encode_deliver,
    encode_deliver_parts,
    gsm7_septets,
)
from modems.reassembly import Part, Reassembler, join_parts

WHEN = datetime(2026, 11, 22, 10, 30, 5, tzinfo=timezone(timedelta(hours=3)))


def deliver(pdu: str) -> SmsDeliver:
    message = decode_pdu(pdu)
    assert isinstance(message, SmsDeliver)
    return message


def test_gsm7_with_extension_characters() -> None:
    text = "Code 12345 costs 5€ [ok] {x} ~^|\\"
    septets = gsm7_septets(text)
    assert septets is not None and septets.count(0x1B) == 9
    sms = deliver(encode_deliver("+79281234567", septets, alphabet=Alphabet.GSM7, timestamp=WHEN))
    assert sms.text == text
    assert sms.sender == "+79281234567"
    assert sms.timestamp == WHEN
    assert sms.alphabet is Alphabet.GSM7


def test_alphanumeric_sender() -> None:
    sms = deliver(encode_deliver_parts("VK", "VK: 33708")[0])
    assert sms.sender == "VK"
    assert sms.text == "VK: 33708"


@pytest.mark.parametrize("dcs", [0x08, 0x48, 0x18, 0x19, 0xE0])
def test_ucs2_in_every_group_that_means_ucs2(dcs: int) -> None:
    # 0x48: automatic-deletion group; 0x18/0x19: with a message class; 0xE0:
    # message waiting, UCS-2. gsmmodem.pdu reads all but 0x08 as GSM-7.
    text = "Код подтверждения: 4821"
    pdu = encode_deliver("+79281234567", text.encode("utf-16-be"), alphabet=Alphabet.UCS2, dcs=dcs)
    sms = deliver(pdu)
    assert sms.alphabet is Alphabet.UCS2
    assert sms.text == text


def test_dcs_f4_is_8bit_data() -> None:
    sms = deliver(encode_deliver("123", b"\x01\x02abc", alphabet=Alphabet.DATA8, dcs=0xF4))
    assert sms.alphabet is Alphabet.DATA8
    assert sms.message_class == 0
    assert sms.is_binary
    assert sms.user_data == b"\x01\x02abc"


def test_emoji_in_one_part() -> None:
    sms = deliver(encode_deliver_parts("+100", "Ваш код 😀 1234")[0])
    assert sms.text == "Ваш код 😀 1234"


def test_emoji_split_across_two_parts_is_joined() -> None:
    # 66 BMP characters then an emoji: the surrogate pair straddles the 134-byte cut.
    text = "ж" * 66 + "😀" + " и конец"
    pdus = encode_deliver_parts("+79001112233", text, reference=7)
    assert len(pdus) == 2
    first, second = deliver(pdus[0]), deliver(pdus[1])
    assert first.user_data[-2:] == "😀".encode("utf-16-be")[:2]  # the high surrogate
    assert "😀" not in first.text and "😀" not in second.text
    parts = [Part.from_deliver("sim", sms, 0.0) for sms in (first, second)]
    assert join_parts(parts) == text


@pytest.mark.parametrize("bits", [8, 16])
def test_concatenation_8_and_16_bit_references(bits: int) -> None:
    text = "A long message. " * 30
    reference = 0xBEEF if bits == 16 else 0xAB
    pdus = encode_deliver_parts("+4479", text, reference=reference, reference_bits=bits)
    assert len(pdus) == 4
    parts = [deliver(pdu) for pdu in pdus]
    assert all(p.concat == Concat(reference, 4, i + 1, bits) for i, p in enumerate(parts))
    reassembler = Reassembler()
    results = [reassembler.add(Part.from_deliver("sim", p, 1.0)) for p in parts]
    assert results[:3] == [None, None, None]
    assert results[3] is not None and results[3].text == text and results[3].complete


def test_parts_out_of_order_and_repeated() -> None:
    text = "Ура! " * 30  # UCS-2, 3 parts
    pdus = encode_deliver_parts("+7900", text, reference=9)
    assert len(pdus) == 3
    reassembler = Reassembler()
    parts = [Part.from_deliver("sim", deliver(pdu), 5.0) for pdu in pdus]
    assert reassembler.add(parts[2]) is None
    assert reassembler.add(parts[0]) is None
    assert reassembler.add(parts[0]) is None  # read twice after a reset
    done = reassembler.add(parts[1])
    assert done is not None and done.text == text and len(done.parts) == 3
    assert len(reassembler) == 0


def test_missing_part_is_delivered_after_the_timeout() -> None:
    text = "x" * 400  # GSM-7, 3 parts
    pdus = encode_deliver_parts("+7900", text, reference=3)
    reassembler = Reassembler(timeout=60.0)
    parts = [Part.from_deliver("sim", deliver(pdu), 100.0) for pdu in pdus]
    reassembler.add(parts[0])
    reassembler.add(parts[2])
    assert reassembler.next_deadline() == 160.0
    assert reassembler.expire(159.9) == []
    [late] = reassembler.expire(160.0)
    assert not late.complete
    assert late.missing == (2,)
    assert late.text == text[:153] + text[306:]


def test_parts_are_kept_apart_by_sim_sender_and_reference() -> None:
    a = encode_deliver_parts("+1", "a" * 200, reference=1)
    b = encode_deliver_parts("+2", "b" * 200, reference=1)
    reassembler = Reassembler()
    reassembler.add(Part.from_deliver("sim1", deliver(a[0]), 0))
    reassembler.add(Part.from_deliver("sim1", deliver(b[0]), 0))
    reassembler.add(Part.from_deliver("sim2", deliver(a[0]), 0))
    assert len(reassembler) == 3
    done = reassembler.add(Part.from_deliver("sim1", deliver(a[1]), 0))
    assert done is not None and done.text == "a" * 200


def test_reassembler_rebuilt_from_pending_parts() -> None:
    pdus = encode_deliver_parts("+7", "q" * 200, reference=4)
    first = Part.from_deliver("sim", deliver(pdus[0]), 0)
    restarted = Reassembler(parts=[first])
    done = restarted.add(Part.from_deliver("sim", deliver(pdus[1]), 1))
    assert done is not None and done.text == "q" * 200


def test_status_report_and_submit_are_recognised() -> None:
    report = decode_pdu("079124603050020006E80C91666666666666909070618422809090706184628000")
    assert type(report).__name__ == "StatusReport"
    submit = decode_pdu(
        "0791361907001003B17A0C913619397750320000AD11CD701E340FB3C3F23CC81D0689C3BF"
    )
    assert type(submit).__name__ == "SmsSubmit"


@pytest.mark.parametrize(
    "pdu",
    [
        "",
        "00",
        "zz",
        "07911326040000F0",  # ends after the SMSC
        "0791132604000FF004",  # ends in the first octet's fields
        "0004FF91",  # 255-digit sender
    ],
)
def test_malformed_pdus_raise_pdu_error(pdu: str) -> None:
    with pytest.raises(PduError):
        decode_pdu(pdu)


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_pdu_error(data: bytes) -> None:
    with contextlib.suppress(PduError):
        decode_pdu(data.hex())


@settings(max_examples=200)
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x1FAFF), max_size=500
    ),
    st.sampled_from([8, 16]),
)
def test_encode_decode_round_trip(text: str, bits: int) -> None:
    pdus = encode_deliver_parts("+79281234567", text, reference=42, reference_bits=bits)
    parts = [deliver(pdu) for pdu in pdus]
    if len(parts) == 1:
        assert parts[0].text == text
        return
    reassembler = Reassembler()
    done = None
    for sms in reversed(parts):
        done = reassembler.add(Part.from_deliver("s", sms, 0))
    assert done is not None and done.text == text


def test_timestamp_with_negative_zone() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
    septets = gsm7_septets("hi")
    assert septets is not None
    sms = deliver(encode_deliver("+1", septets, alphabet=Alphabet.GSM7, timestamp=when))
    assert sms.timestamp == when
    assert sms.timestamp.astimezone(UTC).hour == 8
