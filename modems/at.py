"""The AT reply parser: bytes from a modem in, typed events out. Pure: no I/O.

`ATReader` splits the byte stream into lines and classifies each one as a
final result, an information line of the pending command, an unsolicited
result code, the `> ` prompt, or an echo of the command. Feeding the same
bytes whole, one byte at a time or glued to other replies gives the same
events, because every decision is made on whole lines.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from .codes import CmeCode

__all__ = [
    "ATReader",
    "Echo",
    "Event",
    "Final",
    "FinalKind",
    "Info",
    "Overflow",
    "Prompt",
    "Unsolicited",
    "command_prefix",
    "command_prefixes",
    "line_name",
    "parse_final",
    "split_args",
    "split_commands",
]


class FinalKind(enum.Enum):
    OK = "OK"
    ERROR = "ERROR"
    CME_ERROR = "+CME ERROR"
    CMS_ERROR = "+CMS ERROR"
    NOT_SUPPORTED = "COMMAND NOT SUPPORT"  # Huawei's answer to an unknown command
    TOO_MANY_PARAMETERS = "TOO MANY PARAMETERS"  # Huawei
    NO_CARRIER = "NO CARRIER"
    BUSY = "BUSY"
    NO_ANSWER = "NO ANSWER"
    NO_DIALTONE = "NO DIALTONE"
    ABORTED = "ABORTED"


@dataclass(frozen=True, slots=True)
class Final:
    """The line that ends a command: `OK` or one of the error results."""

    kind: FinalKind
    text: str
    code: int | None = None

    @property
    def ok(self) -> bool:
        return self.kind is FinalKind.OK


@dataclass(frozen=True, slots=True)
class Info:
    """An information line belonging to the pending command's reply."""

    text: str


@dataclass(frozen=True, slots=True)
class Unsolicited:
    """An unsolicited result code (`+CMTI`, `^RSSI`, `RING`, ...).

    `name` is the code (`+CMTI`), `args` what follows the colon, stripped;
    `body` the second line of the two-line codes (`+CMT`, `+CDS`).
    """

    name: str
    args: str
    text: str
    body: str | None = None


@dataclass(frozen=True, slots=True)
class Prompt:
    """The `> ` prompt asking for a PDU or text after `AT+CMGS`/`AT+CMGW`."""


@dataclass(frozen=True, slots=True)
class Echo:
    """The modem repeated the command line (echo left on, or ATE0 ignored)."""

    text: str


@dataclass(frozen=True, slots=True)
class Overflow:
    """A line longer than the reader's cap was dropped."""

    dropped: int


Event = Final | Info | Unsolicited | Prompt | Echo | Overflow

# Codes that are only ever unsolicited, or unsolicited unless they answer the
# pending command (then the pending command's prefix wins: `+CREG` answers
# `AT+CREG?` and is also sent on its own when registration changes).
URC_NAMES = frozenset(
    {
        "+CMTI", "+CMT", "+CDSI", "+CDS", "+CBM", "+CBMI",
        "+CREG", "+CGREG", "+CEREG", "+C5GREG",
        "+CPIN", "+CUSD", "+CRING", "+CLIP", "+CCWA", "+CSSU", "+CIEV", "+CTZV",
        "+CFUN", "+QIND", "+QUSIM", "+PACSP", "+STIN", "+SIMCARD",
        "^RSSI", "^HRSSILVL", "^BOOT", "^MODE", "^DSFLOWRPT", "^SIMST", "^SRVST",
        "^SYSSTART", "^CEND", "^ORIG", "^CONF", "^CONN", "^STIN", "^NWTIME", "^RFSWITCH",
        "^HCSQ", "^SYSINFOEX", "^NDISSTAT", "^CARDMODE",
        "RING", "RDY", "CALL READY", "SMS READY", "PB DONE", "NORMAL POWER DOWN",
        "UNDER-VOLTAGE POWER DOWN", "UNDER-VOLTAGE WARNNING", "OVER-VOLTAGE POWER DOWN",
    }
)  # fmt: skip
# Two-line codes: the PDU follows on the next line (only with `mt=2`/`ds=1`).
TWO_LINE_URCS = frozenset({"+CMT", "+CDS", "+CBM"})

