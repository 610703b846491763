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
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from .errors import StoreError
from .store import _DELIVERY_COLUMNS, _SMS_COLUMNS, Delivery, Sms, _delivery, _sms

__all__ = ["PgStore", "pg_migrations"]

log = structlog.get_logger("supplier.pgstore")

T = TypeVar("T")
if TYPE_CHECKING:  # generic in asyncpg-stubs only: subscripting it at run time fails
    Connection = PoolConnectionProxy[asyncpg.Record]  # what `_write` hands an op
MAX_JSON_ID = 2**53 - 1  # the largest integer a JavaScript hub reads exactly
_SEQUENCES = ("activations", "sms")  # the tables whose ids the hubs see
_MIGRATION_LOCK = 0x5375_7070  # pg_advisory_xact_lock key: one host migrates at a time
DEFAULT_TIMEOUT = 5.0
# A push lease is the hub's push timeout plus the store's timeout (recording the
# answer) plus this: scheduling delays on a loaded host. Long enough that a live
# host always records its attempt before its lease runs out (else another host
# could push the SMS again); short enough that a dead host's pushes wait seconds.
LEASE_SLACK = 5.0

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

    def __init__(
        self, url: str, pool: asyncpg.Pool, timeout: float, host: str | None = None
    ) -> None:
        self.url = url
        self.path = redact(url)  # what errors and logs name
        self.timeout = timeout
        # This host's name (config `host.name`) and a token of this run: who holds a push
        # lease. The token makes a lease this run's own, not its name's: two daemons
        # given one name by mistake never take each other's pushes as their own.
        self.host = host or socket.gethostname()
        self.holder = f"{self.host}#{secrets.token_hex(4)}"
        self.lease_slack = LEASE_SLACK
        self._pool = pool
        self.lost: str | None = None  # never set: a lost connection is retried, not final

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_size: int = 10,
        host: str | None = None,
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
        store = cls(url, pool, timeout, host)
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

    # -- pushes: the shared outbox, taken with leases ---------------------------------
    #
    # Every host pushes from one outbox. A host takes a hub's due deliveries in one
    # statement (`FOR UPDATE SKIP LOCKED`: two hosts never take one row) with a lease
    # on each, by the database server's clock so hosts whose clocks disagree agree on
    # whose lease ran out; while the lease runs no other host takes the delivery, so
    # each attempt is made by one host. Recording the answer ends the lease. A host
    # that died leaves its leases to run out, and another host takes its deliveries.
    # `next_attempt` stays on the hosts' clocks, as in the SQLite store.
    #
    # A delivery leased by this store (`holder`: this run of this host) and not in
    # flight here (`exclude`) is an attempt of ours whose answer could not be
    # recorded (the database was down): it is taken again at once, not after its
    # lease, so the answer is recorded by the host that has it. A restarted host
    # is a new holder: it waits for its old leases like any other host.

    def lease_seconds(self, push_timeout: float) -> float:
        """How long a push is leased: the POST, recording its answer, and slack."""
        return push_timeout + self.timeout + self.lease_slack

    async def due_deliveries(
        self,
        hub: str,
        now: float,
        limit: int,
        exclude: Iterable[int] = (),
        *,
        push_timeout: float = 10.0,
    ) -> list[tuple[Delivery, Sms]]:
        """Take up to `limit` of the hub's due deliveries, leased to this host."""
        if limit <= 0:
            return []
        skip = list(exclude)
        width = len(_DELIVERY_COLUMNS.split(","))
        returned = ", ".join(
            [f"d.{c.strip()}" for c in _DELIVERY_COLUMNS.split(",")]
            + [f"s.{c.strip()}" for c in _SMS_COLUMNS.split(",")]
        )
        sql = f"""
            WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now),
            taken AS (
                SELECT id FROM deliveries
                WHERE hub = $1 AND done IS NULL AND next_attempt <= $2
                  AND (lease_until IS NULL OR lease_until <= (SELECT now FROM clock)
                       OR leased_by = $3)
                  AND id <> ALL($4::bigint[])
                ORDER BY next_attempt, id
                LIMIT $5
                FOR UPDATE SKIP LOCKED
            )
            UPDATE deliveries d
            SET lease_until = (SELECT now FROM clock) + $6, leased_by = $3
            FROM taken, sms s
            WHERE d.id = taken.id AND s.id = d.sms_id
            RETURNING {returned}
        """  # noqa: S608 - our own column lists

        async def op(db: Connection) -> list[tuple[Delivery, Sms]]:
            rows = await db.fetch(
                sql, hub, now, self.holder, skip, limit, self.lease_seconds(push_timeout)
            )
            taken = [(_delivery(row[:width]), _sms(row[width:])) for row in rows]
            return sorted(taken, key=lambda pair: (pair[0].next_attempt, pair[0].id))

        return await self._write(op, f"{self.path}: cannot take due pushes for {hub}")

    async def next_due(self, hub: str, exclude: Iterable[int] = ()) -> float | None:
        """When the hub's next delivery falls due (host clock), leaving out those
        another host holds a live lease on: the pusher polls for those."""
        rows = await self._fetch(
            "SELECT MIN(next_attempt) FROM deliveries "
            "WHERE hub = $1 AND done IS NULL AND id <> ALL($2::bigint[]) "
            "AND (lease_until IS NULL OR leased_by = $3 "
            "OR lease_until <= extract(epoch FROM clock_timestamp()))",
            hub,
            list(exclude),
            self.holder,
        )
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    async def settle_delivery(
        self, delivery_id: int, outcome: str, result: str, now: float
    ) -> bool:
        """Mark a delivery done and end its lease. False if it already was done:
        a SUCCESS is recorded once, whichever host's attempt it answered."""

        async def op(db: Connection) -> bool:
            status = await db.execute(
                "UPDATE deliveries SET done = $1, outcome = $2, attempts = attempts + 1, "
                "last_attempt = $1, last_result = $3, lease_until = NULL, leased_by = $4 "
                "WHERE id = $5 AND done IS NULL",
                now,
                outcome,
                result,
                self.holder,
                delivery_id,
            )
            return status != "UPDATE 0"

        return await self._write(op, f"{self.path}: cannot settle delivery {delivery_id}")

    async def retry_delivery(
        self, delivery_id: int, result: str, now: float, next_attempt: float
    ) -> None:
        """Record a failed attempt and end this host's lease. A delivery another host
        has taken over since (this host's lease ran out) is left to that host's
        attempt: ending its lease would let a third host push it at the same time."""

        async def op(db: Connection) -> None:
            await db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt = $1, "
                "last_result = $2, next_attempt = $3, lease_until = NULL "
                "WHERE id = $4 AND done IS NULL AND leased_by = $5",
                now,
                result,
                next_attempt,
                delivery_id,
                self.holder,
            )

        await self._write(op, f"{self.path}: cannot reschedule delivery {delivery_id}")
