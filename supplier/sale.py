"""What a hub asks for in one GET_NUMBER, as one value passed from the protocol to the store.

The protocol checks the hub's fields and builds a `SaleRequest` once; the
inventory, the shared-store hosts and both stores take it as it is, rather
than the same eight keywords through every signature on the way down.

A hub's exceptionPhoneSet may hold 10,000 prefixes, and a GET_NUMBER may
pass over many SIMs before it finds one to sell: `Prefixes` is built once
per request so that whether a number is barred costs one set lookup per
prefix length (at most 15), not one comparison per prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["NO_PREFIXES", "Prefixes", "SaleRequest"]


@dataclass(frozen=True, slots=True)
class Prefixes:
    """Number prefixes never to hand out (exceptionPhoneSet), as a set and its lengths."""

    listed: frozenset[str] = frozenset()
    lengths: tuple[int, ...] = ()  # the lengths of the prefixes listed, shortest first

    @classmethod
    def of(cls, prefixes: Iterable[str]) -> Prefixes:
        listed = frozenset(prefixes)
        if not listed:
            return NO_PREFIXES
        return cls(listed, tuple(sorted({len(p) for p in listed})))

    def __bool__(self) -> bool:
        return bool(self.lengths)

    def bar(self, number: str) -> bool:
        """Whether `number` starts with a listed prefix (str.startswith, one lookup a length).

        A number shorter than a length is looked up whole: found, it is itself a prefix.
        """
        listed = self.listed
        return any(number[:length] in listed for length in self.lengths)


NO_PREFIXES = Prefixes()


@dataclass(frozen=True, slots=True)
class SaleRequest:
    """One GET_NUMBER: who asks, for which market and service, at what price, and which
    numbers it does not want (exceptionPhoneSet)."""

    hub: str
    country: str
    operator: str  # an operator's slug, or `any` (networks.ANY): every operator of the country
    service: str
    sum: str | None = None  # the price as stored: "10", not "1E+1"
    currency: int | None = None  # ISO 4217 numeric code
    exclude: Prefixes = NO_PREFIXES  # exceptionPhoneSet
