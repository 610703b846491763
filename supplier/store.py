"""The durable store: SQLite (WAL) in a thread of its own, behind one narrow interface.

Everything the protocol promises is written here before it is answered:
an activation is committed before its number goes to the hub, a FINISH
before its SUCCESS. The interface is small on purpose (open/finish an
activation, upsert a SIM, load what the inventory needs) so that another
backend (PostgreSQL, to share one inventory between modem hosts) can stand
in for it. The schema is versioned with `PRAGMA user_version`, one SQL file
per version under `migrations/`.

`synchronous=FULL`: a committed activation survives a power cut, not only a
`kill -9` (selling a number twice is worse than a millisecond per commit).

Ids are never issued twice, even across databases: at every open the
`activationId` and `smsId` sequences are raised to at least the clock in
microseconds, so a database that replaces a lost one (or a restored backup)
starts above anything an earlier one issued (it would have to have issued
more than one id per microsecond). That stays below 2**53 until the year
2255: hubs written in JavaScript read numbers as doubles. A store whose
file is deleted or replaced while open (`file_problem`) refuses every
write from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from .errors import StoreError, UnknownActivation
from .sale import SaleRequest

__all__ = [
    "Activation",
    "BalanceRow",
    "DatabaseLock",
    "Delivery",
    "Earning",
    "FinishStatus",
    "Message",
    "NewPart",
    "NewSms",
    "SimRow",
    "Sms",
    "Store",
    "StoredPart",
    "Usage",
]


class FinishStatus(enum.IntEnum):
    """FINISH_ACTIVATION `status` (docs/agent-protocol.md §3)."""

    NOT_FOR_SERVICE = 1  # never offer this number for this service again
    SOLD = 3  # sold and paid: used up for this service
    CANCELLED = 4  # may be offered again, at most MAX_OFFERS times in all
    RETURNED = 5  # the user was refunded: counts as cancelled for offering


FINISH_STATUSES = frozenset(FinishStatus)
T = TypeVar("T")
HUB_ID_TABLES = ("activations", "sms")  # the tables whose ids the hubs see
MAX_JSON_ID = 2**53 - 1  # the largest integer a JavaScript hub reads exactly


class DatabaseLock:
    """One daemon per database: an exclusive `flock` on `<database>.lock`, holding its pid.

    The kernel drops the lock when its holder dies, however it dies, so a
    stale pid in the file never blocks a start; the pid is only there to
    name the holder.
    """

    def __init__(self, database: str | Path) -> None:
        self.path = Path(f"{database}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StoreError naming the process that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the lock file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"the database {str(self.path)[:-5]} is in use by another supplier daemon "
                f"(pid {holder}; lock {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


@dataclass(frozen=True, slots=True)
class SimRow:
    iccid: str
    imsi: str | None
    number: str | None
    number_manual: str | None
    country: str | None
    operator: str | None
    port: str | None
    enabled: bool
    first_seen: float
    last_seen: float
    last_used: float | None


@dataclass(frozen=True, slots=True)
class Activation:
    id: int
    hub: str
    iccid: str
    number: str
    service: str
    country: str
    operator: str
    sum: str | None
    currency: int | None
    created: float
    release_at: float
    finished: float | None
    status: int | None

    def is_open(self, now: float) -> bool:
        """Holds its SIM: not finished and `release_after` not yet passed."""
        return self.finished is None and now < self.release_at


@dataclass(frozen=True, slots=True)
class Earning:
    hub: str
    iccid: str
    currency: int | None
    sum: str | None
    finished: float


@dataclass(frozen=True, slots=True)
class Usage:
    offers: int = 0
    sold: int = 0
    cancelled: int = 0
    returned: int = 0
    blocked: bool = False


ACTIVATION_COLUMNS = (
    "id, hub, iccid, number, service, country, operator, sum, currency, "
    "created, release_at, finished, status"
)
_SIM_COLUMNS = (
    "iccid, imsi, number, number_manual, country, operator, port, enabled, "
    "first_seen, last_seen, last_used"
)


def _activation(row: sqlite3.Row | tuple[object, ...]) -> Activation:
    values = tuple(row)
    return Activation(*values)


def _sim(row: sqlite3.Row | tuple[object, ...]) -> SimRow:
    values = list(row)
    values[7] = bool(values[7])
    return SimRow(*values)


def _not_in(column: str, values: tuple[object, ...]) -> str:
    """`AND column NOT IN (?, ?, …)` for that many parameters, or nothing."""
    return f"AND {column} NOT IN ({','.join('?' * len(values))})" if values else ""


_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def identifiers(*names: str) -> str:
    """`a, b, c` after checking each is a plain lower-case SQL name (never a value)."""
    for name in names:
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"{name!r} is not a table or column name")
    return ", ".join(names)


def id_floor(now: float, path: str) -> int:
    """The lowest hub-visible id a store opened at `now` may issue: the clock in µs (both
    stores; see the module). StoreError once that is past what a JSON hub reads exactly."""
    floor = int(now * 1_000_000)
    if floor >= MAX_JSON_ID:
        raise StoreError(f"{path}: the clock is past what ids can follow")
    return floor


def migrations(dialect: str = "") -> list[tuple[int, str]]:
    """(version, SQL) for every file `migrations/[dialect/]NNNN_*.sql`, in order.

    SQLite's are in `migrations/`, PostgreSQL's (the same versions) in
    `migrations/postgresql/`.
    """
    folder = resources.files("supplier") / "migrations"
    if dialect:
        folder = folder / dialect
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


# -- received SMS and their deliveries (schema version 2) ------------------------------


@dataclass(frozen=True, slots=True)
class NewPart:
    """One PDU as read from a modem, with what reassembly needs to find it again."""

    digest: str
    iccid: str
    port: str | None
    storage: str | None
    slot: int | None
    pdu: str
    received: float
    sender: str | None
    part_key: str | None = None
    part_total: int | None = None
    part_seq: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A whole SMS as received: what `NewSms` (to be stored) and `Sms` (stored) share."""

    iccid: str
    number: str | None  # the number the SIM was sold under when it arrived
    sender: str
    text: str
    kind: str  # text, status_report, submit, undecodable
    sent: float | None  # the sender's time stamp (None: absent or its zone unknown)
    received: float
    complete: bool  # False: the parts that came, delivered after the reassembly timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class NewSms(Message):
    """A message not stored yet: its parts (by digest) and where it goes."""

    digests: tuple[str, ...]
    # (hub, activation id): one per hub. None: the store decides, in the transaction that
    # stores the SMS (a store shared by several hosts: supplier/shared.py `routes`).
    routes: tuple[tuple[str, int | None], ...] | None = ()
    route_at: float | None = None  # routes None: route as of this time (the inventory's clock)

    def stored(self, sms_id: int) -> Sms:
        return Sms(
            id=sms_id, iccid=self.iccid, number=self.number, sender=self.sender, text=self.text,
            kind=self.kind, sent=self.sent, received=self.received, complete=self.complete,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class StoredPart:
    id: int
    digest: str
    iccid: str
    pdu: str
    received: float
    part_key: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Sms(Message):
    """A stored message; `id` is the `smsId` the hubs get."""

    id: int


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    sms_id: int
    hub: str
    activation_id: int | None
    created: float
    attempts: int
    next_attempt: float
    last_attempt: float | None
    last_result: str | None
    done: float | None
    outcome: str | None


_SMS_COLUMNS = "id, iccid, number, sender, text, kind, sent, received, complete"
_DELIVERY_COLUMNS = (
    "id, sms_id, hub, activation_id, created, attempts, next_attempt, last_attempt, "
    "last_result, done, outcome"
)


def _sms(row: sqlite3.Row | tuple[object, ...]) -> Sms:
    sms_id, iccid, number, sender, text, kind, sent, received, complete = tuple(row)
    return Sms(
        id=sms_id, iccid=iccid, number=number, sender=sender, text=text, kind=kind, sent=sent,
        received=received, complete=bool(complete),
    )  # fmt: skip


def _delivery(row: sqlite3.Row | tuple[object, ...]) -> Delivery:
    return Delivery(*tuple(row))


@dataclass(slots=True)
class _Read:
    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Write:
    op: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    what: str
    savepoint: bool  # False: `op` changes rows with one statement at most (`Store._write`)


@dataclass(slots=True)
class _Stop:
    future: asyncio.Future[None]


_Job = _Read | _Write | _Stop
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    """On the loop: each result to its caller (one that gave up is skipped: the write stands)."""
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _post(outcomes: list[_Outcome]) -> None:
    """From the database thread: one wake-up of each caller's loop for a whole batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: no one is waiting
            loop.call_soon_threadsafe(_settle, mine)


class _Aborted(Exception):
    """A write's error after which SQLite had rolled back its whole transaction."""


class _Database:
    """One sqlite3 connection, used only by a thread of its own.

    Not aiosqlite: it hands each call (`BEGIN`, every `execute`, each
    `fetchone`, `COMMIT`) to its thread separately, so one GET_NUMBER cost
    3 to 5 round trips between the event loop and that thread, each waking both
    (bench/RESULTS.md, issue 17), and its way to run a whole function in its
    thread (`Connection._execute`) is private. Here a job is a plain function
    of the connection — a read, or a whole transaction of queued writes and
    its COMMIT — handed over once through a `SimpleQueue`; the answers come
    back with one `call_soon_threadsafe` per batch.

    Group commit happens in the thread: the writes queued while a COMMIT is
    being synced go into the next transaction together. Each write runs under
    a savepoint, so one that raises leaves nothing behind and the others in
    its transaction still commit.
    """

    def __init__(self, path: str, refusal: Callable[[], str | None]) -> None:
        self.path = path
        self._refusal = refusal  # why writes are refused now (the store's `lost`), or None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._connection: sqlite3.Connection | None = None
        self._closing = False
        # A daemon thread: a process that ends without closing the store is not held
        # up by it (to SQLite that is a crash, which WAL with synchronous=FULL survives).
        self._thread = threading.Thread(target=self._serve, name=f"store {path}", daemon=True)

    async def start(self) -> None:
        """Start the thread, which connects first (a sqlite3 connection stays in its thread)."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._jobs.put(_Read(lambda db: None, ready))  # answered once connected, or with why not
        self._thread.start()
        try:
            await ready
        except StoreError:
            self._closing = True
            self._thread.join(timeout=5.0)  # it failed every job and is returning
            raise

    async def call(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run `run` in the thread, outside any transaction the store opens."""
        self._refuse_closed("the database")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put(_Read(run, future))
        return await future

    async def execute(self, sql: str, params: Iterable[object] = ()) -> list[tuple[Any, ...]]:
        """One statement on the store's own connection; its rows."""
        args = tuple(params)
        return await self.call(lambda db: db.execute(sql, args).fetchall())

    async def write(
        self, op: Callable[[sqlite3.Connection], T], what: str, *, savepoint: bool = True
    ) -> T:
        """Run `op` in a write transaction (maybe with others) and return once it is committed."""
        self._refuse_closed(what)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put(_Write(op, future, what, savepoint))
        return await future

    async def close(self) -> None:
        """Finish every job queued before this, close the connection, end the thread."""
        if self._closing or not self._thread.is_alive():
            self._closing = True
            return
        self._closing = True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._jobs.put(_Stop(future))
        await future
        self._thread.join(timeout=5.0)  # it posted the answer as its last act

    def _refuse_closed(self, what: str) -> None:
        if self._closing or not self._thread.is_alive():
            raise StoreError(f"{what}: {self.path} is closed")

    # -- in the thread -------------------------------------------------------------------

    def _serve(self) -> None:
        held: _Job | None = None  # a job taken while gathering a batch, run next
        stopped = StoreError(f"{self.path}: the database thread has stopped")
        try:
            try:
                self._connection = sqlite3.connect(self.path, isolation_level=None)
            except sqlite3.Error as exc:
                stopped = StoreError(str(exc))
                return
            while True:
                job = held if held is not None else self._jobs.get()
                held = None
                if isinstance(job, _Stop):
                    if self._connection is not None:
                        self._connection.close()
                    _post([(job.future, None, None)])
                    return
                if isinstance(job, _Read):
                    _post([self._read(job)])
                    continue
                batch = [job]
                while True:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(more, _Write):
                        held = more
                        break
                    batch.append(more)
                _post(self._commit(batch))
        finally:
            # Only a bug ends the thread otherwise: fail whatever still waits, never hang it.
            self._closing = True
            left: list[_Job] = [held] if held is not None else []
            with contextlib.suppress(queue.Empty):
                while True:
                    left.append(self._jobs.get_nowait())
            _post(
                [
                    (j.future, None, StoreError(str(stopped)))
                    for j in left
                    if isinstance(j, (_Read, _Write))
                ]
            )
            _post([(j.future, None, None) for j in left if isinstance(j, _Stop)])

    def _read(self, job: _Read) -> _Outcome:
        try:
            return job.future, job.run(self._db()), None
        except sqlite3.Error as exc:
            return job.future, None, StoreError(str(exc))
        except Exception as exc:  # handed to its caller  # noqa: BLE001
            return job.future, None, exc

    def _commit(self, batch: list[_Write]) -> list[_Outcome]:
        refusal = self._refusal()
        if refusal is not None:
            return [(w.future, None, StoreError(f"{w.what}: {refusal}")) for w in batch]
        db = self._db()
        outcomes: list[_Outcome] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for write in batch:
                if write.savepoint:
                    db.execute("SAVEPOINT write")
                try:
                    result = write.op(db)
                except Exception as exc:  # that write's own failure, for its caller
                    if not db.in_transaction:  # SQLite rolled it all back (disk full, I/O error)
                        raise _Aborted(exc) from exc
                    if write.savepoint:
                        db.execute("ROLLBACK TO write")
                        db.execute("RELEASE write")
                    error = (
                        StoreError(f"{write.what}: {exc}")
                        if isinstance(exc, sqlite3.Error)
                        else exc
                    )
                    outcomes.append((write.future, None, error))
                else:
                    if write.savepoint:
                        db.execute("RELEASE write")
                    outcomes.append((write.future, result, None))
            db.execute("COMMIT")
        except (sqlite3.Error, _Aborted) as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            cause = exc.args[0] if isinstance(exc, _Aborted) else exc
            return [(w.future, None, StoreError(f"{w.what}: {cause}")) for w in batch]
        return outcomes

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"{self.path}: not connected")
        return self._connection


