"""`supplier migrate-store`: move one host's SQLite store into a PostgreSQL database.

The copy is what a supplier moving to several hosts needs to carry over so
the protocol's promises survive the move: activations (open ones keep their
SIMs held, finished ones their history), the per-number usage that decides
what may be sold again, every SMS with its parts and its pushes (undelivered
ones are pushed from the new database), learned numbers, balances, and the
SIM banks' slots.

How it keeps those promises:
- The source is read, never written: opened read-only, in one read
  transaction (a consistent snapshot), under the daemon's own lock
  (`DatabaseLock`), so a daemon still using it is refused rather than copied
  mid-write. Its schema must be exactly the version this program knows.
- The target must be empty (no row in any table): ids are kept, so copying
  into a database that already issued ids could collide or, worse, merge
  two suppliers' histories. The check is repeated inside the copy's own
  transaction, with the tables locked, so a daemon started meanwhile cannot
  slip rows in between.
- All or nothing: one transaction; `COPY` (asyncpg's `copy_records_to_table`)
  in batches, each checked against the count read.
- Ids are never issued twice: every identity sequence continues above the
  highest copied id and above SQLite's own sequence; the hub-visible ones
  (`activationId`, `smsId`) also above the clock in microseconds, as
  `PgStore.open` does.

The columns copied are those the two sides have in common, read from each
database's catalogue rather than listed here, so later migrations (the same
version numbers in both dialects) need no change in this module. A column
the target lacks would be lost, so it is refused; a column only the target
has takes its default.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from .errors import SupplierError
from .pgstore import DATABASE_ERRORS, PgStore, describe, redact
from .pgstore import text as pgstore_text
from .store import HUB_ID_TABLES, MAX_JSON_ID, DatabaseLock, migrations

__all__ = ["Copied", "MigrateError", "migrate_store"]

BATCH = 5000  # rows per COPY: bounded memory for stores of millions of SMS
STATEMENT_TIMEOUT = 120.0  # seconds for one statement (a batch's COPY, a lock, a check)
CONNECT_TIMEOUT = 15.0
_LOCK_TIMEOUT = "10s"  # how long to wait for a daemon's transaction on the target
_BOOKKEEPING = frozenset({"schema_migrations"})  # the target's own, written by PgStore.open


class MigrateError(SupplierError):
    """Why the copy was refused or failed; nothing was written to the target."""


@dataclass(frozen=True, slots=True)
class Copied:
    """One table's copy: how many rows, which columns, where its ids continue."""

    table: str
    rows: int
    columns: tuple[str, ...]
    next_id: int | None  # the id the target's sequence gives next, if the table has one


Converter = Callable[[object], object]


def _boolean(value: object) -> object:
    # SQLite keeps booleans as 0/1 (e.g. sims.enabled, usage.blocked).
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"expected 0 or 1, found {value!r}")


def _integer(value: object) -> object:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"expected a whole number, found {value!r}")


def _real(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"expected a number, found {value!r}")


def _text(value: object) -> object:
    if value is None:
        return value
    if isinstance(value, str):
        return pgstore_text(value)  # U+0000 (an SMS may hold it): PostgreSQL's text refuses it
    raise ValueError(f"expected text, found {value!r}")


def _as_is(value: object) -> object:
    return value


_CONVERTERS: dict[str, Converter] = {
    "boolean": _boolean,
    "smallint": _integer,
    "integer": _integer,
    "bigint": _integer,
    "double precision": _real,
    "real": _real,
    "text": _text,
    "character varying": _text,
}


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    columns: tuple[str, ...]  # in the source's order
    converters: tuple[Converter, ...]
    rows: int


async def migrate_store(
    source: str | Path,
    url: str,
    *,
    batch: int = BATCH,
    now: Callable[[], float] = time.time,
) -> list[Copied]:
    """Copy the SQLite store at `source` into the empty PostgreSQL database at `url`."""
    path = Path(source)
    where = redact(url)
    if not url.startswith(("postgresql://", "postgres://")):
        raise MigrateError(
            f"--to {where!r}: expected a PostgreSQL URL, e.g. postgresql://user@host/db"
        )
    lock = DatabaseLock(path)
    try:
        with closing(_open_source(path, lock)) as sqlite:
            sqlite.execute("BEGIN")  # one snapshot for every table read
            _check_version(sqlite, path)
            store = _Source(sqlite, _source_tables(sqlite), _sqlite_sequences(sqlite))
            return await _copy(store, url, where, batch=batch, now=now)
    except sqlite3.Error as exc:
        raise MigrateError(f"{path}: cannot read: {exc}") from None
    finally:
        lock.release()


@dataclass(frozen=True, slots=True)
class _Source:
    sqlite: sqlite3.Connection
    tables: dict[str, tuple[list[str], int]]  # table → (its columns, its row count)
    issued: dict[str, int]  # table → the last id SQLite's sequence gave


