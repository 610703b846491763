"""The USSD capability: one request at a time, the answer taken from `+CUSD`.

`AT+CUSD=1,"*111*0887#",15` is answered `OK` at once; the network's answer
comes seconds later as an unsolicited `+CUSD: m[,"text"[,dcs]]` (some
firmware sends it before the `OK`, as an information line of the command).
The channel is not held while waiting: the answer's future is registered
before the command is written, filled by the modem's unsolicited-code
callback, and waited on under a timeout, so `+CMTI` reading, health checks
and every other command go on meanwhile. A menu (`m=1`) leaves the session
open until `reply()` or `close()` (`AT+CUSD=2`); a new request closes a menu
left open first.

The text's form depends on the modem and `AT+CSCS` (docs/modems.md): plain
text, UCS-2 as hex, or on Huawei GSM 7-bit packed septets as hex (its
requests must be packed the same way, as ModemManager's Huawei plugin
does). `parse_cusd` is pure and decodes every form; the DCS is read as a
cell-broadcast coding scheme (3GPP TS 23.038 §5), which USSD uses.
"""

from __future__ import annotations

import asyncio
import binascii
import re
from dataclasses import dataclass

import structlog

from .at import split_args
from .codes import UssdStatus
from .errors import CommandError, CommandTimeout, ModemDisconnected, ModemError, ParseError
from .pdu import Alphabet, decode_ucs2, gsm7_decode, gsm7_septets, pack_septets, unpack_septets
from .session import Session

__all__ = [
    "UssdAnswer",
    "UssdError",
    "UssdSession",
    "UssdTimeout",
    "cbs_coding",
    "decode_ussd_text",
    "encode_request",
    "parse_cusd",
    "phone_candidates",
]

log = structlog.get_logger("modems.ussd")

DEFAULT_TIMEOUT = 30.0  # networks end a USSD dialogue after about 30 s (TS 24.090 timers)
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
# A USSD string is `*`, `#`, digits and, in a menu reply, short text.
_REQUEST = re.compile(r"[0-9A-Za-z*#+ ]{1,160}")


class UssdError(ModemError):
    """A USSD request the modem refused (`+CME ERROR`, a bad code, no SIM)."""


class UssdTimeout(UssdError):
    """No `+CUSD` answer within the timeout (the network or the modem kept silent)."""


@dataclass(frozen=True, slots=True)
class UssdAnswer:
    """A decoded `+CUSD`: the status (`UssdStatus`), the text and the DCS as sent."""

    status: int
    text: str
    dcs: int | None

    @property
    def menu(self) -> bool:
        """The network waits for a reply: the session stays open until answered or closed."""
        return self.status == UssdStatus.MENU


# -- pure decoding --------------------------------------------------------------------


def cbs_coding(dcs: int | None) -> tuple[Alphabet, int]:
    """The alphabet of a USSD DCS (TS 23.038 §5, the CBS scheme) and its language prefix.

    The prefix is what precedes the text: 3 characters (language and CR) for
    `0x10`, 2 octets (two packed septets) for `0x11`. No DCS reads as 15, the
    GSM 7-bit default alphabet without a language.
    """
    if dcs is None:
        return Alphabet.GSM7, 0
    group = dcs >> 4
    if group in (0x0, 0x2, 0x3):  # languages in the GSM 7-bit default alphabet
        return Alphabet.GSM7, 0
    if group == 0x1:
        if dcs == 0x10:
            return Alphabet.GSM7, 3
        if dcs == 0x11:
            return Alphabet.UCS2, 2
        return Alphabet.GSM7, 0  # reserved: default alphabet
    if group in (0x4, 0x5, 0x6, 0x7, 0x9):  # general data coding; 1001: with a UDH
        return (Alphabet.GSM7, Alphabet.DATA8, Alphabet.UCS2, Alphabet.GSM7)[(dcs >> 2) & 3], 0
    if group == 0xF:
        return (Alphabet.DATA8 if dcs & 0x04 else Alphabet.GSM7), 0
    return Alphabet.GSM7, 0  # reserved groups: treat as the default alphabet (§5)


def _looks_ucs2(octets: bytes) -> bool:
    """UCS-2 of mostly one script: most high bytes are 0x00 (Latin) or 0x04 (Cyrillic)…

    A packed GSM-7 text almost never has every second octet in one small range.
    """
    high = octets[0::2]
    if len(octets) < 4 or len(octets) % 2:
        return False
    common = max(high.count(value) for value in set(high))
    return common * 4 >= len(high) * 3


def _printable_share(text: str) -> float:
    if not text:
        return 0.0
    good = sum(1 for ch in text if ch.isalnum() or ch in " .,:;!?-+*#()/%'\"\r\n=")
    return good / len(text)


