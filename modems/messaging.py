"""The messaging capability: PDU mode, storage, new-message indications, read, sweep, delete.

SMS: read (`AT+CMGR`) → hand to `accept`, which returns once the message is
durable → delete (`AT+CMGD`). If `accept` fails, the message stays on the SIM
and `sweep_due` asks for a sweep (`AT+CMGL=4`), which reads it again.
Knows nothing of the SIM's identity: `accept` is the owner's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import structlog

from .codes import CmsCode, SmsStatus
from .errors import CmsError, CommandError, ModemError, ParseError
from .replies import (
    choose_cnmi,
    parse_cnmi_ranges,
    parse_cpms_options,
    parse_cpms_usage,
    parse_list_entry,
)
from .session import Session

__all__ = ["Accept", "Messaging"]

log = structlog.get_logger("modems.messaging")

# (index, pdu) → True once the owner holds the message durably (then it is
# deleted), False when nobody can take it now (it stays); raising = failed.
Accept = Callable[[int, str], Awaitable[bool]]

# Reading an index that is empty or past the end: already read and deleted.
_CMS_INVALID_INDEX = frozenset({CmsCode.INVALID_MEMORY_INDEX, CmsCode.MEMORY_FULL})


class Messaging:
    """Stored SMS of one modem, through its session."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.storage: str | None = None
        self.storage_used: int | None = None
        self.storage_total: int | None = None
        self.indications: str | None = None  # the AT+CNMI setting that took, None = polling
        self.sms_read = 0
        self.sweep_due = False  # a message was not accepted, or a flood lost a +CMTI
        self.refused = 0  # messages the owner could not take since it last took one
        self.log = log.bind(port=session.port)  # the modem rebinds it with the SIM

    async def setup(self) -> None:
        """PDU mode, one storage for everything, `+CMTI` indications if the modem has them."""
        await self._session.retrying("AT+CMGF=0")  # PDU mode: text mode loses non-Latin text
        await self._session.attempt('AT+CSCS="GSM"')  # keep identity answers out of UCS-2 hex
        await self._setup_storage()
        await self._setup_indications()

    async def _setup_storage(self) -> None:
        offered: list[str] = []
        try:
            reply = await self._session.command("AT+CPMS=?")
            offered = parse_cpms_options(reply.first("+CPMS") or "")
        except (CommandError, ParseError) as exc:
            self.log.debug("AT+CPMS=? unusable", error=str(exc))
        preference = self._session.settings.storage_preference
        choices = [s for s in preference if not offered or s in offered]
        if not choices:
            choices = offered[:1]
        last_error: Exception | None = None
        for storage in choices:
            # One storage for reading, writing and receiving: reading two
            # stores reads the same message twice on some modems.
            try:
                reply = await self._session.retrying(f'AT+CPMS="{storage}","{storage}","{storage}"')
            except CommandError as exc:
                last_error = exc
                continue
            self.storage = storage
            usage = reply.first("+CPMS")
            if usage:
                with contextlib.suppress(ParseError):
                    self.storage_used, self.storage_total = parse_cpms_usage(usage)
            return
        raise ModemError(f"{self._session.port}: no usable SMS storage ({last_error})")

    async def _setup_indications(self) -> None:
        ranges = None
        try:
            reply = await self._session.command("AT+CNMI=?")
            ranges = parse_cnmi_ranges(reply.first("+CNMI") or "")
        except (CommandError, ParseError) as exc:
            self.log.debug("AT+CNMI=? unusable", error=str(exc))
        for candidate in choose_cnmi(ranges) or choose_cnmi(None):
            setting = ",".join(str(v) for v in candidate)
            if await self._session.attempt(f"AT+CNMI={setting}"):
                self.indications = setting
                return
        # No +CMTI: fall back to sweeping at every health check.
        self.indications = None
        self.log.warning("no new-SMS indications; polling instead")

    async def read(self, index: int, accept: Accept) -> None:
        """The message a `+CMTI` announced."""
        if not self._session.settings.read_sms:
            return
        try:
            reply = await self._session.command(f"AT+CMGR={index}")
        except CmsError as exc:
            if exc.code in _CMS_INVALID_INDEX:
                return  # already read and deleted (a sweep got there first)
            raise
        pdus = [line for line in reply.bare() if line]
        if pdus:
            await self._hand_over(index, pdus[-1], accept)

    async def sweep(self, accept: Accept) -> None:
        """Read every stored message (`AT+CMGL=4`): at start, after reconnects, periodically.

        The storage's usage (`AT+CPMS?`) is asked on the same line when the modem
        takes concatenated commands: an empty storage, the usual case at every
        periodic sweep, then costs one exchange, not two. Messages read and
        deleted change it: then it is asked again, after the deletes.
        """
        self.sweep_due = False
        if not self._session.settings.read_sms:
            return
        session = self._session
        timeout = max(session.settings.command_timeout, 10.0)
        listing = f"AT+CMGL={SmsStatus.ALL:d}"
        reply = None
        if session.concatenation:
            # Refused, or an error from either part: the listing alone says which.
            with contextlib.suppress(CommandError):
                reply = await session.command(f"{listing};+CPMS?", timeout=timeout)
        if reply is None:
            reply = await session.command(listing, timeout=timeout)
        entries: list[tuple[int, str]] = []
        index: int | None = None
        usage: str | None = None
        for line in reply.lines:
            if line.upper().startswith("+CPMS"):
                usage, index = line.partition(":")[2].strip() or None, None  # never a PDU
            elif line.upper().startswith("+CMGL"):
                try:
                    index = parse_list_entry(line.split(":", 1)[1])[0]
                except (ParseError, IndexError) as exc:
                    self.log.warning("bad +CMGL line", line=line, error=str(exc))
                    index = None
            elif index is not None:
                entries.append((index, line))
                index = None
        for entry_index, pdu in entries:
            await self._hand_over(entry_index, pdu, accept)
        await self._update_usage(None if entries else usage)

    async def _update_usage(self, answered: str | None = None) -> None:
        """The storage's usage: `answered` (the `+CPMS:` value a sweep's line got), or asked."""
        try:
            value = answered
            if value is None:
                value = (await self._session.command("AT+CPMS?")).first("+CPMS")
            if value:
                self.storage_used, self.storage_total = parse_cpms_usage(value)
        except (CommandError, ParseError):
            pass
        full = self.storage_total and (self.storage_used or 0) >= self.storage_total
        if full:
            # Full storage silently stops reception: say so loudly.
            self.log.error("SMS storage full", used=self.storage_used)

    async def _hand_over(self, index: int, pdu: str, accept: Accept) -> None:
        try:
            accepted = await accept(index, pdu)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the SMS stays on the SIM
            # One line per episode (an owner's store that is down refuses every sweep).
            level = self.log.debug if self.refused else self.log.error
            level("SMS not accepted; kept on the SIM", index=index, error=repr(exc))
            self.refused += 1
            self.sweep_due = True
            return
        if not accepted:
            return
        if self.refused:
            self.log.info("SMS accepted again", refused_attempts=self.refused)
            self.refused = 0
        self.sms_read += 1
        try:
            await self._session.command(f"AT+CMGD={index}")
        except CommandError as exc:
            # Left on the SIM: the next sweep reads it again and the owner's
            # duplicate check drops it.
            self.log.warning("delete failed", index=index, error=str(exc))
