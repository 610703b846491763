"""SMS PDUs (3GPP TS 23.040) in and out. Pure functions, frozen results.

Done here rather than with python-gsmmodem's `gsmmodem.pdu` because that
module gets it wrong in the field (docs/modems.md): it reads any data coding
scheme outside group 00xx as GSM-7 (so UCS-2 with DCS 0x48, 0x18 or in the
message-waiting groups comes out garbled), it turns each UCS-2 unit into a
character on its own (breaking emoji), it does not validate lengths, so a
broken PDU can raise anything, and its GSM-7 tables differ from TS 23.038
(`modems.gsm7` holds ours, national language tables included). Here the DCS
is read per TS 23.038, UCS-2 parts keep their raw bytes so that a multipart
message is decoded once after joining, a garbled time stamp costs only the
time stamp, and every malformed input raises `PduError`.
"""

from __future__ import annotations

import binascii
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from . import gsm7
from .bcd import swap_nibbles
from .errors import PduError

__all__ = [
    "Alphabet",
    "Concat",
    "DecodedPdu",
    "SmsDeliver",
    "SmsSubmit",
    "StatusReport",
    "decode_pdu",
    "decode_ucs2",
    "encode_deliver",
    "encode_deliver_parts",
    "gsm7_decode",
    "gsm7_septets",
    "pack_septets",
    "unpack_septets",
]

_BCD_EXTRA = {0xA: "*", 0xB: "#", 0xC: "a", 0xD: "b", 0xE: "c"}
_MAX_ADDRESS_DIGITS = 20  # TS 23.040 §9.1.2.5: at most 12 octets of address value


class Alphabet(enum.Enum):
    GSM7 = "gsm7"
    DATA8 = "8bit"
    UCS2 = "ucs2"


@dataclass(frozen=True, slots=True)
class Concat:
    """A concatenated-SMS information element (IEI 0x00: 8-bit, 0x08: 16-bit ref)."""

    reference: int
    total: int
    sequence: int
    bits: int = 8


@dataclass(frozen=True, slots=True)
class SmsDeliver:
    """A received message (SMS-DELIVER): one part, if it is a multipart message.

    `user_data` is the message body after the header: GSM-7 septets unpacked
    one per byte, 8-bit data as is, or raw UTF-16-BE bytes for UCS-2 (joined
    across parts before decoding, so an emoji split between two parts
    survives). `text` is this part decoded on its own. `locking_shift` and
    `single_shift` are the national language tables the header named for
    GSM-7 (TS 23.038 Annex A; 0: the default alphabet and extension table).
    `timestamp` is naive when the time zone octet is garbled (zone unknown)
    and None when the date itself is.
    """

    sender: str
    text: str
    alphabet: Alphabet
    user_data: bytes
    timestamp: datetime | None
    smsc: str | None = None
    dcs: int = 0
    pid: int = 0
    message_class: int | None = None
    concat: Concat | None = None
    ports: tuple[int, int] | None = None  # application port addressing: a binary/WAP message
    udh: tuple[tuple[int, bytes], ...] = field(default=())
    locking_shift: int = 0
    single_shift: int = 0

    @property
    def is_binary(self) -> bool:
        return self.ports is not None or self.alphabet is Alphabet.DATA8


@dataclass(frozen=True, slots=True)
class StatusReport:
    """SMS-STATUS-REPORT: the network's receipt for a message this SIM sent.

    Its time stamps follow `SmsDeliver.timestamp`: naive when the zone is
    garbled, None when the date is.
    """

    recipient: str
    reference: int
    timestamp: datetime | None
    discharge: datetime | None
    status: int
    smsc: str | None = None


@dataclass(frozen=True, slots=True)
class SmsSubmit:
    """SMS-SUBMIT found in storage: a message written or sent from this SIM."""

    recipient: str
    text: str
    alphabet: Alphabet
    reference: int
    smsc: str | None = None
    concat: Concat | None = None


DecodedPdu = SmsDeliver | StatusReport | SmsSubmit


