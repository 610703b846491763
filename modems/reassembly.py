"""Multipart SMS reassembly: pure, keyed by (SIM, sender, reference size, reference, total).

Nothing here reads a clock or a store: the caller passes the time in and can
rebuild a `Reassembler` from the parts it kept durably (`Reassembler(parts=…)`),
so pending parts survive a restart when the caller persists them.

Timeout: an activation lives 15-20 minutes and the code is almost always in
the first part, so parts that never complete are delivered as they are after
`DEFAULT_TIMEOUT` (2 minutes; peers use 10 minutes to 24 hours, which is
longer than the SMS is worth here). In practice all parts arrive within
seconds of each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .pdu import Alphabet, SmsDeliver, decode_ucs2, gsm7_decode

__all__ = ["DEFAULT_TIMEOUT", "Assembled", "Part", "PartKey", "Reassembler", "join_parts"]

DEFAULT_TIMEOUT = 120.0

PartKey = tuple[str, str, int, int, int]


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a concatenated message, as the reassembler needs it."""

    sim: str
    sender: str
    reference: int
    total: int
    sequence: int
    alphabet: Alphabet
    user_data: bytes
    received_at: float
    reference_bits: int = 8
    locking_shift: int = 0  # GSM-7 national language tables named in this part's header
    single_shift: int = 0

    @property
    def key(self) -> PartKey:
        # The reference size is part of the key: an 8-bit reference 5 and a
        # 16-bit reference 5 are different messages.
        return (self.sim, self.sender, self.reference_bits, self.reference, self.total)

    @classmethod
    def from_deliver(cls, sim: str, sms: SmsDeliver, received_at: float) -> Part:
        if sms.concat is None:
            raise ValueError("not a concatenated message")
        return cls(
            sim=sim,
            sender=sms.sender,
            reference=sms.concat.reference,
            total=sms.concat.total,
            sequence=sms.concat.sequence,
            alphabet=sms.alphabet,
            user_data=sms.user_data,
            received_at=received_at,
            reference_bits=sms.concat.bits,
            locking_shift=sms.locking_shift,
            single_shift=sms.single_shift,
        )


@dataclass(frozen=True, slots=True)
class Assembled:
    """A message put together from its parts; `complete` is False after a timeout."""

    key: PartKey
    text: str
    parts: tuple[Part, ...]
    complete: bool

    @property
    def missing(self) -> tuple[int, ...]:
        have = {part.sequence for part in self.parts}
        return tuple(seq for seq in range(1, self.key[4] + 1) if seq not in have)


def join_parts(parts: Sequence[Part]) -> str:
    """The text of the parts in sequence order; UCS-2 bodies are joined before decoding.

    Joining the raw UTF-16 bytes first keeps a surrogate pair (an emoji) that
    the sender split across two parts in one piece. GSM-7 parts are joined only
    while they name the same national language tables (each part carries its
    own header), and decoded with them.
    """
    ordered = sorted({part.sequence: part for part in parts}.values(), key=lambda p: p.sequence)
    out: list[str] = []
    run: list[Part] = []

    def flush() -> None:
        if not run:
            return
        body = b"".join(part.user_data for part in run)
        alphabet = run[0].alphabet
        if alphabet is Alphabet.UCS2:
            out.append(decode_ucs2(body))
        elif alphabet is Alphabet.GSM7:
            out.append(gsm7_decode(body, run[0].locking_shift, run[0].single_shift))
        else:
            out.append(body.decode("latin-1"))
        run.clear()

    previous: Part | None = None
    for part in ordered:
        contiguous = previous is not None and part.sequence == previous.sequence + 1
        if run and (not contiguous or _coding(part) != _coding(run[0])):
            flush()
        run.append(part)
        previous = part
    flush()
    return "".join(out)


def _coding(part: Part) -> tuple[Alphabet, int, int]:
    return part.alphabet, part.locking_shift, part.single_shift


class Reassembler:
    """Collects parts until a message is complete or its oldest part times out."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, parts: Iterable[Part] = ()) -> None:
        self.timeout = timeout
        self._groups: dict[PartKey, dict[int, Part]] = {}
        for part in parts:
            self._groups.setdefault(part.key, {}).setdefault(part.sequence, part)

    def __len__(self) -> int:
        return len(self._groups)

    def pending_parts(self) -> list[Part]:
        return [part for group in self._groups.values() for part in group.values()]

    def add(self, part: Part) -> Assembled | None:
        """Add a part; the whole message once its last part is in, else None.

        A repeated part (same sequence, read twice after a reset) is ignored.
        """
        group = self._groups.setdefault(part.key, {})
        group.setdefault(part.sequence, part)
        if len(group) < part.total:
            return None
        del self._groups[part.key]
        parts = tuple(group[seq] for seq in sorted(group))
        return Assembled(part.key, join_parts(parts), parts, complete=True)

    def discard(self, part: Part) -> bool:
        """Forget this very part (the owner found it a duplicate of one already handled).

        False when the group holds another copy of that sequence (the
        original, which stays).
        """
        group = self._groups.get(part.key)
        if group is None or group.get(part.sequence) is not part:
            return False
        del group[part.sequence]
        if not group:
            del self._groups[part.key]
        return True

    def next_deadline(self) -> float | None:
        """When the oldest pending message times out (same clock as `received_at`)."""
        if not self._groups:
            return None
        return (
            min(min(part.received_at for part in group.values()) for group in self._groups.values())
            + self.timeout
        )

    def expire(self, now: float) -> list[Assembled]:
        """Messages whose first part is older than the timeout, as far as they got."""
        done: list[Assembled] = []
        for key, group in list(self._groups.items()):
            if min(part.received_at for part in group.values()) + self.timeout <= now:
                del self._groups[key]
                parts = tuple(group[seq] for seq in sorted(group))
                done.append(Assembled(key, join_parts(parts), parts, complete=False))
        return done
