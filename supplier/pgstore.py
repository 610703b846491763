"""The store on PostgreSQL (asyncpg): one database shared by several modem hosts.

The same interface as `supplier.store.Store` (the embedded SQLite store, the
default for one host) and the same versioned migrations, in PostgreSQL's
dialect (`migrations/postgresql/`). What PostgreSQL adds is that every host
of a supplier reads and writes one inventory: activations, number history,
SMS and pushes are shared, so the protocol's rules hold per number and per
activation whichever host a hub asks.

Every call runs under a timeout (`timeout`, 5 s by default): an unreachable
database answers StoreError, never a hung request, and the connection pool
opens new connections by itself when the server is back.

Ids are never issued twice: at every open the `activationId` and `smsId`
sequences are raised to at least the clock in microseconds, as in the SQLite
store (a database restored from a backup starts above anything issued).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeAlias, TypeVar

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from .errors import StoreError

__all__ = ["PgStore", "pg_migrations"]

log = structlog.get_logger("supplier.pgstore")

T = TypeVar("T")
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"  # what `_write` hands an op
MAX_JSON_ID = 2**53 - 1  # the largest integer a JavaScript hub reads exactly
_SEQUENCES = ("activations", "sms")  # the tables whose ids the hubs see
_MIGRATION_LOCK = 0x5375_7070  # pg_advisory_xact_lock key: one host migrates at a time
DEFAULT_TIMEOUT = 5.0

# What a database that cannot be reached or cannot do what was asked raises:
# all of them reach callers as StoreError, the store's one failure.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


def pg_migrations() -> list[tuple[int, str]]:
    """(version, SQL) for every file `migrations/postgresql/NNNN_*.sql`, in order."""
    folder = resources.files("supplier") / "migrations" / "postgresql"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def describe(exc: BaseException) -> str:
    """A database failure in one line (no password: URLs are never part of it)."""
    if isinstance(exc, TimeoutError):
        return "the database did not answer in time"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"


class PgStore:
    """A pool of connections to one PostgreSQL database."""

    backend = "postgresql"
    shared = True  # several hosts may use this database at once

    def __init__(self, url: str, pool: asyncpg.Pool, timeout: float) -> None:
        self.url = url
        self.path = redact(url)  # what errors and logs name
        self.timeout = timeout
        self._pool = pool
        self.lost: str | None = None  # never set: a lost connection is retried, not final

    @classmethod
    async def open(
        cls, url: str, *, timeout: float = DEFAULT_TIMEOUT, max_size: int = 10
    ) -> PgStore:
        """Connect, bring the schema up to date and raise the id sequences."""
        try:
            async with asyncio.timeout(timeout * 3):
                pool = await asyncpg.create_pool(
                    url, min_size=1, max_size=max_size, command_timeout=timeout
                )
        except DATABASE_ERRORS as exc:
            raise StoreError(f"{redact(url)}: cannot connect: {describe(exc)}") from None
        except ValueError as exc:  # a malformed URL
            raise StoreError(f"{redact(url)}: {exc}") from None
        store = cls(url, pool, timeout)
        try:
            await store._prepare(time.time())
        except BaseException:
            await store.close()
            raise
        return store

    def file_problem(self) -> str | None:
        """Always None: a database server has no file of ours to lose (see `lost`)."""
        return None

    async def close(self) -> None:
        """Close every connection (twice is harmless)."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._pool.close()
        except DATABASE_ERRORS:
            self._pool.terminate()

    async def _prepare(self, now: float) -> None:
        async def op(db: Connection) -> None:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version integer PRIMARY KEY, applied double precision NOT NULL)"
            )
            # Several hosts may start at once: one migrates, the others wait and see it done.
            await db.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            current = await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            known = pg_migrations()
            newest = known[-1][0] if known else 0
            if current > newest:
                raise StoreError(
                    f"{self.path}: schema version {current} is newer than this program knows "
                    f"({newest}); refusing to touch it"
                )
            for version, sql in known:
                if version > current:
                    await db.execute(sql)
                    await db.execute(
                        "INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)",
                        version,
                        now,
                    )
            floor = int(now * 1_000_000)
            if floor >= MAX_JSON_ID:
                raise StoreError(f"{self.path}: the clock is past what ids can follow")
            for table in _SEQUENCES:
                # Never lower a sequence (a host whose clock is behind): the next id is
                # above the clock, the sequence's last value and every id in the table.
                sequence = await db.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
                sql = f"SELECT GREATEST(s.last_value, (SELECT COALESCE(MAX(id), 0) FROM {table})) + 1 FROM {sequence} s"  # noqa: E501, S608 - our table; PostgreSQL's own sequence name
                above = await db.fetchval(sql)
                await db.execute("SELECT setval($1, $2, false)", sequence, max(floor, above))

        await self._write(op, f"{self.path}: cannot prepare the database")

    async def schema_version(self) -> int:
        rows = await self._fetch("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    # -- the two ways in ------------------------------------------------------------

    async def _write(self, op: Callable[[Connection], Awaitable[T]], what: str) -> T:
        """Run `op` in one transaction and return once it is committed.

        A database error or an unreachable server reaches the caller as
        StoreError (nothing of `op` is written); any other error as it is
        (also nothing written: the transaction is rolled back).
        """
        try:
            async with (
                asyncio.timeout(self.timeout),
                self._pool.acquire() as db,
                db.transaction(),
            ):
                return await op(db)
        except StoreError:
            raise
        except DATABASE_ERRORS as exc:
            raise StoreError(f"{what}: {describe(exc)}") from None

    async def _fetch(self, sql: str, *params: object) -> list[Any]:
        """Rows of one read (asyncpg Records: indexable like tuples)."""
        try:
            async with asyncio.timeout(self.timeout):
                return list(await self._pool.fetch(sql, *params))
        except DATABASE_ERRORS as exc:
            raise StoreError(f"{self.path}: cannot read: {describe(exc)}") from None
