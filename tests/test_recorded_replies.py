"""Every reply recorded from real modems (../shared/data/real-modem-replies) is a test case.

Good `AT+CMGR` replies parse and decode to a sender and a text, or are
recognised as a status report, a stored outgoing message or binary data; the
broken ones raise the stack's own errors, never anything else, never a hang.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modems.at import ATReader, Final, Info, line_name
from modems.errors import ModemError, PduError
from modems.pdu import SmsDeliver, SmsSubmit, StatusReport, decode_pdu
from modems.replies import parse_cnmi_ranges, parse_cpms_options, parse_creg
from modems.ussd import parse_cusd

from .conftest import SHARED, shared_dir

REPLIES = SHARED / "data" / "real-modem-replies"


MISSING = (
    f"recorded real-modem replies missing: put the shared data folder at {REPLIES} "
    "(shared/ beside the clone; CI has it)"
)


def dumps(folder: str) -> list[Path]:
    path = REPLIES / folder
    return sorted(path.glob("*.dump")) if path.is_dir() else []


def cases(paths: list[Path]) -> list[Any]:
    """Parameters for the recordings; one skipped case saying what is missing if there are none.

    (An empty list would skip with pytest's "got empty parameter set", which
    says nothing about where the recordings should be.)
    """
    if paths:
        return [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in paths]
    return [pytest.param(None, id="no-recordings", marks=pytest.mark.skip(reason=MISSING))]


def read_reply(path: Path) -> tuple[str, list[str], Final]:
    """Feed a dump through the AT reader as the channel would: command, info lines, final."""
    raw = path.read_bytes()
    command, _, rest = raw.partition(b"\n")
    reader = ATReader()
    reader.begin(command.decode("latin-1").strip())
    lines: list[str] = []
    final: Final | None = None
    for event in reader.feed(rest):
        if isinstance(event, Info):
            lines.append(event.text)
        elif isinstance(event, Final):
            final = event
    assert final is not None, f"{path.name}: no final result"
    return command.decode().strip(), lines, final


def cmgr_pdu(path: Path) -> str:
    command, lines, final = read_reply(path)
    assert command.upper().startswith("AT+CMGR")
    assert final.ok
    assert lines[0].startswith("+CMGR:")
    return lines[-1]


def test_the_recordings_are_here() -> None:
    shared_dir("data", "real-modem-replies")
    assert len(dumps("at-sms")) >= 30
    assert len(dumps("at-sms-failing")) >= 10


@pytest.mark.parametrize("path", cases(dumps("at-sms")))
def test_good_sms_reply_decodes(path: Path) -> None:
    message = decode_pdu(cmgr_pdu(path))
    if isinstance(message, SmsDeliver):
        assert message.sender
        assert isinstance(message.text, str)
        if not message.is_binary:
            assert "\ufffd" not in message.text
    elif isinstance(message, StatusReport):
        assert message.recipient
        assert 0 <= message.status <= 255
    else:
        assert isinstance(message, SmsSubmit)
        assert isinstance(message.text, str)


@pytest.mark.parametrize("path", cases(dumps("at-sms-failing")))
def test_broken_sms_reply_raises_our_error(path: Path) -> None:
    with pytest.raises(PduError):
        decode_pdu(cmgr_pdu(path))


def test_known_texts() -> None:
    shared_dir("data", "real-modem-replies")
    expected = {
        "03.dump": ("+919884280026", "Ok sir"),
        "07.dump": ("+358456709855", "Test"),
        "39.dump": ("9494", "llamada perdida de: +34617653167 on 07/08  at  11:19."),
    }
    for name, (sender, text) in expected.items():
        message = decode_pdu(cmgr_pdu(REPLIES / "at-sms" / name))
        assert isinstance(message, SmsDeliver)
        assert (message.sender, message.text) == (sender, text)
    report = decode_pdu(cmgr_pdu(REPLIES / "at-sms" / "30.dump"))
    assert isinstance(report, StatusReport) and report.recipient == "+666666666666"
    wap = decode_pdu(cmgr_pdu(REPLIES / "at-sms" / "40.dump"))
    assert isinstance(wap, SmsDeliver) and wap.is_binary and wap.ports == (9200, 2948)


def _named(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text(encoding="latin-1").splitlines():
        named = line_name(line.strip())
        if named is not None:
            out.append(named)
    return out


OTHER = [
    p
    for folder in ("at-creg", "at-cnmi", "at-cpms", "at-cpms-sm", "at-cscs-huawei", "at-ussd")
    for p in dumps(folder)
]


@pytest.mark.parametrize("path", cases(OTHER))
def test_other_recordings_parse(path: Path) -> None:
    parsers = {
        "+CREG": parse_creg,
        "+CNMI": parse_cnmi_ranges,
        "+CPMS": parse_cpms_options,
        "+CUSD": parse_cusd,
    }
    for name, args in _named(path):
        parser = parsers.get(name)
        if parser is None:
            continue
        try:
            parser(args)
        except ModemError:
            continue  # refused with our own error: acceptable for odd replies


def test_specific_recordings() -> None:
    shared_dir("data", "real-modem-replies")
    creg = {p.name: parse_creg(a) for p in dumps("at-creg") for n, a in _named(p) if n == "+CREG"}
    assert creg["huawei.dump"].status == 1 and creg["huawei.dump"].lac == "4CA"
    assert creg["sierra312u.dump"].status == 5 and creg["sierra312u.dump"].act == 2
    assert creg["none.dump"].status == 0
    [(_, samsung)] = _named(REPLIES / "at-cpms" / "samsung-j700.dump")
    assert parse_cpms_options(samsung) == []
    [(_, iwow)] = _named(REPLIES / "at-cpms-sm" / "iwow.dump")
    assert parse_cpms_options(iwow) == ["SM"]
    ussd = parse_cusd(_named(REPLIES / "at-ussd" / "issue109-E3276.dump")[0][1])
    assert ussd.text.startswith("Для справки о балансе")
    e160 = parse_cusd(_named(REPLIES / "at-ussd" / "02-E160.dump")[0][1])
    assert e160.text.startswith("Ihr Guthaben für die Nr.")


@pytest.mark.parametrize("path", cases(dumps("at-sms") + dumps("at-sms-failing") + OTHER))
def test_reader_gives_the_same_events_byte_by_byte(path: Path) -> None:
    data = path.read_bytes()
    whole = ATReader().feed(data)
    reader = ATReader()
    bytewise = [event for byte in data for event in reader.feed(bytes([byte]))]
    assert bytewise == whole
    assert whole, f"{path.name}: no events at all"


def test_a_clone_without_shared_says_what_is_missing(tmp_path: Path) -> None:
    """A user's clone has no ../shared: the skips say what is missing and where it goes."""
    root = Path(__file__).resolve().parents[1]
    clone = tmp_path / "clone"
    shutil.copytree(root / "tests", clone / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "pyproject.toml", clone / "pyproject.toml")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_recorded_replies.py", "-k", "not without_shared"],
        cwd=clone,
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(root)},
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "empty parameter set" not in result.stdout
    assert f"recorded real-modem replies missing: put the shared data folder at {tmp_path}" in (
        result.stdout
    )
    assert "skipped" in result.stdout.splitlines()[-1]
