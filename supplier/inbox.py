"""The durable inbox: every SMS a modem hands over is committed before it leaves the SIM.

`accept()` is the modem pool's SMS callback: it returns only once the part
(and, when it completes a message, the message and its deliveries) is
committed, so the modem deletes it from the SIM only then. A PDU read twice
(a reset between commit and delete) has the same digest and is stored once.
Multipart messages wait as parts in the store; the reassembler in memory is
rebuilt from them at start, and a message whose parts do not all arrive is
completed with what came after `reassembly_timeout`.

Routing: a text message goes to the activation that holds its number when
it arrives (`Inventory.routes`: the newest one handed out on the number,
if unfinished and less than a day old, and on this SIM; the hub filters by
service, not us); on a number with none it is kept for the operators and
not pushed. Binary messages, status reports, stored outgoing messages and
undecodable PDUs are kept, not pushed.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

import structlog

from modems.errors import PduError
from modems.events import SmsReceived
from modems.pdu import SmsDeliver, SmsSubmit, StatusReport, decode_pdu
from modems.reassembly import Assembled, Part, PartKey, Reassembler

from .backend import StoreBackend
from .errors import StoreError
from .inventory import Inventory
from .logs import Episode
from .store import Delivery, NewPart, NewSms

__all__ = ["Inbox"]

log = structlog.get_logger("supplier.inbox")


def _digest(iccid: str, pdu: str) -> str:
    return hashlib.sha256(f"{iccid}:{pdu.strip().upper()}".encode()).hexdigest()


def _sent(when: datetime | None) -> float | None:
    """When the service centre stamped the SMS; None when unknown (no date, or no time zone)."""
    return when.timestamp() if when is not None and when.tzinfo is not None else None


def _part_key(part: Part) -> str:
    return f"{part.sender}/{part.reference_bits}/{part.reference}/{part.total}"


class Inbox:
    def __init__(
        self,
        store: StoreBackend,
        inventory: Inventory,
        *,
        reassembly_timeout: float,
        on_queued: Callable[[list[Delivery]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.inventory = inventory
        self.on_queued = on_queued
        self.clock = clock
        self._reassembler = Reassembler(reassembly_timeout)
        self._digests: dict[tuple[PartKey, int], str] = {}  # a pending part → its digest
        # The reassembler may hold parts the store does not (a write failed, and so did
        # the read that rebuilds it: a database that cannot be reached). Until it is
        # rebuilt nothing is added to it, so no message is assembled from a part whose
        # SMS is still on its SIM (it would be pushed twice: whole, then that part alone).
        self._stale = False
        self._refusals = Episode(clock)  # the store refuses SMS (left on their SIMs)
        self.received = 0
        self.duplicates = 0

    async def load(self) -> None:
        """Rebuild the reassembler from the parts waiting in the store."""
        self._stale = True  # until the read below succeeds
        parts = []
        digests: dict[tuple[PartKey, int], str] = {}
        for stored in await self.store.pending_parts():
            try:
                message = decode_pdu(stored.pdu)
            except PduError:
                continue
            if isinstance(message, SmsDeliver) and message.concat is not None:
                part = Part.from_deliver(stored.iccid, message, stored.received)
                parts.append(part)
                digests[(part.key, part.sequence)] = stored.digest
        self._digests = digests
        self._reassembler = Reassembler(self._reassembler.timeout, parts)
        self._stale = False
        if parts:
            log.info("multipart SMS waiting for parts", parts=len(parts))

    async def _rebuild_after_failure(self) -> None:
        """After a failed write: start over from the store, or at the next SMS if it
        cannot be read either (the caller re-raises the write's error in both cases)."""
        with contextlib.suppress(StoreError):  # stays stale: the next accept or expire loads
            await self.load()

    def _refusing(self, exc: Exception) -> None:
        """The store did not take an SMS: one error line per episode."""
        if self._refusals.failed():
            log.error(
                "cannot store SMS; they stay on their SIMs until the store takes them",
                error=str(exc),
            )
        else:
            log.debug("cannot store SMS", error=str(exc))

    def _storing(self, asked: int | None) -> None:
        """A write asked in episode `asked` was committed: the episode ends if it is this one."""
        ended = self._refusals.ended(asked)
        if ended is not None:
            log.info("SMS stored again", after=round(ended[0], 1), refused=ended[1])

    def next_deadline(self) -> float | None:
        return self._reassembler.next_deadline()

    async def accept(self, event: SmsReceived) -> None:
        """Commit one SMS read from a modem (raises if it could not be committed)."""
        if self._stale:
            try:
                await self.load()
            except StoreError as exc:
                self._refusing(exc)
                raise
        digest = _digest(event.iccid, event.pdu)
        message = event.message
        sender = getattr(message, "sender", None)
        part = NewPart(
            digest=digest,
            iccid=event.iccid,
            port=event.port,
            storage=event.storage,
            slot=event.index,
            pdu=event.pdu,
            received=event.received_at,
            sender=sender,
        )
        sms: NewSms | None
        piece: Part | None = None
        if isinstance(message, SmsDeliver) and message.concat is not None and not message.is_binary:
            piece = Part.from_deliver(event.iccid, message, event.received_at)
            part = replace(
                part,
                part_key=_part_key(piece),
                part_total=piece.total,
                part_seq=piece.sequence,
            )
            self._digests.setdefault((piece.key, piece.sequence), digest)
            assembled = self._reassembler.add(piece)
            sms = self._assembled(assembled, message) if assembled is not None else None
        else:
            sms = self._single(event, digest)
        asked = self._refusals.asked()
        try:
            duplicate, stored, deliveries = await self.store.receive(part, sms)
        except Exception as exc:
            # The reassembler may now hold a part the store does not: start over from the store.
            if isinstance(exc, StoreError):
                self._refusing(exc)
            await self._rebuild_after_failure()
            raise
        self._storing(asked)
        if duplicate:
            self.duplicates += 1
            if piece is not None and self._reassembler.discard(piece):
                self._digests.pop((piece.key, piece.sequence), None)
            log.info(
                "SMS read again; already stored",
                port=event.port,
                iccid=event.iccid,
                slot=event.index,
            )
            return
        self.received += 1
        if stored is not None:
            log.info(
                "SMS stored",
                port=event.port,
                iccid=event.iccid,
                sms_id=stored.id,
                kind=stored.kind,
                hubs=[d.hub for d in deliveries],
            )
        if deliveries:
            self.on_queued(deliveries)

    async def expire(self) -> int:
        """Complete the multipart messages whose parts stopped coming; how many."""
        done = 0
        if self._stale:
            await self.load()  # raises while the store cannot be read: the caller waits
        for assembled in self._reassembler.expire(self.clock()):
            first = assembled.parts[0]
            sms = self._from_parts(assembled, first.sender, None)
            try:
                stored, deliveries = await self.store.complete(sms)
            except Exception:
                # The reassembler has let go of parts the store still holds: take them back,
                # so the next turn (the caller waits first) tries again.
                await self._rebuild_after_failure()
                raise
            log.warning(
                "multipart SMS delivered incomplete",
                iccid=first.sim,
                sms_id=stored.id,
                missing=assembled.missing,
            )
            if deliveries:
                self.on_queued(deliveries)
            done += 1
        return done

    # -- building messages ------------------------------------------------------------------

    def _routes(self, number: str | None, iccid: str) -> tuple[tuple[str, int | None], ...] | None:
        if number is None:
            return ()
        if self.inventory.hosts is not None:
            return None  # several hosts: the store routes it, from every host's activations
        routes: dict[str, int | None] = {}
        for activation in sorted(self.inventory.routes(number), key=lambda a: a.id):
            if activation.iccid != iccid:
                continue  # another SIM claims the number (a conflict): not this buyer's SMS
            routes.setdefault(activation.hub, activation.id)
        return tuple(routes.items())

    def _number(self, iccid: str) -> str | None:
        sim = self.inventory.sims.get(iccid)
        return sim.number if sim is not None else None

    def _single(self, event: SmsReceived, digest: str) -> NewSms:
        message = event.message
        sent: float | None = None
        if isinstance(message, SmsDeliver):
            kind = "binary" if message.is_binary else "text"
            sender, text = message.sender, message.text
            sent = _sent(message.timestamp)
        elif isinstance(message, StatusReport):
            kind, sender, text = "status_report", message.recipient, f"status {message.status}"
        elif isinstance(message, SmsSubmit):
            kind, sender, text = "submit", message.recipient, message.text
        else:
            kind, sender, text = "undecodable", "", event.error or "undecodable PDU"
        number = self._number(event.iccid)
        return NewSms(
            digests=(digest,),
            iccid=event.iccid,
            number=number,
            sender=sender,
            text=text,
            kind=kind,
            sent=sent,
            received=event.received_at,
            complete=True,
            routes=self._routes(number, event.iccid) if kind == "text" else (),
            route_at=self.inventory.clock(),
        )

    def _assembled(self, assembled: Assembled, last: SmsDeliver) -> NewSms:
        sent = _sent(last.timestamp)
        return self._from_parts(assembled, last.sender, sent)

    def _from_parts(self, assembled: Assembled, sender: str, sent: float | None) -> NewSms:
        first = assembled.parts[0]
        digests = tuple(
            digest
            for part in assembled.parts
            if (digest := self._digests.pop((part.key, part.sequence), None)) is not None
        )
        number = self._number(first.sim)
        return NewSms(
            digests=digests,
            iccid=first.sim,
            number=number,
            sender=sender,
            text=assembled.text,
            kind="text",
            sent=sent,
            received=max(part.received_at for part in assembled.parts),
            complete=assembled.complete,
            routes=self._routes(number, first.sim),
            route_at=self.inventory.clock(),
        )
