"""The pure AT reader: final results, information lines, unsolicited codes, prompt, echo."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from modems.at import (
    ATReader,
    Echo,
    Event,
    Final,
    FinalKind,
    Info,
    Overflow,
    Prompt,
    Unsolicited,
    command_prefix,
    command_prefixes,
    parse_final,
    split_args,
)


def feed_all(
    data: bytes, chunks: list[int] | None = None, command: str | None = None
) -> list[Event]:
    reader = ATReader(max_line=256)
    if command:
        reader.begin(command)
    if chunks is None:
        return reader.feed(data)
    events: list[Event] = []
    pos = 0
    for size in chunks:
        events += reader.feed(data[pos : pos + size])
        pos += size
    events += reader.feed(data[pos:])
    return events


def test_final_results() -> None:
    assert parse_final("OK") == Final(FinalKind.OK, "OK")
    assert parse_final("ERROR") == Final(FinalKind.ERROR, "ERROR")
    assert parse_final("+CME ERROR: 10") == Final(FinalKind.CME_ERROR, "+CME ERROR: 10", 10)
    assert parse_final("+CMS ERROR: 321") == Final(FinalKind.CMS_ERROR, "+CMS ERROR: 321", 321)
    assert parse_final("+CME ERROR: SIM not inserted") == Final(
        FinalKind.CME_ERROR, "+CME ERROR: SIM not inserted", 10
    )
    assert parse_final("+CME ERROR: something odd") == Final(
        FinalKind.CME_ERROR, "+CME ERROR: something odd", None
    )
    assert parse_final("COMMAND NOT SUPPORT").kind is FinalKind.NOT_SUPPORTED  # type: ignore[union-attr]
    assert parse_final("NO CARRIER").kind is FinalKind.NO_CARRIER  # type: ignore[union-attr]
    assert parse_final("+CSQ: 21,99") is None


def test_reply_with_info_lines() -> None:
    events = feed_all(b"\r\n+CSQ: 21,99\r\n\r\nOK\r\n", command="AT+CSQ")
    assert events == [Info("+CSQ: 21,99"), Final(FinalKind.OK, "OK")]


def test_cmti_in_the_middle_of_a_reply_is_unsolicited() -> None:
    data = b'\r\n+CMGL: 1,0,,23\r\n+CMTI: "SM",2\r\n0791AB\r\n\r\nOK\r\n'
    events = feed_all(data, command="AT+CMGL=4")
    assert events == [
        Info("+CMGL: 1,0,,23"),
        Unsolicited("+CMTI", '"SM",2', '+CMTI: "SM",2'),
        Info("0791AB"),
        Final(FinalKind.OK, "OK"),
    ]


def test_creg_is_info_for_creg_query_and_unsolicited_otherwise() -> None:
    assert feed_all(b"\r\n+CREG: 0,1\r\nOK\r\n", command="AT+CREG?")[0] == Info("+CREG: 0,1")
    assert feed_all(b"\r\n+CREG: 1\r\n\r\n+CSQ: 5,99\r\nOK\r\n", command="AT+CSQ")[0] == (
        Unsolicited("+CREG", "1", "+CREG: 1")
    )


def test_vendor_codes_and_bare_urcs() -> None:
    events = feed_all(b"\r\n^RSSI:14\r\n\r\nRING\r\n^BOOT:1,0,0,0,1\r\nRDY\r\n")
    assert [e.name for e in events if isinstance(e, Unsolicited)] == [
        "^RSSI",
        "RING",
        "^BOOT",
        "RDY",
    ]
    assert isinstance(events[0], Unsolicited) and events[0].args == "14"


def test_echo_is_recognised() -> None:
    events = feed_all(b"AT+CSQ\r\r\n+CSQ: 9,99\r\n\r\nOK\r\n", command="AT+CSQ")
    assert events == [Echo("AT+CSQ"), Info("+CSQ: 9,99"), Final(FinalKind.OK, "OK")]


def test_prompt() -> None:
    assert feed_all(b"\r\n> ", command="AT+CMGS=23") == [Prompt()]


def test_line_after_final_is_not_part_of_the_reply() -> None:
    events = feed_all(b'\r\nOK\r\n\r\n+CMTI: "ME",0\r\n', command="AT")
    assert events == [Final(FinalKind.OK, "OK"), Unsolicited("+CMTI", '"ME",0', '+CMTI: "ME",0')]


def test_stray_lines_without_a_command_are_unsolicited() -> None:
    assert feed_all(b"\r\nhello there\r\n") == [Unsolicited("", "hello there", "hello there")]


def test_two_line_cmt_carries_its_pdu() -> None:
    events = feed_all(b"\r\n+CMT: ,23\r\n0791ABCD\r\n")
    assert events == [Unsolicited("+CMT", ",23", "+CMT: ,23", body="0791ABCD")]


def test_overlong_line_is_dropped_and_reported() -> None:
    events = feed_all(b"A" * 1000 + b"\r\nOK\r\n", command="AT")
    assert events == [Overflow(1000), Final(FinalKind.OK, "OK")]


def test_garbage_bytes_never_raise() -> None:
    reader = ATReader(max_line=64)
    reader.begin("AT")
    events = reader.feed(bytes(range(256)) * 4 + b"\r\nOK\r\n")
    assert events[-1] == Final(FinalKind.OK, "OK")


def test_command_prefix_and_split_args() -> None:
    assert command_prefix("AT+CMGR=3") == "+CMGR"
    assert command_prefix("AT^ICCID?") == "^ICCID"
    assert command_prefix("AT!ICCID?") == "!ICCID"
    assert command_prefix("ATE0") is None
    assert split_args('"SM",3') == ["SM", "3"]
    assert split_args("0,,23") == ["0", "", "23"]
    assert split_args('1,"a,b",2') == ["1", "a,b", "2"]
    assert split_args("") == []


TRANSCRIPT = (
    b'AT+CMGL=4\r\r\n+CMGL: 1,0,,23\r\n0791AB\r\n+CMTI: "SM",2\r\n'
    b"^RSSI: 12\r\n+CMGL: 2,1,,24\r\n0791CD\r\n\r\nOK\r\n+CREG: 1\r\n"
)


@settings(max_examples=300)
@given(st.lists(st.integers(min_value=0, max_value=12), max_size=40))
def test_any_chunking_gives_the_same_events(chunks: list[int]) -> None:
    whole = feed_all(TRANSCRIPT, command="AT+CMGL=4")
    assert feed_all(TRANSCRIPT, chunks, command="AT+CMGL=4") == whole


def test_one_byte_at_a_time_and_glued() -> None:
    whole = feed_all(TRANSCRIPT, command="AT+CMGL=4")
    assert feed_all(TRANSCRIPT, [1] * len(TRANSCRIPT), command="AT+CMGL=4") == whole
    glued = feed_all(TRANSCRIPT + TRANSCRIPT.replace(b"AT+CMGL=4\r", b""), command="AT+CMGL=4")
    assert glued[: len(whole)] == whole
    # With no command pending nothing is taken as a reply line; the stray OK
    # is reported as a final that the channel drops.
    tail = glued[len(whole) :]
    assert not [e for e in tail if isinstance(e, Info)]
    assert [e for e in tail if isinstance(e, Unsolicited) and e.name == "+CMTI"]


def test_a_concatenated_lines_answers_are_its_own_not_unsolicited() -> None:
    """`AT+CSQ;+CREG?;+CPIN?` is answered by three information lines and one OK;
    `+CREG` and `+CPIN` are also unsolicited codes, but here they answer the line."""
    data = b"\r\n+CSQ: 21,99\r\n\r\n+CREG: 0,1\r\n\r\n+CPIN: READY\r\n\r\nOK\r\n+CREG: 5\r\n"
    events = feed_all(data, command="AT+CSQ;+CREG?;+CPIN?")
    assert events[:3] == [Info("+CSQ: 21,99"), Info("+CREG: 0,1"), Info("+CPIN: READY")]
    assert isinstance(events[3], Final) and events[3].ok
    assert events[4] == Unsolicited("+CREG", "5", "+CREG: 5")  # after the OK: a code again
    # A part that is not asked on the line stays unsolicited.
    events = feed_all(b"\r\n+CPIN: NOT READY\r\n\r\n+CSQ: 9,99\r\n", command="AT+CSQ;+CREG?")
    assert events == [Unsolicited("+CPIN", "NOT READY", "+CPIN: NOT READY"), Info("+CSQ: 9,99")]


def test_command_prefixes_split_outside_quotes() -> None:
    assert command_prefixes("AT+CSQ") == ("+CSQ",)
    assert command_prefixes("at+csq;+creg?;+CPIN?") == ("+CSQ", "+CREG", "+CPIN")
    assert command_prefixes('AT+CUSD=1,"*100#;1",15;^ICCID?') == ("+CUSD", "^ICCID")
    assert command_prefixes("ATD*100#;") == ()  # a dial string's `;` is not a part
    assert command_prefixes("AT") == ()
