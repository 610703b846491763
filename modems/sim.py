"""The SIM capability: PIN status, PIN entry, ICCID, IMSI and the SIM's own number.

Knows nothing of messaging or the network; `Modem` decides what a status
means for the modem's state. The ICCID command that worked and whether
`AT+CPIN?` ends without OK are remembered across reopens of the same modem.
"""

from __future__ import annotations

from .channel import NO_FINAL, Reply
from .codes import RETRY_CODES, SIM_ABSENT_CODES, CmeCode
from .errors import CmeError, CommandError, ModemError, ParseError
from .events import SimIdentity
from .replies import digits_of, iccid_from_crsm, normalize_iccid, parse_number_entry, split_imsi
from .session import Session

__all__ = ["SimCard"]

_NO_SIM_ANSWERS = frozenset({"NOT INSERTED", "NOT READY", "SIM FAILURE", "REMOVED", ""})


class SimCard:
    """The SIM in one modem, read through its session."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.pin_failed = False
        self._cpin_final_missing = False
        self._iccid_command: tuple[str, str] | None = None

    async def status(self) -> str | None:
        """`READY`, `SIM PIN`, `SIM PUK`, …; None when there is no usable SIM."""
        try:
            reply = await self._session.retrying("AT+CPIN?", info_grace=self.cpin_grace)
        except CmeError as exc:
            if exc.code in SIM_ABSENT_CODES or exc.code in RETRY_CODES:
                return None
            if exc.code == CmeCode.SIM_PIN_REQUIRED:
                return "SIM PIN"
            if exc.code == CmeCode.SIM_PUK_REQUIRED:
                return "SIM PUK"
            raise
        return self.status_from(reply)

    @property
    def cpin_grace(self) -> float:
        """How long a `+CPIN:` answer waits for its final OK. A modem seen to end
        AT+CPIN? without OK completes it at once from then on (a health check
        must not stall SMS reading), whatever its vendor."""
        return 0.0 if self._cpin_final_missing else self._session.quirks.cpin_grace

    def status_from(self, reply: Reply) -> str | None:
        """The status in a reply that answered `AT+CPIN?` (alone or as a line's last part)."""
        if reply.final.text == NO_FINAL:
            self._cpin_final_missing = True
        value = (reply.first("+CPIN") or "").strip().strip('"').upper()
        return None if value in _NO_SIM_ANSWERS else value

    async def unlock(self, pin: str) -> CommandError | None:
        """Enter the PIN; a wrong one is never tried again (three lock the SIM)."""
        try:
            await self._session.command(f'AT+CPIN="{pin}"')
        except CommandError as exc:
            self.pin_failed = True
            return exc
        return None

    async def read_iccid(self) -> str:
        commands = self._session.quirks.iccid_order()
        if self._iccid_command is not None:
            commands.remove(self._iccid_command)
            commands.insert(0, self._iccid_command)
        for command, prefix in commands:
            try:
                reply = await self._session.retrying(command)
                if prefix == "+CRSM":
                    iccid = iccid_from_crsm(reply.first("+CRSM") or "")
                else:
                    raw = reply.first(prefix) or next(iter(reply.bare()), "")
                    iccid = normalize_iccid(raw)
            except CmeError as exc:
                if exc.code in SIM_ABSENT_CODES:
                    raise
                continue
            except (CommandError, ParseError):
                continue
            self._iccid_command = (command, prefix)
            return iccid
        raise ModemError(f"{self._session.port}: no command gave the SIM's ICCID")

    async def identify(self, iccid: str) -> SimIdentity:
        """The rest of the SIM's identity: IMSI (its home network) and own number."""
        imsi = await self.read_imsi()
        home_mcc, home_mnc = split_imsi(imsi) if imsi else (None, None)
        return SimIdentity(iccid, imsi, await self.read_number(), home_mcc, home_mnc)

    async def read_imsi(self) -> str | None:
        try:
            reply = await self._session.retrying("AT+CIMI")
        except CommandError:
            return None
        for line in reply.bare() + reply.values("+CIMI"):
            digits = digits_of(line)
            if digits and 6 <= len(digits) <= 15:
                return digits
        return None

    async def read_number(self) -> str | None:
        """`AT+CNUM`, else the SIM's own-number phonebook; often empty on prepaid SIMs."""
        number = await self._number_from("AT+CNUM", "+CNUM")
        if number is None and await self._session.attempt('AT+CPBS="ON"'):
            number = await self._number_from("AT+CPBR=1", "+CPBR")
        return number

    async def _number_from(self, command: str, prefix: str) -> str | None:
        try:
            reply = await self._session.command(command)
        except CommandError:
            return None
        for value in reply.values(prefix):
            if number := parse_number_entry(value):
                return number
        return None