class _Reader:
    """Bounds-checked cursor over PDU octets: running off the end is a PduError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise PduError(f"PDU ends before {what} (octet {self.pos})")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > len(self.data):
            raise PduError(
                f"PDU ends inside {what}: needs {count} octets at {self.pos}, has {len(self.data)}"
            )
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def rest(self) -> bytes:
        return self.data[self.pos :]


def decode_pdu(pdu: str | bytes) -> DecodedPdu:
    """Decode a PDU as `AT+CMGR`/`AT+CMGL` give it (hex, SMSC address first)."""
    if isinstance(pdu, str):
        try:
            # Some modems wrap the PDU line in stray quotes (seen in Gammu's dumps).
            raw = binascii.unhexlify(pdu.strip().strip('"').strip())
        except (binascii.Error, ValueError) as exc:
            raise PduError(f"PDU is not hexadecimal: {exc}") from None
    else:
        raw = bytes(pdu)
    if not raw:
        raise PduError("empty PDU")
    reader = _Reader(raw)
    smsc = _smsc_address(reader)
    first = reader.byte("first octet")
    mti = first & 0x03
    if mti == 0x00:
        return _deliver(reader, first, smsc)
    if mti == 0x01:
        return _submit(reader, first, smsc)
    if mti == 0x02:
        return _status_report(reader, smsc)
    raise PduError(f"reserved message type indicator in first octet {first:#04x}")


def _smsc_address(reader: _Reader) -> str | None:
    length = reader.byte("SMSC length")
    if length == 0:
        return None
    if length > 12:
        raise PduError(f"SMSC address of {length} octets (at most 12)")
    toa = reader.byte("SMSC type of address")
    _check_toa(toa, "SMSC")
    digits = _bcd(reader.take(length - 1, "SMSC address"))
    return _with_plus(toa, digits) if digits else None


def _address(reader: _Reader, what: str) -> tuple[str, int]:
    digits = reader.byte(f"{what} length")
    toa = reader.byte(f"{what} type of address")
    _check_toa(toa, what)
    if digits > _MAX_ADDRESS_DIGITS:
        raise PduError(f"{what} of {digits} digits (at most {_MAX_ADDRESS_DIGITS})")
    value = reader.take((digits + 1) // 2, what)
    if toa & 0x70 == 0x50:
        # Alphanumeric sender (e.g. "VK"): GSM-7 septets packed into the digits' octets.
        return gsm7_decode(unpack_septets(value, digits * 4 // 7)), toa
    return _with_plus(toa, _bcd(value)[:digits]), toa


def _check_toa(toa: int, what: str) -> None:
    if not toa & 0x80:
        # TS 23.040 §9.1.2.5: bit 7 of the type of address is always 1.
        raise PduError(f"{what} type of address {toa:#04x} lacks its extension bit")


def _with_plus(toa: int, digits: str) -> str:
    return "+" + digits if toa & 0x70 == 0x10 and digits else digits


def _bcd(octets: bytes) -> str:
    out: list[str] = []
    for octet in octets:
        for nibble in (octet & 0x0F, octet >> 4):
            if nibble == 0x0F:
                return "".join(out)
            out.append(str(nibble) if nibble < 10 else _BCD_EXTRA[nibble])
    return "".join(out)


def _timestamp(reader: _Reader, what: str) -> datetime | None:
    """A time stamp (TS 23.040 §9.2.3.11): a garbled one costs the time stamp, never the message.

    Real modems deliver time zone octets such as C2 (a non-decimal digit): the
    time is then kept without a zone (a naive datetime). A non-decimal digit
    or an impossible value in the date and time fields gives None.
    """
    octets = reader.take(7, what)
    values = []
    for octet in octets[:6]:
        low, high = octet & 0x0F, octet >> 4
        if low > 9 or high > 9:
            return None
        values.append(low * 10 + high)
    year, month, day, hour, minute, second = values
    try:
        local = datetime(
            2000 + year if year < 90 else 1900 + year, month, day, hour, minute, second
        )
    except ValueError:
        return None
    # Low nibble: sign (bit 3) and tens of quarter hours (3 bits, always decimal); high: units.
    zone = octets[6]
    tens, units = zone & 0x07, zone >> 4
    if units > 9:
        return local
    offset = timedelta(minutes=15 * (tens * 10 + units))
    return local.replace(tzinfo=timezone(-offset if zone & 0x08 else offset))


def _coding(dcs: int) -> tuple[Alphabet, int | None]:
    """The alphabet and message class of a data coding scheme, per TS 23.038 §4."""
    group = dcs >> 4
    if group <= 0x7:  # 00xx general / 01xx automatic deletion: same layout
        if dcs & 0x20:
            raise PduError(f"compressed user data (DCS {dcs:#04x}) is not supported")
        alphabet = (Alphabet.GSM7, Alphabet.DATA8, Alphabet.UCS2, Alphabet.GSM7)[(dcs >> 2) & 3]
        return alphabet, (dcs & 0x03) if dcs & 0x10 else None
    if group in (0xC, 0xD):  # message waiting indication, discard / store: GSM-7
        return Alphabet.GSM7, None
    if group == 0xE:  # message waiting indication, store: UCS-2
        return Alphabet.UCS2, None
    if group == 0xF:  # data coding / message class
        return (Alphabet.DATA8 if dcs & 0x04 else Alphabet.GSM7), dcs & 0x03
    # 1000..1011: reserved; TS 23.038 says treat as the GSM 7-bit default alphabet.
    return Alphabet.GSM7, None


def unpack_septets(octets: bytes, count: int) -> bytes:
    out = bytearray()
    for index in range(count):
        bit = index * 7
        byte, shift = divmod(bit, 8)
        if byte >= len(octets):
            break
        value = octets[byte] >> shift
        if shift > 1 and byte + 1 < len(octets):
            value |= octets[byte + 1] << (8 - shift)
        out.append(value & 0x7F)
    return bytes(out)


def pack_septets(septets: bytes, fill_bits: int = 0) -> bytes:
    value = 0
    for index, septet in enumerate(septets):
        value |= (septet & 0x7F) << (fill_bits + index * 7)
    total_bits = fill_bits + len(septets) * 7
    return value.to_bytes((total_bits + 7) // 8, "little")


def gsm7_decode(septets: bytes, locking_shift: int = 0, single_shift: int = 0) -> str:
    """GSM-7 septets, one per byte, in the national language tables given (0: default)."""
    return gsm7.decode(septets, locking_shift, single_shift)


def decode_ucs2(data: bytes) -> str:
    """UTF-16-BE, as UCS-2 SMS bodies really are (emoji come as surrogate pairs)."""
    if len(data) % 2:
        data = data[:-1]
    return data.decode("utf-16-be", errors="replace")


@dataclass(frozen=True, slots=True)
class _UserData:
    text: str
    body: bytes
    header: tuple[tuple[int, bytes], ...]
    concat: Concat | None
    ports: tuple[int, int] | None
    locking_shift: int = 0
    single_shift: int = 0


def _user_data(reader: _Reader, first: int, alphabet: Alphabet) -> _UserData:
    udl = reader.byte("user data length")
    has_udh = bool(first & 0x40)
    if alphabet is Alphabet.GSM7:
        octet_count = (udl * 7 + 7) // 8
        if udl > 160:
            raise PduError(f"user data length {udl} septets (at most 160)")
    else:
        octet_count = udl
        if udl > 140:
            raise PduError(f"user data length {udl} octets (at most 140)")
    # A user data shorter than its length says is decoded as far as it goes
    # (seen from real modems): a truncated text beats a lost message.
    data = reader.rest()[:octet_count]
    if alphabet is Alphabet.GSM7:
        udl = min(udl, len(data) * 8 // 7)
    header: tuple[tuple[int, bytes], ...] = ()
    header_octets = 0
    if has_udh and data:
        header_len = data[0]
        if header_len + 1 > len(data):
            raise PduError(f"user data header of {header_len} octets overruns the user data")
        header = _parse_udh(data[1 : 1 + header_len])
        header_octets = header_len + 1
    concat, ports = _udh_meaning(header)
    if alphabet is Alphabet.GSM7:
        skip = (header_octets * 8 + 6) // 7
        septets = unpack_septets(data, udl)[skip:]
        locking, single = _national_language(header)
        text = gsm7_decode(septets, locking, single)
        return _UserData(text, septets, header, concat, ports, locking, single)
    body = data[header_octets:]
    if alphabet is Alphabet.UCS2:
        return _UserData(decode_ucs2(body), body, header, concat, ports)
    return _UserData(body.decode("latin-1"), body, header, concat, ports)


def _parse_udh(header: bytes) -> tuple[tuple[int, bytes], ...]:
    elements = []
    pos = 0
    while pos < len(header):
        if pos + 2 > len(header):
            raise PduError("truncated information element in the user data header")
        iei, length = header[pos], header[pos + 1]
        if pos + 2 + length > len(header):
            raise PduError(f"information element {iei:#04x} overruns the user data header")
        elements.append((iei, bytes(header[pos + 2 : pos + 2 + length])))
        pos += 2 + length
    return tuple(elements)


def _udh_meaning(
    header: tuple[tuple[int, bytes], ...],
) -> tuple[Concat | None, tuple[int, int] | None]:
    concat = None
    ports = None
    for iei, data in header:
        if iei == 0x00 and len(data) == 3:
            candidate = Concat(data[0], data[1], data[2], 8)
        elif iei == 0x08 and len(data) == 4:
            candidate = Concat((data[0] << 8) | data[1], data[2], data[3], 16)
        elif iei == 0x04 and len(data) == 2:
            ports = (data[1], data[0])
            continue
        elif iei == 0x05 and len(data) == 4:
            ports = ((data[2] << 8) | data[3], (data[0] << 8) | data[1])
            continue
        else:
            continue
        # TS 23.040 §9.2.3.24.1: a zero total or an out-of-range sequence
        # means the element is to be ignored (the part stands alone).
        if candidate.total >= 1 and 1 <= candidate.sequence <= candidate.total:
            concat = candidate
    return concat, ports


def _national_language(header: tuple[tuple[int, bytes], ...]) -> tuple[int, int]:
    """The locking and single shift tables a GSM-7 header names (TS 23.040 §9.2.3.24.15-16).

    IEI 0x25 names the locking shift table, 0x24 the single shift table; each
    part of a multipart message carries its own. An identifier without a
    table decodes with the default one (`modems.gsm7`).
    """
    locking = single = 0
    for iei, data in header:
        if iei == 0x25 and len(data) == 1:
            locking = data[0]
        elif iei == 0x24 and len(data) == 1:
            single = data[0]
    return locking, single


def _deliver(reader: _Reader, first: int, smsc: str | None) -> SmsDeliver:
    sender, _ = _address(reader, "originating address")
    pid = reader.byte("protocol identifier")
    dcs = reader.byte("data coding scheme")
    alphabet, message_class = _coding(dcs)
    timestamp = _timestamp(reader, "service centre time stamp")
    user = _user_data(reader, first, alphabet)
    return SmsDeliver(
        sender=sender,
        text=user.text,
        alphabet=alphabet,
        user_data=user.body,
        timestamp=timestamp,
        smsc=smsc,
        dcs=dcs,
        pid=pid,
        message_class=message_class,
        concat=user.concat,
        ports=user.ports,
        udh=user.header,
        locking_shift=user.locking_shift,
        single_shift=user.single_shift,
    )


def _submit(reader: _Reader, first: int, smsc: str | None) -> SmsSubmit:
    reference = reader.byte("message reference")
    recipient, _ = _address(reader, "destination address")
    reader.byte("protocol identifier")
    dcs = reader.byte("data coding scheme")
    alphabet, _ = _coding(dcs)
    validity_format = (first >> 3) & 0x03
    if validity_format == 0x02:
        reader.byte("validity period")
    elif validity_format in (0x01, 0x03):
        reader.take(7, "validity period")
    user = _user_data(reader, first, alphabet)
    return SmsSubmit(recipient, user.text, alphabet, reference, smsc, user.concat)


def _status_report(reader: _Reader, smsc: str | None) -> StatusReport:
    reference = reader.byte("message reference")
    recipient, _ = _address(reader, "recipient address")
    timestamp = _timestamp(reader, "service centre time stamp")
    discharge = _timestamp(reader, "discharge time")
    status = reader.byte("status")
    return StatusReport(recipient, reference, timestamp, discharge, status, smsc)


# --- encoding (the emulator's side: what a network would deliver) -----------------


def gsm7_septets(text: str) -> bytes | None:
    """The text in the GSM-7 default alphabet (escapes included), or None if it does not fit."""
    return gsm7.encode(text)


def _encode_address(number: str) -> bytes:
    if number and not number.lstrip("+").isdigit():
        septets = gsm7_septets(number[:11])
        if septets is None:
            raise ValueError(f"sender {number!r} is not GSM-7")
        packed = pack_septets(septets)
        return bytes((len(packed) * 2, 0xD0)) + packed
    digits = number.lstrip("+")
    toa = 0x91 if number.startswith("+") else 0x81
    octets = bytes.fromhex(swap_nibbles(digits))
    return bytes((len(digits), toa)) + octets


def _encode_timestamp(when: datetime) -> bytes:
    offset = when.utcoffset() or timedelta(0)
    quarters = int(abs(offset.total_seconds()) // 900)
    fields = [when.year % 100, when.month, when.day, when.hour, when.minute, when.second]
    out = bytearray((value % 10) << 4 | (value // 10) for value in fields)
    tz = (quarters % 10) << 4 | (quarters // 10)
    out.append(tz | (0x08 if offset < timedelta(0) else 0))
    return bytes(out)


def encode_deliver(
    sender: str,
    body: bytes,
    *,
    alphabet: Alphabet,
    timestamp: datetime | None = None,
    concat: Concat | None = None,
    dcs: int | None = None,
    smsc: str = "+79168999100",
) -> str:
    """One SMS-DELIVER PDU as hex. `body` is GSM-7 septets, UTF-16-BE or raw octets."""
    smsc_field = _encode_address(smsc)
    smsc_octets = bytes((len(smsc_field) - 1,)) + smsc_field[1:]
    header = b""
    if concat is not None:
        if concat.bits == 16:
            element = bytes((0x08, 4, concat.reference >> 8, concat.reference & 0xFF))
        else:
            element = bytes((0x00, 3, concat.reference & 0xFF))
        element += bytes((concat.total, concat.sequence))
        header = bytes((len(element),)) + element
    first = 0x04 | (0x40 if header else 0)  # SMS-DELIVER, no more messages to send
    if dcs is None:
        dcs = {Alphabet.GSM7: 0x00, Alphabet.DATA8: 0x04, Alphabet.UCS2: 0x08}[alphabet]
    if alphabet is Alphabet.GSM7:
        fill = (7 - (len(header) * 8) % 7) % 7
        user_data = header + pack_septets(body, fill) if header else pack_septets(body)
        udl = (len(header) * 8 + fill) // 7 + len(body)
    else:
        user_data = header + body
        udl = len(user_data)
    when = timestamp or datetime.now(UTC)
    tpdu = (
        bytes((first,))
        + _encode_address(sender)
        + bytes((0x00, dcs))
        + _encode_timestamp(when)
        + bytes((udl,))
        + user_data
    )
    return (smsc_octets + tpdu).hex().upper()


def encode_deliver_parts(
    sender: str,
    text: str,
    *,
    reference: int = 0,
    reference_bits: int = 8,
    ucs2: bool | None = None,
    timestamp: datetime | None = None,
) -> list[str]:
    """PDUs for `text`: one if it fits, else a concatenated series.

    UCS-2 parts are cut every 134 (132) bytes of UTF-16-BE without regard to
    surrogate pairs, as some senders do: an emoji may be split across parts.
    GSM-7 parts never split an escape sequence.
    """
    septets = None if ucs2 else gsm7_septets(text)
    if septets is None:
        raw = text.encode("utf-16-be")
        if len(raw) <= 140:
            return [encode_deliver(sender, raw, alphabet=Alphabet.UCS2, timestamp=timestamp)]
        size = 134 if reference_bits == 8 else 132  # 140 octets less the header, even
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
        alphabet = Alphabet.UCS2
    else:
        if len(septets) <= 160:
            return [encode_deliver(sender, septets, alphabet=Alphabet.GSM7, timestamp=timestamp)]
        chunks = []
        start = 0
        limit = 153 if reference_bits == 8 else 152
        while start < len(septets):
            end = min(start + limit, len(septets))
            if end < len(septets) and septets[end - 1] == 0x1B:
                end -= 1
            chunks.append(septets[start:end])
            start = end
        alphabet = Alphabet.GSM7
    return [
        encode_deliver(
            sender,
            chunk,
            alphabet=alphabet,
            timestamp=timestamp,
            concat=Concat(reference, len(chunks), index + 1, reference_bits),
        )
        for index, chunk in enumerate(chunks)
    ]
