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
import contextlib
import dataclasses
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from . import shared
from .errors import StoreError, UnknownActivation
from .sale import SaleRequest
from .shared import Counted, LiveSim, Published
from .store import (
    FINISH_STATUSES,
    HUB_ID_TABLES,
    Activation,
    BalanceRow,
    Delivery,
    Earning,
    FinishStatus,
    NewPart,
    NewSms,
    SimRow,
    Sms,
    StoredPart,
    Usage,
    id_floor,
    identifiers,
    migrations,
)

__all__ = ["PgStore", "probe", "redact"]

log = structlog.get_logger("supplier.pgstore")

T = TypeVar("T")
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"  # what `_write` hands an op
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
    # A server stopped mid-transaction can leave a pooled connection whose protocol
    # state asyncpg lost track of ("cannot switch to state 12; another operation is in
    # progress", asyncpg issue #1069): a failed call like any other, and the pool
    # replaces the connection when its reset fails. Seen with `pg_ctl stop -m fast`.
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


async def _keep_session(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's reset on each release: nothing beyond what asyncpg always does.

    asyncpg still rolls back a transaction left open (a cancelled call) and drops
    listeners before calling this, and a connection whose rollback fails is closed.
    Its default reset would also send `pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL` (a round trip, two to three per GET_NUMBER under load)
    to undo session state this store never creates: it sets nothing but `SET LOCAL`,
    takes only transaction-scoped advisory locks, listens to nothing and declares no
    cursors. Whatever adds session state here must bring the default back.
    """


def describe(exc: BaseException) -> str:
    """A database failure in one line (no password: URLs are never part of it)."""
    if isinstance(exc, TimeoutError):
        return "the database did not answer in time"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def text(value: str) -> str:
    """Text PostgreSQL can hold: its `text` refuses U+0000, which anyone can put in a UCS-2
    SMS; it becomes U+FFFD (the PDU, stored as it came, keeps the original)."""
    return value.replace("\x00", "\ufffd")


def rows_changed(status: str) -> int:
    """The row count at the end of asyncpg's command status ("UPDATE 3", "INSERT 0 1")."""
    count = status.rsplit(" ", 1)[-1]
    return int(count) if count.isdigit() else 0


def _columns(kind: Any) -> tuple[str, ...]:
    """A table's columns, named as its dataclass's fields (the same names by design)."""
    return tuple(field.name for field in dataclasses.fields(kind))


_ACTIVATION = _columns(Activation)
_SIM = _columns(SimRow)
_SMS = _columns(Sms)
_DELIVERY = _columns(Delivery)
_ACTIVATION_COLUMNS = ", ".join(_ACTIVATION)
_SIM_COLUMNS = ", ".join(_SIM)
_SMS_COLUMNS = ", ".join(_SMS)
_DELIVERY_COLUMNS = ", ".join(_DELIVERY)


def _prefixed(columns: tuple[str, ...], alias: str) -> str:
    return ", ".join(f"{alias}.{column}" for column in columns)


def _activation(row: asyncpg.Record) -> Activation:
    return Activation(**dict(row.items()))


def _sim(row: asyncpg.Record) -> SimRow:
    return SimRow(**dict(row.items()))


def _sms(values: Iterable[Any]) -> Sms:
    return Sms(**dict(zip(_SMS, values, strict=True)))


def _delivery(values: Iterable[Any]) -> Delivery:
    return Delivery(**dict(zip(_DELIVERY, values, strict=True)))


# A password given as a query parameter (`?password=…`, which asyncpg and libpq accept).
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL without its password (in the user part or the query), for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        rest = userinfo.split(":", 1)[0] + "@" + host
    return scheme + "://" + _QUERY_PASSWORD.sub(r"\1***", rest)


async def probe(url: str, timeout: float = 3.0) -> str | None:
    """Why the database at `url` cannot be reached now, or None (check-config's look)."""
    try:
        async with asyncio.timeout(timeout):
            connection = await asyncpg.connect(url)
            try:
                await connection.fetchval("SELECT 1")
            finally:
                await connection.close()
    except DATABASE_ERRORS as exc:
        return f"cannot connect to {redact(url)}: {describe(exc)}"
    except ValueError as exc:  # a malformed URL
        return f"{redact(url)}: {exc}"
    return None


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
        self._closing = False
        self._calls = 0  # reads and writes under way: `close` lets them finish
        self._idle = asyncio.Event()
        self._idle.set()

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
                # min_size 0: no connection floor. With one, asyncpg's pool reconnects on
                # its own while the server is down, logging a traceback at every try
                # (plain text on stderr, beside our one line per episode); connections
                # are opened by the calls themselves, which are paced by their callers.
                pool = await asyncpg.create_pool(
                    url,
                    min_size=0,
                    max_size=max_size,
                    command_timeout=timeout,
                    reset=_keep_session,
                )
        except DATABASE_ERRORS as exc:
            raise StoreError(f"{redact(url)}: cannot connect: {describe(exc)}") from None
        except ValueError as exc:  # a malformed URL
            raise StoreError(f"{redact(url)}: {exc}") from None
        try:
            async with asyncio.timeout(timeout * 3), pool.acquire():
                pass  # one connection now: an unreachable server is "cannot connect"
        except DATABASE_ERRORS as exc:
            pool.terminate()
            raise StoreError(f"{redact(url)}: cannot connect: {describe(exc)}") from None
        except ValueError as exc:  # a malformed URL (read at the first connection)
            pool.terminate()
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
        """Refuse new calls, let those under way finish, close every connection.

        As the SQLite store's close commits what was queued before it: a write
        started before `close` is committed (or fails on its own), never cut
        off by the pool closing under it. Twice is harmless.
        """
        self._closing = True
        try:
            async with asyncio.timeout(self.timeout):
                await self._idle.wait()
                await self._pool.close()
        except DATABASE_ERRORS:
            self._pool.terminate()

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Count one read or write under way (refused once `close` began)."""
        if self._closing:
            raise StoreError(f"{what}: {self.path} is closed")
        self._calls += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._calls -= 1
            if not self._calls:
                self._idle.set()

    async def _prepare(self, now: float) -> None:
        async def op(db: Connection) -> None:
            # Several hosts may start at once: one migrates, the others wait and see it
            # done. The lock comes first: two CREATE TABLE IF NOT EXISTS at once collide.
            await db.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version integer PRIMARY KEY, applied double precision NOT NULL)"
            )
            current = await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            known = migrations("postgresql")
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
            floor = id_floor(now, self.path)
            for table in HUB_ID_TABLES:
                # Never lower a sequence (a host whose clock is behind): the next id is
                # above the clock, the sequence's last value and every id in the table.
                sequence = await db.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
                sql = f"SELECT GREATEST(s.last_value, (SELECT COALESCE(MAX(id), 0) FROM {table})) + 1 FROM {sequence} s"  # noqa: E501 - our table; PostgreSQL's own sequence name
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
            with self._call(what):
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
            with self._call(f"{self.path}: cannot read"):
                async with asyncio.timeout(self.timeout):
                    return list(await self._pool.fetch(sql, *params))
        except DATABASE_ERRORS as exc:
            raise StoreError(f"{self.path}: cannot read: {describe(exc)}") from None

    # -- whole rows of a module's own tables (supplier/bankstore.py) -------------------

    async def table_rows(self, table: str, columns: Sequence[str]) -> list[tuple[Any, ...]]:
        """Every row of `table`, those columns: for modules that own a table of their own."""
        rows = await self._fetch(f"SELECT {identifiers(*columns)} FROM {identifiers(table)}")
        return [tuple(row) for row in rows]

    async def upsert_row(
        self, table: str, row: Mapping[str, object], key: Sequence[str], what: str
    ) -> None:
        """Insert `row`, or update the row with the same `key` columns, committed on return."""
        columns = list(row)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
        marks = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        sql = (
            f"INSERT INTO {identifiers(table)} ({identifiers(*columns)}) VALUES ({marks}) "
            f"ON CONFLICT ({identifiers(*key)}) DO UPDATE SET {updates}"
        )
        values = tuple(row.values())

        async def op(db: Connection) -> None:
            await db.execute(sql, *values)

        await self._write(op, what)

    # -- loading (the inventory is rebuilt from these at start) -----------------------

    async def load_sims(self) -> list[SimRow]:
        return [_sim(row) for row in await self._fetch(f"SELECT {_SIM_COLUMNS} FROM sims")]

    async def load_activations(self, since: float) -> list[Activation]:
        """Unfinished activations, and every one created after `since`."""
        rows = await self._fetch(
            f"SELECT {_ACTIVATION_COLUMNS} FROM activations "
            "WHERE finished IS NULL OR created >= $1 ORDER BY id",
            since,
        )
        return [_activation(row) for row in rows]

    async def load_usage(self) -> dict[tuple[str, str], Usage]:
        rows = await self._fetch(
            "SELECT number, service, offers, sold, cancelled, returned, blocked FROM usage"
        )
        return {(row[0], row[1]): Usage(*tuple(row)[2:]) for row in rows}

    async def get_activation(self, activation_id: int) -> Activation | None:
        rows = await self._fetch(
            f"SELECT {_ACTIVATION_COLUMNS} FROM activations WHERE id = $1", activation_id
        )
        return _activation(rows[0]) if rows else None

    # -- SIMs -----------------------------------------------------------------------

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
    ) -> SimRow:
        async def op(db: Connection) -> SimRow:
            row = await db.fetchrow(
                "INSERT INTO sims (iccid, imsi, number, country, operator, port, "
                "first_seen, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) "
                "ON CONFLICT (iccid) DO UPDATE SET imsi = excluded.imsi, "
                "number = COALESCE(excluded.number, sims.number), "
                "country = excluded.country, operator = excluded.operator, "
                "port = excluded.port, last_seen = excluded.last_seen "
                f"RETURNING {_SIM_COLUMNS}",
                iccid, imsi, number, country, operator, port, now,
            )  # fmt: skip
            assert row is not None  # an upsert always returns its row
            return _sim(row)

        return await self._write(op, f"cannot record SIM {iccid}")

    async def set_sim_enabled(self, iccid: str, enabled: bool) -> bool:
        return await self._update_sim("enabled = $2", enabled, iccid)

    async def set_sim_number(self, iccid: str, number: str | None) -> bool:
        return await self._update_sim("number_manual = $2", number, iccid)

    async def touch_sims(self, iccids: list[str], now: float) -> None:
        """Mark SIMs seen now (they are live): `supplier sims` shows a truthful age."""

        async def op(db: Connection) -> None:
            await db.execute(
                "UPDATE sims SET last_seen = $1 WHERE iccid = ANY($2::text[])", now, iccids
            )

        await self._write(op, "cannot record that SIMs were seen")

    async def _update_sim(self, assignment: str, value: object, iccid: str) -> bool:
        async def op(db: Connection) -> bool:
            status = await db.execute(
                f"UPDATE sims SET {assignment} WHERE iccid = $1", iccid, value
            )
            return rows_changed(status) > 0

        return await self._write(op, f"cannot update SIM {iccid}")

    # -- activations ------------------------------------------------------------------

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
    ) -> Activation:
        """Commit a new activation, count the offer and mark the SIM used, in one transaction."""

        async def op(db: Connection) -> int:
            # The usage count and the SIM's last_used follow by trigger (migration 3).
            activation_id = await db.fetchval(
                "INSERT INTO activations (hub, iccid, number, service, country, operator, "
                "sum, currency, created, release_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                request.hub, iccid, number, request.service, country, operator, request.sum,
                request.currency, now, release_at,
            )  # fmt: skip
            return int(activation_id)

        activation_id = await self._write(op, "cannot open an activation")
        return Activation(
            activation_id, request.hub, iccid, number, request.service, country, operator,
            request.sum, request.currency, now, release_at, None, None,
        )  # fmt: skip

    async def finish_activation(
        self, activation_id: int, status: int, now: float, *, hub: str | None = None
    ) -> tuple[Activation, bool]:
        """Record a FINISH; (activation, True) the first time, (activation, False) on a repeat.

        A repeat changes nothing, whatever status it carries: the hub repeats
        a FINISH when it missed our answer, and the first one stands. Two hosts
        finishing one activation at once: the second UPDATE waits for the
        first's row lock, then finds it finished and is told a repeat.
        """
        if status not in FINISH_STATUSES:
            raise ValueError(f"status {status} is not one of {sorted(map(int, FINISH_STATUSES))}")

        async def op(db: Connection) -> tuple[Activation, bool]:
            # The usage counters follow by trigger (migration 3); a repeat or a
            # stranger's id updates nothing and is told apart by a second look.
            row = await db.fetchrow(
                "UPDATE activations SET finished = $1, status = $2 "
                "WHERE id = $3 AND finished IS NULL AND ($4::text IS NULL OR hub = $4) "
                f"RETURNING {_ACTIVATION_COLUMNS}",
                now, status, activation_id, hub,
            )  # fmt: skip
            if row is not None:
                return _activation(row), True
            row = await db.fetchrow(
                f"SELECT {_ACTIVATION_COLUMNS} FROM activations WHERE id = $1", activation_id
            )
            if row is None or (hub is not None and row["hub"] != hub):
                raise UnknownActivation(f"unknown activationId {activation_id}")
            return _activation(row), False

        return await self._write(op, f"cannot finish activation {activation_id}")

    # -- received SMS -----------------------------------------------------------------

    async def receive(
        self, part: NewPart, sms: NewSms | None
    ) -> tuple[bool, Sms | None, list[Delivery]]:
        """Store a part and, when it completes a message, the message and its deliveries.

        One transaction. Returns (duplicate, sms, deliveries); a duplicate
        part (same SIM, same PDU, whichever host read it) changes nothing.
        """

        async def op(db: Connection) -> tuple[bool, Sms | None, list[Delivery]]:
            status = await db.execute(
                "INSERT INTO sms_parts (digest, iccid, port, storage, slot, pdu, "
                "received, sender, part_key, part_total, part_seq) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
                "ON CONFLICT (digest) DO NOTHING",
                part.digest, part.iccid, part.port, part.storage, part.slot, part.pdu,
                part.received, part.sender and text(part.sender), part.part_key,
                part.part_total, part.part_seq,
            )  # fmt: skip
            if rows_changed(status) == 0:
                return True, None, []
            if sms is None:
                return False, None, []
            stored, deliveries = await self._create_sms(db, sms)
            return False, stored, deliveries

        return await self._write(op, "cannot store an SMS")

    async def complete(self, sms: NewSms) -> tuple[Sms, list[Delivery]]:
        """Turn stored pending parts into a message (the reassembly timeout passed)."""

        async def op(db: Connection) -> tuple[Sms, list[Delivery]]:
            return await self._create_sms(db, sms)

        return await self._write(op, "cannot store an SMS")

    async def _create_sms(self, db: Connection, sms: NewSms) -> tuple[Sms, list[Delivery]]:
        sms_id = int(
            await db.fetchval(
                "INSERT INTO sms (iccid, number, sender, text, kind, sent, received, complete) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                sms.iccid, sms.number, text(sms.sender), text(sms.text), sms.kind, sms.sent,
                sms.received, sms.complete,
            )
        )  # fmt: skip
        await db.execute(
            "UPDATE sms_parts SET sms_id = $1 WHERE digest = ANY($2::text[]) AND sms_id IS NULL",
            sms_id,
            list(sms.digests),
        )
        deliveries = []
        routes = sms.routes
        if routes is None:  # several hosts: from every host's activations, as of its arrival
            at = sms.received if sms.route_at is None else sms.route_at
            routes = await shared.routes(db, sms.number, sms.iccid, at)
        for hub, activation_id in routes:
            row = await db.fetchrow(
                "INSERT INTO deliveries (sms_id, hub, activation_id, created, next_attempt) "
                "VALUES ($1, $2, $3, $4, $4) ON CONFLICT (sms_id, hub) DO NOTHING "
                f"RETURNING {_DELIVERY_COLUMNS}",
                sms_id,
                hub,
                activation_id,
                sms.received,
            )
            if row is not None:
                deliveries.append(_delivery(row))
        stored = sms.stored(sms_id)
        return dataclasses.replace(
            stored, sender=text(stored.sender), text=text(stored.text)
        ), deliveries

    async def pending_parts(self) -> list[StoredPart]:
        rows = await self._fetch(
            "SELECT id, digest, iccid, pdu, received, part_key FROM sms_parts "
            "WHERE sms_id IS NULL AND part_key IS NOT NULL ORDER BY id"
        )
        return [StoredPart(*tuple(row)) for row in rows]

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
        width = len(_DELIVERY)
        returned = f"{_prefixed(_DELIVERY, 'd')}, {_prefixed(_SMS, 's')}"
        sql = f"""
            WITH clock AS (SELECT {shared.SERVER_NOW} AS now),
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
        """

        async def op(db: Connection) -> list[tuple[Delivery, Sms]]:
            rows = await db.fetch(
                sql, hub, now, self.holder, skip, limit, self.lease_seconds(push_timeout)
            )
            taken = [(_delivery(tuple(row)[:width]), _sms(tuple(row)[width:])) for row in rows]
            return sorted(taken, key=lambda pair: (pair[0].next_attempt, pair[0].id))

        return await self._write(op, f"{self.path}: cannot take due pushes for {hub}")

    async def next_due(self, hub: str, exclude: Iterable[int] = ()) -> float | None:
        """When the hub's next delivery falls due (host clock), leaving out those
        another host holds a live lease on: the pusher polls for those."""
        rows = await self._fetch(
            "SELECT MIN(next_attempt) FROM deliveries "
            "WHERE hub = $1 AND done IS NULL AND id <> ALL($2::bigint[]) "
            "AND (lease_until IS NULL OR leased_by = $3 "
            f"OR lease_until <= {shared.SERVER_NOW})",
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
            return rows_changed(status) > 0

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

    async def release_leases(self, hubs: Iterable[str], keep: Iterable[int] = ()) -> int:
        """A clean stop: end this store's leases on the hubs' deliveries that are not done
        (pushes abandoned in flight, or taken and not sent yet), so another host takes
        them now rather than when the leases run out. Nothing else changes: they stay
        due, no attempt is counted. `keep`: leases left to run out. How many ended."""

        async def op(db: Connection) -> int:
            status = await db.execute(
                "UPDATE deliveries SET lease_until = NULL "
                "WHERE hub = ANY($1::text[]) AND done IS NULL AND leased_by = $2 "
                "AND lease_until IS NOT NULL AND id <> ALL($3::bigint[])",
                list(hubs),
                self.holder,
                list(keep),
            )
            return rows_changed(status)

        return await self._write(op, f"{self.path}: cannot give back push leases")

    async def deliveries_for(self, sms_id: int) -> list[Delivery]:
        rows = await self._fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE sms_id = $1 ORDER BY id", sms_id
        )
        return [_delivery(row) for row in rows]

    # -- what the status page and `supplier sims` read ---------------------------------

    async def earnings(self, since: float) -> list[Earning]:
        """Activations finished with status 3 (sold) since `since`, with their `sum`."""
        rows = await self._fetch(
            "SELECT hub, iccid, currency, sum, finished FROM activations "
            "WHERE status = $1 AND finished >= $2 ORDER BY finished",
            int(FinishStatus.SOLD),
            since,
        )
        return [Earning(*tuple(row)) for row in rows]

    async def sms_count(self, since: float) -> int:
        rows = await self._fetch("SELECT COUNT(*) FROM sms WHERE received >= $1", since)
        return int(rows[0][0])

    async def last_sms(self) -> dict[str, float]:
        """ICCID → when its last SMS arrived."""
        rows = await self._fetch("SELECT iccid, MAX(received) FROM sms GROUP BY iccid")
        return {row[0]: float(row[1]) for row in rows}

    async def backlog(self, now: float) -> dict[str, tuple[int, float]]:
        """Hub → (undelivered pushes, age in seconds of the oldest)."""
        rows = await self._fetch(
            "SELECT hub, COUNT(*), MIN(created) FROM deliveries WHERE done IS NULL GROUP BY hub"
        )
        return {row[0]: (int(row[1]), max(0.0, now - float(row[2]))) for row in rows}

    async def activations_of(self, iccid: str, limit: int = 200) -> list[Activation]:
        rows = await self._fetch(
            f"SELECT {_ACTIVATION_COLUMNS} FROM activations WHERE iccid = $1 "
            "ORDER BY id DESC LIMIT $2",
            iccid,
            limit,
        )
        return [_activation(row) for row in rows]

    async def sms_of(self, iccid: str, limit: int = 200) -> list[tuple[Sms, list[Delivery]]]:
        """A SIM's latest SMS, newest first, each with its deliveries."""
        rows = await self._fetch(
            f"SELECT {_SMS_COLUMNS} FROM sms WHERE iccid = $1 ORDER BY id DESC LIMIT $2",
            iccid,
            limit,
        )
        messages = [_sms(row) for row in rows]
        if not messages:
            return []
        drows = await self._fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE sms_id = ANY($1::bigint[]) "
            "ORDER BY id",
            [m.id for m in messages],
        )
        by_sms: dict[int, list[Delivery]] = {}
        for row in drows:
            delivery = _delivery(row)
            by_sms.setdefault(delivery.sms_id, []).append(delivery)
        return [(m, by_sms.get(m.id, [])) for m in messages]

    async def recent_sms(self, limit: int = 100) -> list[Sms]:
        rows = await self._fetch(f"SELECT {_SMS_COLUMNS} FROM sms ORDER BY id DESC LIMIT $1", limit)
        return [_sms(row) for row in rows]

    # -- numbers learned by USSD, balances --------------------------------------------

    async def learned_numbers(self) -> dict[str, str]:
        """ICCID → the number its operator told us (supplier/upkeep.py)."""
        rows = await self._fetch("SELECT iccid, number FROM learned_numbers")
        return {str(row[0]): str(row[1]) for row in rows}

    async def learn_number(self, iccid: str, number: str, source: str, now: float) -> None:
        async def op(db: Connection) -> None:
            await db.execute(
                "INSERT INTO learned_numbers (iccid, number, source, learned) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (iccid) DO UPDATE SET "
                "number = excluded.number, source = excluded.source, learned = excluded.learned",
                iccid,
                number,
                source,
                now,
            )

        await self._write(op, f"cannot record the number of SIM {iccid}")

    async def balances(self) -> dict[str, BalanceRow]:
        rows = await self._fetch("SELECT iccid, amount, currency, text, read FROM sim_balances")
        return {str(row[0]): BalanceRow(row[1], row[2], row[3], float(row[4])) for row in rows}

    async def save_balance(self, iccid: str, balance: BalanceRow) -> None:
        async def op(db: Connection) -> None:
            await db.execute(
                "INSERT INTO sim_balances (iccid, amount, currency, text, read) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (iccid) DO UPDATE SET "
                "amount = excluded.amount, currency = excluded.currency, "
                "text = excluded.text, read = excluded.read",
                iccid,
                balance.amount,
                balance.currency,
                balance.text,
                balance.read,
            )

        await self._write(op, f"cannot record the balance of SIM {iccid}")

    # -- several hosts: one inventory (supplier/shared.py) ---------------------------

    async def publish(
        self,
        host: str,
        lease: float,
        sims: Sequence[LiveSim],
        gone: Iterable[str] = (),
        *,
        whole: bool = False,
        instance: str = "",
    ) -> Published:
        """Renew this host's lease and write its SIMs' state (`shared.publish`)."""

        async def op(db: Connection) -> Published:
            return await shared.publish(db, host, lease, sims, gone, whole=whole, instance=instance)

        published = await self._write(op, f"cannot publish the SIMs of host {host}")
        if whole:
            await self._analyze(host)
        return published

    async def _analyze(self, host: str) -> None:
        """Bring the planner's statistics of the SIM tables up to date after a host's SIMs came.

        Autovacuum looks at most once a minute; until it has, a fresh database reads as
        nearly empty to the planner, and the allocation and the counts are planned for a
        handful of rows while hundreds are there. Small tables: a few milliseconds. If it
        fails, autovacuum does it later; the publish stands.
        """

        async def op(db: Connection) -> None:
            await db.execute("ANALYZE hosts, live_sims, sims")

        try:
            await self._write(op, f"cannot update the statistics after host {host} published")
        except StoreError as exc:
            log.warning("statistics_not_updated", host=host, error=str(exc))

    async def leave(self, host: str) -> None:
        """A clean stop: this host's SIMs leave every host's counts now, not after the lease."""

        async def op(db: Connection) -> None:
            await db.execute("DELETE FROM live_sims WHERE host = $1", host)
            await db.execute(
                f"UPDATE hosts SET lease_until = {shared.SERVER_NOW} WHERE name = $1", host
            )

        await self._write(op, f"cannot take host {host} out of the inventory")

    async def allocate(
        self, request: SaleRequest, *, now: float, release_after: float
    ) -> Activation | None:
        """Open an activation on the least recently used SIM of any live host, or None."""

        async def op(db: Connection) -> Activation | None:
            return await shared.allocate(db, request, now=now, release_after=release_after)

        return await self._write(op, "cannot open an activation")

    async def counts(self, services: Sequence[str], now: float, host: str) -> Counted:
        """What every live host can sell now; `host`'s own SIMs one by one."""

        async def op(db: Connection) -> Counted:
            return await shared.counts(db, services, now, host)

        return await self._write(op, "cannot count the SIMs on sale")

    async def held_here(
        self, host: str, known_open: Sequence[int], numbers: Sequence[str]
    ) -> tuple[list[Activation], dict[tuple[str, str], Usage]]:
        """Activations holding this host's SIMs (or once open here) and its numbers' history."""

        async def op(db: Connection) -> tuple[list[Activation], dict[tuple[str, str], Usage]]:
            return await shared.held_here(db, host, known_open, numbers)

        return await self._write(op, f"cannot read what holds the SIMs of host {host}")