_BARE_FINALS = {
    "OK": FinalKind.OK,
    "ERROR": FinalKind.ERROR,
    "COMMAND NOT SUPPORT": FinalKind.NOT_SUPPORTED,
    "TOO MANY PARAMETERS": FinalKind.TOO_MANY_PARAMETERS,
    "NO CARRIER": FinalKind.NO_CARRIER,
    "BUSY": FinalKind.BUSY,
    "NO ANSWER": FinalKind.NO_ANSWER,
    "NO DIALTONE": FinalKind.NO_DIALTONE,
    "ABORTED": FinalKind.ABORTED,
}
# Verbose `+CME ERROR: <text>` (AT+CMEE=2, or modems that ignore CMEE=1),
# 3GPP TS 27.007 §9.2, mapped back to their numbers.
_CME_TEXTS = {
    "phone failure": CmeCode.PHONE_FAILURE,
    "operation not allowed": CmeCode.OPERATION_NOT_ALLOWED,
    "operation not supported": CmeCode.OPERATION_NOT_SUPPORTED,
    "sim not inserted": CmeCode.SIM_NOT_INSERTED,
    "sim pin required": CmeCode.SIM_PIN_REQUIRED,
    "sim puk required": CmeCode.SIM_PUK_REQUIRED,
    "sim failure": CmeCode.SIM_FAILURE,
    "sim busy": CmeCode.SIM_BUSY,
    "sim wrong": CmeCode.SIM_WRONG,
    "incorrect password": CmeCode.INCORRECT_PASSWORD,
    "memory full": CmeCode.MEMORY_FULL,
    "invalid index": CmeCode.INVALID_INDEX,
    "not found": CmeCode.NOT_FOUND,
    "no network service": CmeCode.NO_NETWORK_SERVICE,
    "network timeout": CmeCode.NETWORK_TIMEOUT,
    "unknown": CmeCode.UNKNOWN,
}
_NAME_RE = re.compile(r"^([+^!$#%*][A-Za-z0-9_]+)\s*(?::\s*(.*))?$")
_COMMAND_RE = re.compile(r"^AT([+^!$#%*][A-Za-z0-9_]+)", re.IGNORECASE)
_PART_RE = re.compile(r"^([+^!$#%*][A-Za-z0-9_]+)")


def command_prefix(command: str) -> str | None:
    """The prefix a command's information lines carry: `AT+CSQ` → `+CSQ`."""
    match = _COMMAND_RE.match(command.strip())
    return match.group(1).upper() if match else None


def split_commands(body: str) -> list[str]:
    """`+CSQ;+CREG?` → [`+CSQ`, `+CREG?`]: the commands of a V.250 concatenated line
    (after its `AT`), quotes respected (`;` inside them does not split), empty ones dropped."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in body:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if current or parts:
        parts.append("".join(current))
    return [p for p in parts if p.strip()] if parts else []


@functools.lru_cache(maxsize=512)
def command_prefixes(command: str) -> tuple[str, ...]:
    """The prefixes a command line's answers carry, in order: a V.250 concatenated
    line (`AT+CSQ;+CREG?`) has one per part (`+CSQ`, `+CREG`); `;` in quotes does
    not split. Cached: a modem's health checks send the same few lines forever."""
    line = command.strip()
    if ";" not in line:
        prefix = command_prefix(line)
        return (prefix,) if prefix else ()
    if line[:2].upper() != "AT":
        return ()
    matches = (_PART_RE.match(part.strip()) for part in split_commands(line[2:]))
    return tuple(match.group(1).upper() for match in matches if match)


def line_name(line: str) -> tuple[str, str] | None:
    """Split `+CMTI: "SM",3` into (`+CMTI`, `"SM",3`); None if the line has no name."""
    match = _NAME_RE.match(line)
    if match:
        return match.group(1).upper(), (match.group(2) or "").strip()
    upper = line.upper()
    if upper in URC_NAMES:
        return upper, ""
    return None


