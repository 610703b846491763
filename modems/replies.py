"""Pure parsers for the information lines of the AT commands the modem layer uses.

Each takes the text after `+NAME:` (or the bare line) and returns plain
values; anything malformed raises `ParseError`, never another exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .at import split_args
from .bcd import swap_nibbles
from .codes import REGISTERED
from .errors import ParseError

__all__ = [
    "Registration",
    "choose_cnmi",
    "digits_of",
    "iccid_from_crsm",
    "normalize_iccid",
    "parse_cnmi_ranges",
    "parse_cops_numeric",
    "parse_cpms_options",
    "parse_cpms_usage",
    "parse_creg",
    "parse_csq",
    "parse_list_entry",
    "parse_number_entry",
    "split_imsi",
]

# Countries whose networks use 3-digit MNCs (ITU-T E.212): North America,
# parts of Latin America and the Caribbean. Everyone else uses 2 digits.
_THREE_DIGIT_MNC = frozenset(
    {302, 310, 311, 312, 313, 314, 315, 316, 334, 338, 342, 344, 346, 348, 350, 352, 354,
     356, 358, 360, 365, 366, 376, 405, 708, 710, 722, 732, 738, 750}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Registration:
    status: int
    lac: str | None = None
    cell: str | None = None
    act: int | None = None

    @property
    def registered(self) -> bool:
        return self.status in REGISTERED


def _int(value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ParseError(f"{what}: {value!r} is not a number") from None


def parse_csq(args: str) -> tuple[int, int]:
    """`+CSQ: 21,99` → (rssi 0-31 or 99, ber)."""
    fields = split_args(args)
    if len(fields) < 2:
        raise ParseError(f"+CSQ: {args!r} has no two fields")
    rssi, ber = _int(fields[0], "+CSQ rssi"), _int(fields[1], "+CSQ ber")
    if not (0 <= rssi <= 31 or rssi == 99):
        raise ParseError(f"+CSQ rssi {rssi} out of range")
    return rssi, ber


def parse_creg(args: str) -> Registration:
    """`+CREG?` answers (`n,stat[,lac,ci[,act]]`) and the URC form (`stat[,lac,ci]`).

    Huawei sends lac/ci unquoted (`2,1,4CA,81DE445`); Siemens and Telit quote
    them. With one or with an odd split the first field can only be `stat`.
    """
    fields = split_args(args)
    if not fields or not fields[0]:
        raise ParseError(f"+CREG: {args!r} is empty")
    numbers_first = [f for f in fields[:2] if f.isdigit()]
    if len(fields) >= 2 and len(numbers_first) == 2:
        status_field, rest = fields[1], fields[2:]
    else:
        status_field, rest = fields[0], fields[1:]
    status = _int(status_field, "+CREG stat")
    if not 0 <= status <= 10:
        raise ParseError(f"+CREG stat {status} out of range")
    lac = rest[0] or None if rest else None
    cell = rest[1] or None if len(rest) > 1 else None
    act = _int(rest[2], "+CREG AcT") if len(rest) > 2 and rest[2] else None
    return Registration(status, lac, cell, act)


def parse_cops_numeric(args: str) -> str | None:
    """`+COPS: 0,2,"25001",7` → `25001`; None when not registered (`+COPS: 0`)."""
    fields = split_args(args)
    if len(fields) < 3:
        return None
    if fields[1] != "2":
        raise ParseError(f"+COPS: {args!r} is not in numeric format")
    oper = fields[2]
    if not oper.isdigit() or len(oper) not in (5, 6):
        raise ParseError(f"+COPS operator {oper!r} is not an MCC+MNC")
    return oper


def split_imsi(imsi: str) -> tuple[str, str]:
    """The home MCC and MNC of an IMSI (what the SIM belongs to, even when roaming)."""
    if not imsi.isdigit() or not 6 <= len(imsi) <= 15:
        raise ParseError(f"IMSI {imsi!r} is not 6-15 digits")
    mcc = imsi[:3]
    mnc_len = 3 if int(mcc) in _THREE_DIGIT_MNC else 2
    return mcc, imsi[3 : 3 + mnc_len]


def normalize_iccid(value: str) -> str:
    """An ICCID from any vendor's answer: digits only, trailing `F` filler dropped."""
    text = value.strip().strip('"').strip().upper()
    if text.startswith("ICCID:"):
        text = text[6:].strip().strip('"')
    if text.startswith("98") and len(text) % 2 == 0:
        # Huawei's ^ICCID? gives the raw nibble-swapped EF_ICCID (ModemManager
        # checks for the same "98"): every ICCID starts 89 (telecom, ITU-T E.118).
        text = swap_nibbles(text)
    text = text.rstrip("F")
    if not text.isdigit() or not 18 <= len(text) <= 20:
        raise ParseError(f"ICCID {value!r} is not 18-20 digits")
    return text