class Store:
    """One SQLite database; one connection, in a thread of its own (`_Database`)."""

    backend = "sqlite"
    shared = False  # one daemon per file (DatabaseLock)

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = _Database(path, lambda: self.lost)
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file at open
        self.lost: str | None = None  # why the file is no longer ours; writes are refused

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        path = str(path)
        if path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{path}: cannot create its folder: {exc.strerror}") from None
        store = cls(path)
        try:
            await store._db.start()  # a thread that cannot connect has ended by then
        except StoreError as exc:
            raise StoreError(f"{path}: cannot open: {exc}") from None
        try:
            await store._db.call(lambda db: store._prepare(db, time.time()))
        except StoreError:
            await store._db.close()
            raise
        if path != ":memory:":
            stat = os.stat(path)
            store._identity = (stat.st_dev, stat.st_ino)
        return store

    def _prepare(self, db: sqlite3.Connection, now: float) -> None:
        """In the database thread: the connection's settings, the schema, the id sequences."""
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA foreign_keys=ON")
            self._migrate(db)
            self._raise_sequences(db, now)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot prepare the database: {exc}") from None

    def _raise_sequences(self, db: sqlite3.Connection, now: float) -> None:
        """Start the hub-visible ids at or above the clock in microseconds (see the module)."""
        floor = id_floor(now, self.path)
        for table in HUB_ID_TABLES:
            db.execute(
                "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?", (floor, table)
            )
            db.execute(
                "INSERT INTO sqlite_sequence (name, seq) SELECT ?, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)",
                (table, floor, table),
            )

    def file_problem(self) -> str | None:
        """Why the database file is no longer the one opened (deleted, replaced), or None.

        One `stat` of the path: cheap enough to ask every second. Once a problem
        is found the store refuses every write: never keep writing to a file no
        one will open again.
        """
        if self.lost is None and self._identity is not None:
            try:
                stat = os.stat(self.path)
            except FileNotFoundError:
                self.lost = f"{self.path} was deleted"
            except OSError as exc:
                self.lost = f"{self.path} cannot be checked: {exc.strerror}"
            else:
                if (stat.st_dev, stat.st_ino) != self._identity:
                    self.lost = f"{self.path} was replaced by another file"
                elif stat.st_nlink == 0:
                    self.lost = f"{self.path} was deleted"
        return self.lost

    async def close(self) -> None:
        """Commit what is queued, close the connection and end its thread (twice is harmless)."""
        await self._db.close()

    def _migrate(self, db: sqlite3.Connection) -> None:
        row = db.execute("PRAGMA user_version").fetchone()
        current = int(row[0]) if row else 0
        known = migrations()
        newest = known[-1][0] if known else 0
        if current > newest:
            raise StoreError(
                f"{self.path}: schema version {current} is newer than this program knows "
                f"({newest}); refusing to touch it"
            )
        for version, sql in known:
            if version <= current:
                continue
            # executescript commits first; the user_version bump is part of the script.
            db.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")

    async def schema_version(self) -> int:
        rows = await self._fetchall("PRAGMA user_version")
        return int(rows[0][0]) if rows else 0

    async def _write(
        self, op: Callable[[sqlite3.Connection], T], what: str, *, one_statement: bool = False
    ) -> T:
        """Run `op` in a write transaction and return once it is committed.

        `op` runs in the database thread: it may use only `db` and what it was
        given, never the event loop's objects. Group commit: ops queued while a
        transaction is being written go into the next one together, so 50
        concurrent GET_NUMBERs cost a handful of commits, not 50, and one
        hand-off to the thread each. An op that raises leaves nothing written
        (a savepoint); a sqlite3 error reaches its caller as StoreError, any
        other error as it is, and the other ops of its transaction commit.

        `one_statement`: `op` changes rows with one statement at most and raises
        only before or by it, so it needs no savepoint (SQLite undoes a failed
        statement by itself). The sale and the FINISH are such ops: two
        statements fewer each on the hot path.
        """
        if self.lost is not None:
            raise StoreError(f"{what}: {self.lost}")
        return await self._db.write(op, what, savepoint=not one_statement)

    async def _fetchall(self, sql: str, params: Iterable[object] = ()) -> list[tuple[Any, ...]]:
        return await self._db.execute(sql, params)

    # -- whole rows of a module's own tables (supplier/bankstore.py) -------------------

    async def table_rows(self, table: str, columns: Sequence[str]) -> list[tuple[Any, ...]]:
        """Every row of `table`, those columns: for modules that own a table of their own."""
        sql = f"SELECT {identifiers(*columns)} FROM {identifiers(table)}"
        return await self._fetchall(sql)

    async def upsert_row(
        self, table: str, row: Mapping[str, object], key: Sequence[str], what: str
    ) -> None:
        """Insert `row`, or update the row with the same `key` columns, committed on return."""
        columns = list(row)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
        sql = (
            f"INSERT INTO {identifiers(table)} ({identifiers(*columns)}) "
            f"VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({identifiers(*key)}) DO UPDATE SET {updates}"
        )
        values = tuple(row.values())

        def op(db: sqlite3.Connection) -> None:
            db.execute(sql, values)

        await self._write(op, what)

    # -- loading (the inventory is rebuilt from these at start) -----------------------

    async def load_sims(self) -> list[SimRow]:
        return [_sim(row) for row in await self._fetchall(f"SELECT {_SIM_COLUMNS} FROM sims")]

    async def load_activations(self, since: float) -> list[Activation]:
        """Unfinished activations, and every one created after `since`."""
        rows = await self._fetchall(
            f"SELECT {ACTIVATION_COLUMNS} FROM activations "
            "WHERE finished IS NULL OR created >= ? ORDER BY id",
            (since,),
        )
        return [_activation(row) for row in rows]

    async def load_usage(self) -> dict[tuple[str, str], Usage]:
        rows = await self._fetchall(
            "SELECT number, service, offers, sold, cancelled, returned, blocked FROM usage"
        )
        return {
            (row[0], row[1]): Usage(row[2], row[3], row[4], row[5], bool(row[6])) for row in rows
        }

    async def get_activation(self, activation_id: int) -> Activation | None:
        rows = await self._fetchall(
            f"SELECT {ACTIVATION_COLUMNS} FROM activations WHERE id = ?", (activation_id,)
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
        def op(db: sqlite3.Connection) -> SimRow:
            db.execute(
                "INSERT INTO sims (iccid, imsi, number, country, operator, port, "
                "first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (iccid) DO UPDATE SET imsi = excluded.imsi, "
                "number = COALESCE(excluded.number, sims.number), "
                "country = excluded.country, operator = excluded.operator, "
                "port = excluded.port, last_seen = excluded.last_seen",
                (iccid, imsi, number, country, operator, port, now, now),
            )
            [row] = db.execute(
                f"SELECT {_SIM_COLUMNS} FROM sims WHERE iccid = ?", (iccid,)
            ).fetchall()
            return _sim(row)

        return await self._write(op, f"cannot record SIM {iccid}")

    async def set_sim_enabled(self, iccid: str, enabled: bool) -> bool:
        return await self._update_sim("enabled = ?", (int(enabled),), iccid)

    async def set_sim_number(self, iccid: str, number: str | None) -> bool:
        return await self._update_sim("number_manual = ?", (number,), iccid)

    async def touch_sims(self, iccids: list[str], now: float) -> None:
        """Mark SIMs seen now (they are live): `supplier sims` shows a truthful age."""

        def op(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE sims SET last_seen = ? WHERE iccid = ?", [(now, i) for i in iccids]
            )

        await self._write(op, "cannot record that SIMs were seen")

    async def _update_sim(self, assignment: str, params: tuple[object, ...], iccid: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            cursor = db.execute(f"UPDATE sims SET {assignment} WHERE iccid = ?", (*params, iccid))
            return cursor.rowcount > 0

        return await self._write(op, f"cannot update SIM {iccid}")

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

        def op(db: sqlite3.Connection) -> int:
            # The usage count and the SIM's last_used follow by trigger (migration 3).
            cursor = db.execute(
                "INSERT INTO activations (hub, iccid, number, service, country, operator, "
                "sum, currency, created, release_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.hub, iccid, number, request.service, country, operator, request.sum,
                    request.currency, now, release_at,
                ),
            )  # fmt: skip
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        activation_id = await self._write(op, "cannot open an activation", one_statement=True)
        return Activation(
            activation_id, request.hub, iccid, number, request.service, country, operator,
            request.sum, request.currency, now, release_at, None, None,
        )  # fmt: skip

    async def finish_activation(
        self, activation_id: int, status: int, now: float, *, hub: str | None = None
    ) -> tuple[Activation, bool]:
        """Record a FINISH; (activation, True) the first time, (activation, False) on a repeat.

        A repeat changes nothing, whatever status it carries: the hub repeats
        a FINISH when it missed our answer, and the first one stands.
        """
        if status not in FINISH_STATUSES:
            raise ValueError(f"status {status} is not one of {sorted(map(int, FINISH_STATUSES))}")

        def op(db: sqlite3.Connection) -> tuple[Activation, bool]:
            # The usage counters follow by trigger (migration 3); a repeat or a
            # stranger's id updates nothing and is told apart by a second look.
            # fetchall: a RETURNING statement is finished only once its rows are read.
            rows = db.execute(
                "UPDATE activations SET finished = ?, status = ? "
                "WHERE id = ? AND finished IS NULL AND (? IS NULL OR hub = ?) "
                f"RETURNING {ACTIVATION_COLUMNS}",
                (now, status, activation_id, hub, hub),
            ).fetchall()
            if rows:
                return _activation(rows[0]), True
            row = db.execute(
                f"SELECT {ACTIVATION_COLUMNS} FROM activations WHERE id = ?", (activation_id,)
            ).fetchone()
            if row is None or (hub is not None and row[1] != hub):
                raise UnknownActivation(f"unknown activationId {activation_id}")
            return _activation(row), False

        return await self._write(
            op, f"cannot finish activation {activation_id}", one_statement=True
        )

    async def receive(
        self, part: NewPart, sms: NewSms | None
    ) -> tuple[bool, Sms | None, list[Delivery]]:
        """Store a part and, when it completes a message, the message and its deliveries.

        One transaction. Returns (duplicate, sms, deliveries); a duplicate
        part (same SIM, same PDU) changes nothing.
        """

        def op(db: sqlite3.Connection) -> tuple[bool, Sms | None, list[Delivery]]:
            cursor = db.execute(
                "INSERT OR IGNORE INTO sms_parts (digest, iccid, port, storage, slot, pdu, "
                "received, sender, part_key, part_total, part_seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    part.digest, part.iccid, part.port, part.storage, part.slot, part.pdu,
                    part.received, part.sender, part.part_key, part.part_total, part.part_seq,
                ),
            )  # fmt: skip
            if cursor.rowcount == 0:
                return True, None, []
            if sms is None:
                return False, None, []
            stored, deliveries = self._create_sms(db, sms)
            return False, stored, deliveries

        return await self._write(op, "cannot store an SMS")

    async def complete(self, sms: NewSms) -> tuple[Sms, list[Delivery]]:
        """Turn stored pending parts into a message (the reassembly timeout passed)."""

        def op(db: sqlite3.Connection) -> tuple[Sms, list[Delivery]]:
            return self._create_sms(db, sms)

        return await self._write(op, "cannot store an SMS")

    def _create_sms(self, db: sqlite3.Connection, sms: NewSms) -> tuple[Sms, list[Delivery]]:
        cursor = db.execute(
            "INSERT INTO sms (iccid, number, sender, text, kind, sent, received, complete) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sms.iccid, sms.number, sms.sender, sms.text, sms.kind, sms.sent, sms.received,
                int(sms.complete),
            ),
        )  # fmt: skip
        sms_id = cursor.lastrowid
        assert sms_id is not None
        db.executemany(
            "UPDATE sms_parts SET sms_id = ? WHERE digest = ? AND sms_id IS NULL",
            [(sms_id, digest) for digest in sms.digests],
        )
        deliveries = []
        for hub, activation_id in sms.routes or ():  # never None here: one host routes itself
            cursor = db.execute(
                "INSERT OR IGNORE INTO deliveries (sms_id, hub, activation_id, created, "
                "next_attempt) VALUES (?, ?, ?, ?, ?)",
                (sms_id, hub, activation_id, sms.received, sms.received),
            )
            if cursor.lastrowid is not None and cursor.rowcount:
                deliveries.append(
                    Delivery(
                        cursor.lastrowid,
                        sms_id,
                        hub,
                        activation_id,
                        sms.received,
                        0,
                        sms.received,
                        None,
                        None,
                        None,
                        None,
                    )
                )
        return sms.stored(sms_id), deliveries

    async def pending_parts(self) -> list[StoredPart]:
        rows = await self._fetchall(
            "SELECT id, digest, iccid, pdu, received, part_key FROM sms_parts "
            "WHERE sms_id IS NULL AND part_key IS NOT NULL ORDER BY id"
        )
        return [StoredPart(*tuple(row)) for row in rows]

    async def due_deliveries(
        self,
        hub: str,
        now: float,
        limit: int,
        exclude: Iterable[int] = (),
        *,
        push_timeout: float = 10.0,  # PgStore leases for it; one host needs no lease
    ) -> list[tuple[Delivery, Sms]]:
        skip = tuple(exclude)
        not_in = _not_in("d.id", skip)
        columns = ", ".join(f"d.{c.strip()}" for c in _DELIVERY_COLUMNS.split(","))
        sms_columns = ", ".join(f"s.{c.strip()}" for c in _SMS_COLUMNS.split(","))
        rows = await self._fetchall(
            f"SELECT {columns}, {sms_columns} FROM deliveries d JOIN sms s ON s.id = d.sms_id "
            f"WHERE d.hub = ? AND d.done IS NULL AND d.next_attempt <= ? {not_in} "
            "ORDER BY d.next_attempt, d.id LIMIT ?",
            (hub, now, *skip, limit),
        )
        width = len(_DELIVERY_COLUMNS.split(","))
        return [(_delivery(row[:width]), _sms(row[width:])) for row in rows]

    async def next_due(self, hub: str, exclude: Iterable[int] = ()) -> float | None:
        skip = tuple(exclude)
        not_in = _not_in("id", skip)
        rows = await self._fetchall(
            f"SELECT MIN(next_attempt) FROM deliveries WHERE hub = ? AND done IS NULL {not_in}",
            (hub, *skip),
        )
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    async def settle_delivery(
        self, delivery_id: int, outcome: str, result: str, now: float
    ) -> bool:
        """Mark a delivery done (the hub's SUCCESS, or a final answer). False if it already was."""

        def op(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE deliveries SET done = ?, outcome = ?, attempts = attempts + 1, "
                "last_attempt = ?, last_result = ? WHERE id = ? AND done IS NULL",
                (now, outcome, now, result, delivery_id),
            )
            return cursor.rowcount > 0

        return await self._write(op, f"cannot settle delivery {delivery_id}")

    async def retry_delivery(
        self, delivery_id: int, result: str, now: float, next_attempt: float
    ) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt = ?, "
                "last_result = ?, next_attempt = ? WHERE id = ? AND done IS NULL",
                (now, result, next_attempt, delivery_id),
            )

        await self._write(op, f"cannot reschedule delivery {delivery_id}")

    async def release_leases(self, hubs: Iterable[str], keep: Iterable[int] = ()) -> int:
        """Nothing to give back at a stop: one host pushes from this file, without leases
        (PgStore's gives another host the pushes this host abandoned)."""
        return 0

    async def deliveries_for(self, sms_id: int) -> list[Delivery]:
        rows = await self._fetchall(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE sms_id = ? ORDER BY id", (sms_id,)
        )
        return [_delivery(row) for row in rows]

    # -- what the status page and `supplier sims` read ---------------------------------

    async def earnings(self, since: float) -> list[Earning]:
        """Activations finished with status 3 (sold) since `since`, with their `sum`."""
        rows = await self._fetchall(
            "SELECT hub, iccid, currency, sum, finished FROM activations "
            "WHERE status = ? AND finished >= ? ORDER BY finished",
            (int(FinishStatus.SOLD), since),
        )
        return [Earning(*tuple(row)) for row in rows]

    async def sms_count(self, since: float) -> int:
        rows = await self._fetchall("SELECT COUNT(*) FROM sms WHERE received >= ?", (since,))
        return int(rows[0][0])

    async def last_sms(self) -> dict[str, float]:
        """ICCID → when its last SMS arrived."""
        rows = await self._fetchall("SELECT iccid, MAX(received) FROM sms GROUP BY iccid")
        return {row[0]: float(row[1]) for row in rows}

    async def backlog(self, now: float) -> dict[str, tuple[int, float]]:
        """Hub → (undelivered pushes, age in seconds of the oldest)."""
        rows = await self._fetchall(
            "SELECT hub, COUNT(*), MIN(created) FROM deliveries WHERE done IS NULL GROUP BY hub"
        )
        return {row[0]: (int(row[1]), max(0.0, now - float(row[2]))) for row in rows}

    async def activations_of(self, iccid: str, limit: int = 200) -> list[Activation]:
        rows = await self._fetchall(
            f"SELECT {ACTIVATION_COLUMNS} FROM activations WHERE iccid = ? "
            "ORDER BY id DESC LIMIT ?",
            (iccid, limit),
        )
        return [_activation(row) for row in rows]

    async def sms_of(self, iccid: str, limit: int = 200) -> list[tuple[Sms, list[Delivery]]]:
        """A SIM's latest SMS, newest first, each with its deliveries."""
        rows = await self._fetchall(
            f"SELECT {_SMS_COLUMNS} FROM sms WHERE iccid = ? ORDER BY id DESC LIMIT ?",
            (iccid, limit),
        )
        messages = [_sms(row) for row in rows]
        if not messages:
            return []
        ids = tuple(m.id for m in messages)
        marks = ", ".join("?" * len(ids))
        drows = await self._fetchall(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE sms_id IN ({marks}) ORDER BY id",
            ids,
        )
        by_sms: dict[int, list[Delivery]] = {}
        for row in drows:
            delivery = _delivery(row)
            by_sms.setdefault(delivery.sms_id, []).append(delivery)
        return [(m, by_sms.get(m.id, [])) for m in messages]

    async def recent_sms(self, limit: int = 100) -> list[Sms]:
        rows = await self._fetchall(
            f"SELECT {_SMS_COLUMNS} FROM sms ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [_sms(row) for row in rows]

    # -- numbers learned by USSD (schema version 7) ------------------------------------

    async def learned_numbers(self) -> dict[str, str]:
        """ICCID → the number its operator told us (supplier/upkeep.py)."""
        rows = await self._fetchall("SELECT iccid, number FROM learned_numbers")
        return {str(row[0]): str(row[1]) for row in rows}

    async def learn_number(self, iccid: str, number: str, source: str, now: float) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO learned_numbers (iccid, number, source, learned) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (iccid) DO UPDATE SET "
                "number = excluded.number, source = excluded.source, learned = excluded.learned",
                (iccid, number, source, now),
            )

        await self._write(op, f"cannot record the number of SIM {iccid}")

    async def balances(self) -> dict[str, BalanceRow]:
        rows = await self._fetchall("SELECT iccid, amount, currency, text, read FROM sim_balances")
        return {str(row[0]): BalanceRow(row[1], row[2], row[3], float(row[4])) for row in rows}

    async def save_balance(self, iccid: str, balance: BalanceRow) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO sim_balances (iccid, amount, currency, text, read) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (iccid) DO UPDATE SET "
                "amount = excluded.amount, currency = excluded.currency, "
                "text = excluded.text, read = excluded.read",
                (iccid, balance.amount, balance.currency, balance.text, balance.read),
            )

        await self._write(op, f"cannot record the balance of SIM {iccid}")


@dataclass(frozen=True, slots=True)
class BalanceRow:
    """A SIM's last balance answer (supplier/upkeep.py)."""

    amount: str | None  # a decimal string, None when the text gave none
    currency: str | None  # ISO 4217
    text: str
    read: float
