"""One store interface, two implementations: SQLite (one host) and PostgreSQL (several).

`StoreBackend` is what the rest of the daemon may ask of a store, whichever
it is: code annotates this, never `Store` or `PgStore`, so a method one
backend lacks is a type error, not a surprise in production. `open_store`
picks the backend from the configuration (`storage.path` or `storage.url`).
What only one backend has (SQLite's `DatabaseLock` and file watch) is asked
of it by `backend`/`shared`, never by type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from .config import StorageConfig
from .pgstore import PgStore
from .sale import SaleRequest
from .store import (
    Activation,
    BalanceRow,
    Delivery,
    Earning,
    NewPart,
    NewSms,
    SimRow,
    Sms,
    Store,
    StoredPart,
    Usage,
)

__all__ = ["StoreBackend", "open_store"]


class StoreBackend(Protocol):
    """What both stores offer (supplier/store.py and supplier/pgstore.py say how)."""

    @property
    def backend(self) -> str:
        """ "sqlite" or "postgresql": for logs and for what only one of them has."""

    @property
    def shared(self) -> bool:
        """True when several hosts may use the database at once (PostgreSQL)."""

    @property
    def path(self) -> str:
        """What errors and logs name: the file, or the URL without its password."""

    @property
    def lost(self) -> str | None:
        """Why every write is refused for good (the SQLite file was deleted), or None."""

    def file_problem(self) -> str | None: ...
    async def close(self) -> None: ...
    async def schema_version(self) -> int: ...

    # a module's own tables (bankstore.py)
    async def table_rows(self, table: str, columns: Sequence[str]) -> list[tuple[Any, ...]]: ...
    async def upsert_row(
        self, table: str, row: Mapping[str, object], key: Sequence[str], what: str
    ) -> None: ...

    # loading
    async def load_sims(self) -> list[SimRow]: ...
    async def load_activations(self, since: float) -> list[Activation]: ...
    async def load_usage(self) -> dict[tuple[str, str], Usage]: ...
    async def get_activation(self, activation_id: int) -> Activation | None: ...

    # SIMs
    async def upsert_sim(
        self,
        *,
        iccid: str,
        imsi: str | None,
        number: str | None,
        country: str | None,
        operator: str | None,
        port: str | None,
        now: float,
    ) -> SimRow: ...
    async def set_sim_enabled(self, iccid: str, enabled: bool) -> bool: ...
    async def set_sim_number(self, iccid: str, number: str | None) -> bool: ...
    async def touch_sims(self, iccids: list[str], now: float) -> None: ...

    # activations
    async def open_activation(
        self,
        request: SaleRequest,
        *,
        iccid: str,
        number: str,
        country: str,
        operator: str,
        now: float,
        release_at: float,
    ) -> Activation: ...
    async def finish_activation(
        self, activation_id: int, status: int, now: float, *, hub: str | None = None
    ) -> tuple[Activation, bool]: ...

    # received SMS and their pushes
    async def receive(
        self, part: NewPart, sms: NewSms | None
    ) -> tuple[bool, Sms | None, list[Delivery]]: ...
    async def complete(self, sms: NewSms) -> tuple[Sms, list[Delivery]]: ...
    async def pending_parts(self) -> list[StoredPart]: ...
    async def due_deliveries(
        self,
        hub: str,
        now: float,
        limit: int,
        exclude: Iterable[int] = (),
        *,
        push_timeout: float = 10.0,  # PostgreSQL leases each for this plus a margin
    ) -> list[tuple[Delivery, Sms]]: ...
    async def next_due(self, hub: str, exclude: Iterable[int] = ()) -> float | None: ...
    async def settle_delivery(
        self, delivery_id: int, outcome: str, result: str, now: float
    ) -> bool: ...
    async def retry_delivery(
        self, delivery_id: int, result: str, now: float, next_attempt: float
    ) -> None: ...
    async def release_leases(self, hubs: Iterable[str], keep: Iterable[int] = ()) -> int: ...
    async def deliveries_for(self, sms_id: int) -> list[Delivery]: ...

    # the status page and `supplier sims`
    async def earnings(self, since: float) -> list[Earning]: ...
    async def sms_count(self, since: float) -> int: ...
    async def last_sms(self) -> dict[str, float]: ...
    async def backlog(self, now: float) -> dict[str, tuple[int, float]]: ...
    async def activations_of(self, iccid: str, limit: int = 200) -> list[Activation]: ...
    async def sms_of(self, iccid: str, limit: int = 200) -> list[tuple[Sms, list[Delivery]]]: ...
    async def recent_sms(self, limit: int = 100) -> list[Sms]: ...

    # what upkeep learns by USSD
    async def learned_numbers(self) -> dict[str, str]: ...
    async def learn_number(self, iccid: str, number: str, source: str, now: float) -> None: ...
    async def balances(self) -> dict[str, BalanceRow]: ...
    async def save_balance(self, iccid: str, balance: BalanceRow) -> None: ...


async def open_store(storage: StorageConfig, *, host: str | None = None) -> StoreBackend:
    """The configured store, open and migrated (StoreError when it cannot be).

    `host`: this host's name (`host.name`), which a PostgreSQL store writes on the
    pushes it leases; None: the hostname.
    """
    if storage.url is not None:
        return await PgStore.open(storage.url, host=host)
    return await Store.open(storage.path)