def iccid_from_crsm(args: str) -> str:
    """`+CRSM: 144,0,"98101430121181157002"`: EF_ICCID read raw, nibbles swapped."""
    fields = split_args(args)
    if len(fields) < 3 or fields[0] not in ("144", "145"):
        raise ParseError(f"+CRSM: {args!r} is not a successful read")
    raw = fields[2]
    if len(raw) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", raw):
        raise ParseError(f"+CRSM data {raw!r} is not hex")
    return normalize_iccid(swap_nibbles(raw))


def digits_of(value: str | None) -> str | None:
    """The digits of an answer (`+CGSN: "35…"`, an IMSI line), None if it has none."""
    if not value:
        return None
    digits = "".join(ch for ch in value if ch.isdigit())
    return digits or None


def parse_number_entry(args: str) -> str | None:
    """A number from `+CNUM: "","+79281234567",145` or `+CPBR: 1,"79281234567",129,"Own"`."""
    fields = split_args(args)
    for candidate in fields[:3]:
        digits = candidate.lstrip("+")
        if digits.isdigit() and 6 <= len(digits) <= 15:
            return digits
    return None


def parse_cpms_options(args: str) -> list[str]:
    """The storages `AT+CPMS=?` offers for reading (its first group).

    Handles `("SM","ME"),(...)`, the parenthesis-less `"SM","SM","SM"` (iWOW),
    spaces after commas (Alcatel) and an empty answer (Samsung: []).
    """
    text = args.strip()
    if not text:
        return []
    if text.startswith("("):
        end = text.find(")")
        if end < 0:
            raise ParseError(f"+CPMS: {args!r} has an unclosed group")
        return [f for f in split_args(text[1:end]) if f]
    return [f for f in split_args(text) if f][:1]


def parse_cpms_usage(args: str) -> tuple[int, int]:
    """`+CPMS: 3,30,3,30,3,30` (after setting) or `+CPMS: "SM",3,30,...` → (used, total)."""
    fields = [f for f in split_args(args) if f]
    numbers = [f for f in fields if f.isdigit()]
    if len(numbers) < 2:
        raise ParseError(f"+CPMS: {args!r} has no used/total")
    return int(numbers[0]), int(numbers[1])


def parse_cnmi_ranges(args: str) -> list[set[int]]:
    """`+CNMI: (2),(0-1,3),(0,2),(0-1),(0)` → the allowed values of each parameter."""
    groups = re.findall(r"\(([^)]*)\)", args)
    if not groups:
        raise ParseError(f"+CNMI: {args!r} has no value ranges")
    out: list[set[int]] = []
    for group in groups:
        values: set[int] = set()
        for raw_item in group.split(","):
            item = raw_item.strip()
            if not item:
                continue
            if "-" in item:
                low, high = item.split("-", 1)
                values.update(range(_int(low, "+CNMI"), _int(high, "+CNMI") + 1))
            else:
                values.add(_int(item, "+CNMI"))
        out.append(values)
    return out


# Tried in order (ModemManager's fallbacks): store and indicate (+CMTI), never mt=2.
CNMI_CANDIDATES: tuple[tuple[int, int, int, int, int], ...] = (
    (2, 1, 0, 0, 0),
    (2, 1, 2, 1, 0),
    (2, 1, 2, 2, 0),
    (2, 1, 2, 0, 0),
    (1, 1, 0, 0, 0),
    (2, 1, 0, 2, 0),
    (2, 1, 0, 1, 0),
)


def choose_cnmi(ranges: list[set[int]] | None) -> list[tuple[int, ...]]:
    """The candidate `AT+CNMI` settings the modem says it accepts, best first.

    With no usable ranges every candidate is returned, to be tried in turn.
    """
    if not ranges:
        return list(CNMI_CANDIDATES)
    fitting: list[tuple[int, ...]] = []
    for candidate in CNMI_CANDIDATES:
        width = min(len(ranges), len(candidate))
        if all(candidate[i] in ranges[i] for i in range(width)):
            fitting.append(candidate[:width])
    return fitting


def parse_list_entry(args: str) -> tuple[int, int | None]:
    """`+CMGL: 3,1,,25` → (index 3, status 1)."""
    fields = split_args(args)
    if not fields or not fields[0]:
        raise ParseError(f"+CMGL: {args!r} has no index")
    status = _int(fields[1], "+CMGL stat") if len(fields) > 1 and fields[1] else None
    return _int(fields[0], "+CMGL index"), status
