"""The network capability: signal (`AT+CSQ`), registration (`AT+CREG?`), operator (`AT+COPS?`).

Reads only; `Modem` decides when a change is worth telling the owner
(`moved()`).
"""

from __future__ import annotations

import structlog

from .codes import REGISTERED
from .errors import CommandError, ParseError
from .events import NetworkInfo
from .replies import parse_cops_numeric, parse_creg, parse_csq
from .session import Session

__all__ = ["Network", "moved"]

log = structlog.get_logger("modems.network")


class Network:
    """The network one modem's SIM is on, read through its session."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._log = log.bind(port=session.port)

    async def read(self, previous: NetworkInfo, *, force_operator: bool = False) -> NetworkInfo:
        """Fresh values; a failed read keeps the previous one. The operator is
        asked again only when forced, after a registration change or while unknown."""
        rssi = previous.rssi
        registration = previous.registration
        try:
            reply = await self._session.command("AT+CSQ")
            rssi = parse_csq(reply.first("+CSQ") or "")[0]
        except (CommandError, ParseError) as exc:
            self._log.debug("AT+CSQ failed", error=str(exc))
        try:
            reply = await self._session.command("AT+CREG?")
            registration = parse_creg(reply.first("+CREG") or "").status
        except (CommandError, ParseError) as exc:
            self._log.debug("AT+CREG? failed", error=str(exc))
        operator = previous.operator
        if force_operator or registration != previous.registration or operator is None:
            operator = await self.read_operator() if registration in REGISTERED else None
        return NetworkInfo(registration, operator, rssi)

    async def read_operator(self) -> str | None:
        await self._session.attempt("AT+COPS=3,2")
        try:
            reply = await self._session.command("AT+COPS?")
            return parse_cops_numeric(reply.first("+COPS") or "")
        except (CommandError, ParseError):
            return None


def moved(previous: NetworkInfo, current: NetworkInfo) -> bool:
    """Worth telling the owner: registration or operator changed, or the signal by 3+."""
    rssi_moved = abs((current.rssi or 0) - (previous.rssi or 0)) >= 3
    rssi_moved = rssi_moved or (current.rssi == 99) != (previous.rssi == 99)
    changed = (current.registration, current.operator) != (previous.registration, previous.operator)
    return changed or rssi_moved