def _unpack(octets: bytes) -> str:
    """Packed septets → text, less the padding of a full last octet (TS 23.038 §6.1.2.3.1)."""
    count = len(octets) * 8 // 7
    septets = unpack_septets(octets, count)
    if len(octets) * 8 % 7 == 0 and septets and septets[-1] in (0x0D, 0x00):
        septets = septets[:-1]  # 7 spare bits: CR by the spec, 0 on some firmware
    return gsm7_decode(septets).rstrip("\r\n")


def decode_ussd_text(
    raw: str, dcs: int | None, *, charset: str | None = None, packed: bool = False
) -> str:
    """The text of a `+CUSD` string, whatever form the modem chose.

    `charset` is the modem's `AT+CSCS` setting when known (`GSM`, `IRA`,
    `UCS2`); None decides by the string alone. Hex is decoded only when the
    DCS, the character set or the string itself says so: a balance like
    "1234" is also valid hex.
    """
    alphabet, prefix = cbs_coding(dcs)
    text = raw.strip()
    hexlike = bool(text) and _HEX.fullmatch(text) is not None
    octets = binascii.unhexlify(text) if hexlike else b""
    cs = (charset or "").upper()
    if hexlike and alphabet is Alphabet.UCS2:
        decoded = decode_ucs2(octets[prefix:])
    elif hexlike and alphabet is Alphabet.DATA8:
        try:
            decoded = octets.decode("utf-8")
        except UnicodeDecodeError:
            decoded = octets.decode("latin-1")
    elif hexlike and packed and alphabet is Alphabet.GSM7:
        decoded = _unpack(octets)[prefix:]
    elif hexlike and (cs == "UCS2" or (len(text) >= 8 and _looks_ucs2(octets))):
        # UCS-2 with a GSM DCS: AT+CSCS="UCS2", or Quectel sending UCS-2 with DCS 15.
        decoded = decode_ucs2(octets)
    elif hexlike and cs != "UCS2" and len(text) >= 14 and _printable_share(_unpack(octets)) > 0.85:
        # Huawei: the packed septets themselves, as hex.
        decoded = _unpack(octets)
        decoded = decoded[prefix:] if prefix else decoded
    elif cs == "GSM" and all(ord(ch) < 0x80 for ch in text):
        # AT+CSCS="GSM": the characters are GSM 7-bit codes (`{` is `ä`, TS 27.007 §5.5).
        decoded = gsm7_decode(text.encode("ascii"))[prefix:]
    else:
        decoded = text[prefix:]
    # Some firmware pads the string with NULs and stale buffer bytes after the text.
    return decoded.split("\x00", 1)[0].strip()


def parse_cusd(args: str, *, charset: str | None = None, packed: bool = False) -> UssdAnswer:
    """`+CUSD: m[,"str"[,dcs]]` (what follows the colon) → status, decoded text, DCS."""
    fields = split_args(args)
    if not fields or not fields[0].strip().isdigit():
        raise ParseError(f"+CUSD: {args!r} has no status")
    status = int(fields[0])
    if not 0 <= status <= 5:
        raise ParseError(f"+CUSD status {status} is not 0-5")
    raw = fields[1] if len(fields) > 1 else ""
    dcs_field = fields[2].strip() if len(fields) > 2 else ""
    if dcs_field and not dcs_field.isdigit():
        raise ParseError(f"+CUSD dcs {dcs_field!r} is not a number")
    dcs = int(dcs_field) if dcs_field else None
    if dcs is not None and dcs > 255:
        raise ParseError(f"+CUSD dcs {dcs} is not an octet")
    return UssdAnswer(status, decode_ussd_text(raw, dcs, charset=charset, packed=packed), dcs)


def encode_request(code: str, *, packed: bool) -> str:
    """The string of `AT+CUSD=1,"…",15`: as typed, or packed GSM-7 as hex (Huawei)."""
    if not _REQUEST.fullmatch(code):
        raise UssdError(f"{code!r} is not a USSD string (digits, * and #, or a short reply)")
    if not packed:
        return code
    septets = gsm7_septets(code)
    assert septets is not None  # _REQUEST admits only GSM-7 characters
    octets = pack_septets(septets)
    if len(septets) % 8 == 7:
        # 7 spare bits at the end would read as '@': fill them with CR (TS 23.038 §6.1.2.3.1).
        octets = pack_septets(septets + b"\r")
    return octets.hex().upper()


_CANDIDATE = re.compile(r"\+?\d(?:[ \u00a0\-()]{0,3}\d)*")
_DATE = re.compile(r"\d{4}-\d\d-\d\d|\d\d-\d\d-\d{4}")