def parse_final(line: str) -> Final | None:
    """Recognise a final result line; None for anything else."""
    upper = line.upper()
    kind = _BARE_FINALS.get(upper)
    if kind is not None:
        return Final(kind, line)
    for prefix, kind in (("+CME ERROR", FinalKind.CME_ERROR), ("+CMS ERROR", FinalKind.CMS_ERROR)):
        if upper.startswith(prefix):
            rest = line[len(prefix) :].lstrip(" :").strip()
            code: int | None
            if rest.isdigit():
                code = int(rest)
            else:
                code = _CME_TEXTS.get(rest.lower()) if kind is FinalKind.CME_ERROR else None
            return Final(kind, line, code)
    return None


def split_args(args: str) -> list[str]:
    """Split the comma-separated fields of a reply, keeping quoted commas, unquoting.

    `"SM",3` → [`SM`, `3`]; `0,,23` → [`0`, ``, `23`]; an empty string → [].
    """
    if not args:
        return []
    fields: list[str] = []
    current: list[str] = []
    quoted = False
    for char in args:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            fields.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    fields.append("".join(current).strip())
    return fields


class ATReader:
    """Incremental reader: `feed()` bytes, get events. Knows the pending command.

    The caller says which command is in flight with `begin()`; a final result
    ends it (`pending` goes back to None by itself, so a reply and a code that
    follows it in one chunk are told apart). Lines beyond `max_line` bytes are
    dropped and reported as `Overflow`, so a modem spewing garbage without line
    ends cannot grow the buffer without bound.
    """

    def __init__(self, max_line: int = 8192) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._discarding = 0  # bytes dropped from an overlong line, until its end
        self._pending: str | None = None
        self._pending_prefixes: tuple[str, ...] = ()
        self._two_line: Unsolicited | None = None

    @property
    def pending(self) -> str | None:
        return self._pending

    def begin(self, command: str, prefix: str | None = None) -> None:
        self._pending = command.strip()
        self._pending_prefixes = (prefix.upper(),) if prefix else command_prefixes(command)

    def end(self) -> None:
        self._pending = None
        self._pending_prefixes = ()

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for byte in data:
            if byte in (0x0D, 0x0A):
                if self._discarding:
                    events.append(Overflow(self._discarding))
                    self._discarding = 0
                elif self._buffer:
                    line = self._buffer.decode("latin-1").strip()
                    self._buffer.clear()
                    if line:
                        self._classify(line, events)
                continue
            if byte == 0:
                continue
            if self._discarding:
                self._discarding += 1
                continue
            self._buffer.append(byte)
            if len(self._buffer) > self.max_line:
                self._discarding = len(self._buffer)
                self._buffer.clear()
            elif self._buffer == b">" and self._two_line is None:
                # `\r\n> ` has no line end after it: the prompt is the only
                # thing recognised before a line is complete.
                self._buffer.clear()
                events.append(Prompt())
        return events

    def _classify(self, line: str, events: list[Event]) -> None:
        if self._two_line is not None:
            first, self._two_line = self._two_line, None
            events.append(Unsolicited(first.name, first.args, first.text, body=line))
            return
        pending = self._pending
        if pending is not None and line.upper() == pending.upper():
            events.append(Echo(line))
            return
        final = parse_final(line)
        if final is not None:
            if final.kind is FinalKind.NO_CARRIER and pending is None:
                events.append(Unsolicited("NO CARRIER", "", line))
                return
            self.end()
            events.append(final)
            return
        named = line_name(line)
        if named is not None:
            name, args = named
            is_reply = pending is not None and name in self._pending_prefixes
            if not is_reply and (name in URC_NAMES or pending is None):
                urc = Unsolicited(name, args, line)
                if name in TWO_LINE_URCS:
                    self._two_line = urc
                else:
                    events.append(urc)
                return
        if pending is None:
            # Nothing asked for it: a stray line (a late reply, a boot banner,
            # line noise). The owner logs it; it never reaches a command.
            events.append(Unsolicited("", line, line))
            return
        events.append(Info(line))
