"""What a hub asks for in one GET_NUMBER, as one value passed from the protocol to the store.

The protocol checks the hub's fields and builds a `SaleRequest` once; the
inventory, the shared-store hosts and both stores take it as it is, rather
than the same eight keywords through every signature on the way down.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SaleRequest"]


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
    exclude: tuple[str, ...] = ()  # number prefixes never to hand out (exceptionPhoneSet)