def phone_candidates(text: str) -> list[str]:
    """Phone-number-looking runs in a text, as written less the punctuation: `+79161234567`.

    Spaces, dashes and brackets inside a number are dropped; a leading `+`
    is kept (it says the number is international). Runs of under 7 or over
    15 digits, dates, and digits that are part of a word or a USSD code
    (`*111*0887#`) are not candidates; two numbers written one after the
    other with a space are told apart.
    """
    out: list[str] = []
    for match in _CANDIDATE.finditer(text):
        start, end = match.span()
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "*#"):
            continue
        if end < len(text) and (text[end].isalnum() or text[end] in "*#"):
            continue
        if _DATE.fullmatch(match.group().strip()):
            continue
        current = ""
        for token in match.group().split():
            digits = sum(ch.isdigit() for ch in current + token)
            if current and digits > 15:
                out.extend(_candidate(current))
                current = ""
            current += token
        out.extend(_candidate(current))
    return out


def _candidate(run: str) -> list[str]:
    digits = "".join(ch for ch in run if ch.isdigit())
    if not 7 <= len(digits) <= 15:
        return []
    return [("+" if run.lstrip("( ").startswith("+") else "") + digits]


# -- the capability -------------------------------------------------------------------


class UssdSession:
    """USSD on one modem, through its session; fed `+CUSD` codes by the modem."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._lock = asyncio.Lock()
        self._waiter: asyncio.Future[UssdAnswer] | None = None
        self._charset: str | None = None
        self.menu_open = False  # a `+CUSD: 1` came and no reply or close has been sent since
        self.requests = 0
        self.unanswered = 0
        self._log = log.bind(port=session.port)

    # -- fed by the modem -------------------------------------------------------------

    def on_urc(self, args: str) -> None:
        """An unsolicited `+CUSD`: the pending request's answer, or a late one."""
        try:
            answer = parse_cusd(
                args, charset=self._charset, packed=self._session.quirks.ussd_packed
            )
        except ParseError as exc:
            self._log.warning("unreadable +CUSD", error=str(exc))
            return
        self.menu_open = answer.menu
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)
        else:
            self._log.info("USSD answer with no request waiting", status=answer.status)

    def detach(self) -> None:
        """The port closed: a pending request fails; a menu cannot survive it."""
        self.menu_open = False
        self._charset = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ModemDisconnected(f"{self._session.port}: port lost"))

    # -- requests -----------------------------------------------------------------------

    async def request(self, code: str, *, timeout: float = DEFAULT_TIMEOUT) -> UssdAnswer:
        """Send a USSD string; the network's answer, or `UssdTimeout`.

        A menu left open by an earlier request is closed first (the network
        would otherwise take this string as the menu's reply).
        """
        async with self._lock:
            if self.menu_open:
                await self._close()
            return await self._exchange(code, timeout)

    async def reply(self, text: str, *, timeout: float = DEFAULT_TIMEOUT) -> UssdAnswer:
        """Answer an open menu (`+CUSD: 1`) with the item chosen or the text asked for."""
        async with self._lock:
            if not self.menu_open:
                raise UssdError(f"{self._session.port}: no USSD menu is open")
            return await self._exchange(text, timeout)

    async def close(self) -> None:
        """End an open menu session (`AT+CUSD=2`)."""
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        self.menu_open = False
        try:
            await self._session.command("AT+CUSD=2")
        except CommandError as exc:
            # Many modems answer ERROR when no session is open any more.
            self._log.debug("AT+CUSD=2 refused", error=str(exc))

    async def _exchange(self, code: str, timeout: float) -> UssdAnswer:
        packed = self._session.quirks.ussd_packed
        encoded = encode_request(code, packed=packed)
        self._charset = None if packed else await self._read_charset()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[UssdAnswer] = loop.create_future()
        self._waiter = waiter  # before the write: the answer may come at once
        self.requests += 1
        started = loop.time()
        try:
            try:
                reply = await self._session.command(f'AT+CUSD=1,"{encoded}",15')
            except CommandError as exc:
                raise UssdError(f"{self._session.port}: USSD {code} refused: {exc.final}") from exc
            except CommandTimeout:
                # Some firmware holds its OK until the network has answered: the
                # answer still comes as a +CUSD code, so keep waiting for it.
                self._log.debug("AT+CUSD=1 not acknowledged in time; waiting for +CUSD")
            else:
                early = reply.first("+CUSD")
                if early is not None:  # answered before the OK, as an information line
                    self.on_urc(early)
            try:
                async with asyncio.timeout(max(0.0, timeout - (loop.time() - started))):
                    answer = await waiter
            except TimeoutError:
                self.unanswered += 1
                await self._close()  # the network may still hold the dialogue open
                raise UssdTimeout(
                    f"{self._session.port}: no answer to USSD {code} in {timeout:g}s"
                ) from None
        finally:
            self._waiter = None
        self._log.debug("USSD answered", status=answer.status, dcs=answer.dcs)
        return answer

    async def _read_charset(self) -> str | None:
        """`AT+CSCS?`: how the modem writes a 7-bit answer (GSM codes, IRA, or UCS-2 hex)."""
        try:
            reply = await self._session.command("AT+CSCS?")
        except CommandError:
            return None
        value = reply.first("+CSCS")
        return value.strip().strip('"').upper() or None if value else None
