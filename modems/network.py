"""The network capability: signal (`AT+CSQ`), registration (`AT+CREG?`), operator (`AT+COPS?`).

Reads only; `Modem` decides when a change is worth telling the owner
(`moved()`).
"""

from __future__ import annotations

import structlog

from .channel import Reply
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
        signal = await self._ask("AT+CSQ")
        registration = await self._ask("AT+CREG?")
        return await self._settle(previous, signal, registration, force_operator)

    async def read_from(self, previous: NetworkInfo, reply: Reply) -> NetworkInfo:
        """The same from a reply that answered `AT+CSQ` and `AT+CREG?` on one line
        (a health check); a line missing or unreadable keeps the previous value."""
        return await self._settle(previous, reply, reply, False)

    async def _ask(self, command: str) -> Reply | None:
        try:
            return await self._session.command(command)
        except CommandError as exc:
            self._log.debug("network read failed", command=command, error=str(exc))
            return None

    async def _settle(
        self,
        previous: NetworkInfo,
        signal: Reply | None,
        registration: Reply | None,
        force_operator: bool,
    ) -> NetworkInfo:
        rssi = previous.rssi
        status = previous.registration
        try:
            if signal is not None:
                rssi = parse_csq(signal.first("+CSQ") or "")[0]
        except ParseError as exc:
            self._log.debug("+CSQ unreadable", error=str(exc))
        try:
            if registration is not None:
                status = parse_creg(registration.first("+CREG") or "").status
        except ParseError as exc:
            self._log.debug("+CREG unreadable", error=str(exc))
        operator = previous.operator
        if force_operator or status != previous.registration or operator is None:
            operator = await self.read_operator() if status in REGISTERED else None
        return NetworkInfo(status, operator, rssi)

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