def _open_source(path: Path, lock: DatabaseLock) -> sqlite3.Connection:
    """The store, read-only, once no daemon uses it (its lock held until the copy ends)."""
    if not path.is_file():
        raise MigrateError(f"{path}: no such file (the SQLite store to copy)")
    lock.acquire()  # StoreError naming the daemon that uses it
    try:
        # mode=ro: this command never writes the store it copies.
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise MigrateError(f"{path}: cannot open: {exc}") from None


def _check_version(sqlite: sqlite3.Connection, path: Path) -> None:
    [(version,)] = sqlite.execute("PRAGMA user_version").fetchall()
    known = migrations()[-1][0]
    if version == 0:
        raise MigrateError(f"{path}: not a supplier store (schema version 0)")
    if version > known:
        raise MigrateError(
            f"{path}: schema version {version} is newer than this program knows ({known}); "
            "use the supplier version that wrote it"
        )
    if version < known:
        raise MigrateError(
            f"{path}: schema version {version} is older than this program's ({known}); "
            "run this version's daemon on it once (it migrates at start), stop it, and retry"
        )


def _source_tables(sqlite: sqlite3.Connection) -> dict[str, tuple[list[str], int]]:
    """Table → (its columns, its row count), every table but SQLite's own."""
    names = [
        row[0]
        for row in sqlite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    found = {}
    for name in names:
        quoted = _quote(name)
        columns = [row[1] for row in sqlite.execute(f"PRAGMA table_info({quoted})")]
        [(count,)] = sqlite.execute(f"SELECT COUNT(*) FROM {quoted}").fetchall()  # noqa: S608
        found[name] = (columns, int(count))
    return found


def _sqlite_sequences(sqlite: sqlite3.Connection) -> dict[str, int]:
    """Table → the last id SQLite issued (raised to the clock at every open)."""
    exists = sqlite.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchall()
    if not exists:
        return {}
    return {
        str(name): int(seq) for name, seq in sqlite.execute("SELECT name, seq FROM sqlite_sequence")
    }


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _copy(
    source: _Source, url: str, where: str, *, batch: int, now: Callable[[], float]
) -> list[Copied]:
    try:
        connection = await asyncpg.connect(
            url, timeout=CONNECT_TIMEOUT, command_timeout=STATEMENT_TIMEOUT
        )
    except DATABASE_ERRORS as exc:
        raise MigrateError(f"{where}: cannot connect: {describe(exc)}") from None
    except ValueError as exc:  # a malformed URL
        raise MigrateError(f"{where}: {exc}") from None
    try:
        # Refused before the schema is created or brought up to date: a
        # non-empty target is left exactly as it was.
        await _refuse_rows(connection, where, await _target_columns(connection))
        store = await PgStore.open(url)  # the schema, as every host will find it
        await store.close()
        async with connection.transaction():
            await connection.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
            target = await _target_columns(connection)
            names = ", ".join(_quote(name) for name in sorted(target))
            await connection.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
            await _refuse_rows(connection, where, target)
            plan = _plan(source.tables, target, where)
            order = await _parents_first(connection, [table.name for table in plan])
            by_name = {table.name: table for table in plan}
            triggered = await _with_triggers(connection, order)
            for name in triggered:
                # The copy carries the usage counts and last uses the triggers wrote at
                # the source: they must not count the copied activations again.
                await connection.execute(f"ALTER TABLE {_quote(name)} DISABLE TRIGGER USER")
            copied = []
            for name in order:
                table = by_name[name]
                await _copy_table(connection, source.sqlite, table, batch)
                issued = source.issued.get(name, 0)
                next_id = await _continue_ids(connection, table, issued, now())
                copied.append(Copied(name, table.rows, table.columns, next_id))
            for name in triggered:
                await connection.execute(f"ALTER TABLE {_quote(name)} ENABLE TRIGGER USER")
            return copied
    except MigrateError:
        raise
    except DATABASE_ERRORS as exc:
        raise MigrateError(f"{where}: {describe(exc)} (nothing was copied)") from None
    finally:
        await connection.close(timeout=CONNECT_TIMEOUT)


async def _target_columns(connection: asyncpg.Connection) -> dict[str, dict[str, str]]:
    """Table → column → its type, for the tables of the target's schema (ours excluded)."""
    rows = await connection.fetch(
        "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_schema, table_name) "
        "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' "
        "ORDER BY c.table_name, c.ordinal_position"
    )
    found: dict[str, dict[str, str]] = {}
    for table, column, kind in rows:
        if table not in _BOOKKEEPING:
            found.setdefault(table, {})[column] = kind
    return found


async def _refuse_rows(
    connection: asyncpg.Connection, where: str, target: dict[str, dict[str, str]]
) -> None:
    for table in sorted(target):
        if await connection.fetchval(f"SELECT EXISTS (SELECT 1 FROM {_quote(table)})"):  # noqa: S608
            raise MigrateError(
                f"{where}: the database is not empty (table {table} has rows); "
                "migrate-store copies only into an empty database"
            )


def _plan(
    source: dict[str, tuple[list[str], int]], target: dict[str, dict[str, str]], where: str
) -> list[_Table]:
    """What to copy: every source table, with the columns both sides have."""
    plan = []
    for name, (columns, rows) in sorted(source.items()):
        if name not in target:
            if rows:
                raise MigrateError(f"{where}: has no table {name} for the store's {rows} rows")
            continue
        kinds = target[name]
        missing = [column for column in columns if column not in kinds]
        if missing:
            raise MigrateError(
                f"{where}: table {name} has no column {', '.join(missing)}; "
                "copying would lose it (is the target's schema older than the store's?)"
            )
        plan.append(
            _Table(
                name,
                tuple(columns),
                tuple(_CONVERTERS.get(kinds[column], _as_is) for column in columns),
                rows,
            )
        )
    return plan


async def _parents_first(connection: asyncpg.Connection, names: list[str]) -> list[str]:
    """The tables in an order where each comes after those its foreign keys point to."""
    edges = await connection.fetch(
        "SELECT child.relname, parent.relname FROM pg_constraint c "
        "JOIN pg_class child ON child.oid = c.conrelid "
        "JOIN pg_class parent ON parent.oid = c.confrelid "
        "WHERE c.contype = 'f' AND c.connamespace = current_schema()::regnamespace"
    )
    parents: dict[str, set[str]] = {name: set() for name in names}
    for child, parent in edges:
        if child in parents and parent in parents and child != parent:
            parents[child].add(parent)
    order: list[str] = []
    while parents:
        ready = sorted(name for name, needs in parents.items() if not needs - set(order))
        if not ready:  # a cycle: cannot happen in this schema; copy in name order
            ready = sorted(parents)
        order.extend(ready)
        for name in ready:
            del parents[name]
    return order


async def _with_triggers(connection: asyncpg.Connection, names: list[str]) -> list[str]:
    """The tables among `names` that have triggers of their own (not constraints')."""
    rows = await connection.fetch(
        "SELECT DISTINCT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace "
        "AND c.relname = ANY($1::text[]) ORDER BY c.relname",
        names,
    )
    return [str(row[0]) for row in rows]


def _records(
    sqlite: sqlite3.Connection, table: _Table, batch: int
) -> Iterator[list[tuple[object, ...]]]:
    columns = ", ".join(_quote(column) for column in table.columns)
    cursor = sqlite.execute(f"SELECT {columns} FROM {_quote(table.name)} ORDER BY rowid")  # noqa: S608
    while rows := cursor.fetchmany(batch):
        converted = []
        for row in rows:
            try:
                converted.append(
                    tuple(
                        convert(value) for convert, value in zip(table.converters, row, strict=True)
                    )
                )
            except ValueError as exc:
                raise MigrateError(f"{table.name}: a row cannot be copied: {exc}") from None
        yield converted


async def _copy_table(
    connection: asyncpg.Connection, sqlite: sqlite3.Connection, table: _Table, batch: int
) -> None:
    written = 0
    for records in _records(sqlite, table, batch):
        status = await connection.copy_records_to_table(
            table.name, records=records, columns=list(table.columns)
        )
        written += int(status.split()[-1])
    if written != table.rows:
        raise MigrateError(f"{table.name}: read {table.rows} rows but wrote {written}")


async def _continue_ids(
    connection: asyncpg.Connection, table: _Table, issued: int, clock: float
) -> int | None:
    """Set the table's id sequence above every id copied or issued; the next id, or None."""
    if "id" not in table.columns:
        return None
    sequence = await connection.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table.name)
    if sequence is None:
        return None
    floor = issued + 1
    if table.name in HUB_ID_TABLES:  # hub-visible ids: above the clock too (see PgStore.open)
        floor = max(floor, int(clock * 1_000_000))
    highest = await connection.fetchval(f"SELECT COALESCE(MAX(id), 0) FROM {_quote(table.name)}")  # noqa: S608
    row = await connection.fetchrow(
        f"SELECT last_value, is_called FROM {sequence}"  # noqa: S608 - PostgreSQL's own name
    )
    assert row is not None  # a sequence always has its one row
    next_id = max(floor, int(highest) + 1, int(row[0]) + int(row[1]))  # never lowered
    if table.name in HUB_ID_TABLES and next_id >= MAX_JSON_ID:
        raise MigrateError(f"{table.name}: ids are past what a hub reads exactly ({MAX_JSON_ID})")
    await connection.execute("SELECT setval($1, $2, false)", sequence, next_id)
    return next_id
