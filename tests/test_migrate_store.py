"""`supplier migrate-store`: a real SQLite store (made by the real Store) into a real PostgreSQL."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from supplier.bankstore import BankStore, ModuleRow, SlotRow
from supplier.errors import StoreError
from supplier.migrate import MigrateError, migrate_store
from supplier.pgstore import PgStore
from supplier.sale import SaleRequest
from supplier.store import BalanceRow, DatabaseLock, NewPart, NewSms, Store, migrations

from .pg import Cluster
from .test_cli import supplier

TABLES = (
    "sims", "activations", "usage", "sms_parts", "sms", "deliveries",
    "learned_numbers", "sim_balances", "bank_slots", "bank_modules",
)  # fmt: skip
KEYS = {  # how rows are told apart, to compare them one by one
    "sims": "iccid",
    "usage": "number, service",
    "learned_numbers": "iccid",
    "sim_balances": "iccid",
    "bank_slots": "bank, module, slot",
    "bank_modules": "bank, module",
}
BOOLEAN = {("sims", "enabled"), ("usage", "blocked"), ("sms", "complete")}
BOOLEAN |= {("bank_slots", "in_rotation"), ("bank_modules", "switching"), ("bank_modules", "held")}


async def make_store(path: Path, now: float) -> None:
    """A store as a daemon leaves it: open and finished activations, SMS, pushes, banks."""
    store = await Store.open(path)
    try:
        for i, number in enumerate(("79001110001", "79001110002", "79001110003")):
            await store.upsert_sim(
                iccid=f"8970100000000000{i:03}", imsi=f"25001000000{i:04}", number=number,
                country="russia", operator="mts", port=f"/dev/ttyUSB{i}", now=now - 3600,
            )  # fmt: skip
        await store.set_sim_enabled("8970100000000000002", False)
        await store.set_sim_number("8970100000000000001", "79009990001")
        opened = []
        for i, service in enumerate(("vk", "tg", "wa", "vk")):
            request = SaleRequest(
                "hub-a" if i % 2 == 0 else "hub-b", "russia", "mts", service,
                sum="12.50" if i else None, currency=643 if i else None,
            )  # fmt: skip
            activation = await store.open_activation(
                request, iccid=f"8970100000000000{i % 2:03}", number=f"7900111000{i % 2 + 1}",
                country="russia", operator="mts", now=now - 600 + i, release_at=now + 600,
            )  # fmt: skip
            opened.append(activation)
        await store.finish_activation(opened[0].id, 3, now - 100)  # sold: blocked for vk
        await store.finish_activation(opened[1].id, 4, now - 90)  # cancelled
        # Two SMS: one pushed to its hub (settled), one still waiting for its push.
        for i, activation in enumerate(opened[2:]):
            digest = hashlib.sha256(f"part-{i}".encode()).hexdigest()
            part = NewPart(
                digest, activation.iccid, f"/dev/ttyUSB{i}", "SM", i, f"0791{i:04}", now - 50 + i,
                "VK",
            )  # fmt: skip
            sms = NewSms(
                iccid=activation.iccid, number=activation.number, sender="VK",
                text=f"Your code: 12{i}4 «ключ»", kind="text", sent=now - 55 + i,
                received=now - 50 + i, complete=i == 0, digests=(digest,),
                routes=((activation.hub, activation.id),),
            )  # fmt: skip
            duplicate, stored, [delivery] = await store.receive(part, sms)
            assert not duplicate and stored is not None
            if i == 0:
                assert await store.settle_delivery(delivery.id, "SUCCESS", "SUCCESS", now - 40)
            else:
                await store.retry_delivery(delivery.id, "HTTP 502", now - 40, now + 30)
        # A part of a multipart SMS still waiting for its other half.
        await store.receive(
            NewPart("d" * 64, "8970100000000000000", None, "ME", 7, "0041", now - 5, "VK",
                    "VK/8/33/2", 2, 1),
            None,
        )  # fmt: skip
        await store.learn_number("8970100000000000002", "79001110003", "USSD *111*0887#", now)
        await store.save_balance("8970100000000000000", BalanceRow("104.20", "RUB", "Balans", now))
        banks = BankStore(store)
        await banks.save_slot(SlotRow("pool1", 1, 1, "8970100000000000000", None, None, "known"))
        await banks.save_slot(SlotRow("pool1", 1, 2, state="empty", failures=3, retry_at=now + 60))
        await banks.save_slot(SlotRow("pool1", 2, 1, in_rotation=False))
        await banks.save_module(ModuleRow("pool1", 1, 1, switching=False, held=True))
        await banks.save_module(ModuleRow("pool1", 2, None, switching=True))
    finally:
        await store.close()


def sqlite_rows(path: Path, table: str) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        order = KEYS.get(table, "id")
        return [dict(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY {order}")]


async def pg_rows(url: str, table: str) -> list[dict[str, Any]]:
    db = await asyncpg.connect(url)
    try:
        order = KEYS.get(table, "id")
        return [dict(row) for row in await db.fetch(f"SELECT * FROM {table} ORDER BY {order}")]
    finally:
        await db.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_the_copy_equals_the_source_row_for_row(tmp_path: Path, pg_url: str) -> None:
    now = time.time()
    source = tmp_path / "supplier.db"
    await make_store(source, now)
    before = digest(source)
    copied = await migrate_store(source, pg_url)
    assert digest(source) == before  # the store was only read
    counts = {table.table: table.rows for table in copied}
    assert set(counts) == set(TABLES)
    for table in TABLES:
        old, new = sqlite_rows(source, table), await pg_rows(pg_url, table)
        assert counts[table] == len(old) > 0, table
        assert len(new) == len(old), table
        for was, now_row in zip(old, new, strict=True):
            assert set(now_row) == set(was), table  # the same columns on both sides
            for column, value in was.items():
                if (table, column) in BOOLEAN:
                    assert now_row[column] is bool(value), (table, column)
                else:
                    assert now_row[column] == value and type(now_row[column]) is type(value), (
                        table,
                        column,
                    )
    sims = {row["iccid"]: row for row in await pg_rows(pg_url, "sims")}
    assert sims["8970100000000000002"]["enabled"] is False
    assert sims["8970100000000000001"]["number_manual"] == "79009990001"
    usage = {(row["number"], row["service"]): row for row in await pg_rows(pg_url, "usage")}
    vk = usage["79001110001", "vk"]
    assert vk["blocked"] is True and vk["sold"] == 1 and vk["offers"] == 1
    # The copy was not counted twice by the activation triggers.
    assert sum(row["offers"] for row in await pg_rows(pg_url, "usage")) == 4


async def test_ids_continue_above_everything_copied_and_the_clock(
    tmp_path: Path, pg_url: str
) -> None:
    now = time.time()
    source = tmp_path / "supplier.db"
    await make_store(source, now)
    with sqlite3.connect(source) as db:
        issued = dict(db.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        highest = {
            table: db.execute(f"SELECT MAX(id) FROM {table}").fetchone()[0]
            for table in ("activations", "sms", "sms_parts", "deliveries")
        }
    copied = {table.table: table for table in await migrate_store(source, pg_url)}
    db = await asyncpg.connect(pg_url)
    try:
        for table, top in highest.items():
            next_id = await db.fetchval(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))")
            assert next_id == copied[table].next_id, table
            assert next_id > top and next_id > issued.get(table, 0), table
        for table in ("activations", "sms"):  # what the hubs see: above the clock, as at open
            next_id = await db.fetchval(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))")
            assert next_id >= int(now * 1_000_000), table
        # A new delivery and a new activation insert without colliding with copied ids.
        await db.execute(
            "INSERT INTO deliveries (sms_id, hub, created, next_attempt) "
            "SELECT MIN(id), 'hub-c', 0, 0 FROM sms"
        )
        # The activation triggers were off only for the copy: a new one is counted.
        await db.execute(
            "INSERT INTO activations (hub, iccid, number, service, country, operator, created, "
            "release_at) VALUES ('hub-a', '8970100000000000000', '79001110001', 'tg', 'russia', "
            "'mts', 1, 2)"
        )
        offers = "SELECT offers FROM usage WHERE number = '79001110001' AND service = 'tg'"
        assert await db.fetchval(offers) == 1
    finally:
        await db.close()
    assert "id" not in copied["usage"].columns and copied["usage"].next_id is None


async def test_the_opened_database_serves_what_was_copied(tmp_path: Path, pg_url: str) -> None:
    """PgStore opens the copy as it is (schema current, nothing to migrate)."""
    source = tmp_path / "supplier.db"
    await make_store(source, time.time())
    await migrate_store(source, pg_url)
    store = await PgStore.open(pg_url)
    try:
        assert await store.schema_version() == migrations()[-1][0]
        rows = await store._fetch(
            "SELECT d.outcome, d.attempts, s.text FROM deliveries d JOIN sms s ON s.id = d.sms_id "
            "ORDER BY d.id"
        )
        assert [tuple(row) for row in rows] == [
            ("SUCCESS", 1, "Your code: 1204 «ключ»"),
            (None, 1, "Your code: 1214 «ключ»"),
        ]
    finally:
        await store.close()


async def test_a_non_empty_target_is_refused_and_left_untouched(
    tmp_path: Path, pg_url: str
) -> None:
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    await make_store(first, time.time())
    await make_store(second, time.time() + 5)
    await migrate_store(first, pg_url)
    before = {table: await pg_rows(pg_url, table) for table in TABLES}
    with pytest.raises(MigrateError, match=r"not empty \(table \w+ has rows\)"):
        await migrate_store(second, pg_url)
    assert {table: await pg_rows(pg_url, table) for table in TABLES} == before


async def test_one_row_anywhere_makes_the_target_non_empty(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "supplier.db"
    await make_store(source, time.time())
    store = await PgStore.open(pg_url)
    await store.close()
    db = await asyncpg.connect(pg_url)
    try:
        await db.execute("INSERT INTO bank_modules (bank, module) VALUES ('pool9', 1)")
        with pytest.raises(MigrateError, match="table bank_modules has rows"):
            await migrate_store(source, pg_url)
        assert await db.fetchval("SELECT COUNT(*) FROM activations") == 0
        assert await db.fetchval("SELECT COUNT(*) FROM bank_modules") == 1
    finally:
        await db.close()


async def test_a_store_in_use_by_a_daemon_is_refused(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "supplier.db"
    await make_store(source, time.time())
    lock = DatabaseLock(source)  # as the daemon holds it while it runs
    lock.acquire()
    try:
        with pytest.raises(StoreError, match="in use by another supplier daemon"):
            await migrate_store(source, pg_url)
    finally:
        lock.release()
    db = await asyncpg.connect(pg_url)
    try:  # refused before anything was created in the target
        assert await db.fetchval("SELECT to_regclass('activations')") is None
    finally:
        await db.close()


@pytest.mark.parametrize(("version", "says"), [(5, "older"), (99, "newer"), (0, "not a supplier")])
async def test_a_store_of_another_schema_version_is_refused(
    tmp_path: Path, pg_url: str, version: int, says: str
) -> None:
    source = tmp_path / "supplier.db"
    await make_store(source, time.time())
    with sqlite3.connect(source) as db:
        db.execute(f"PRAGMA user_version = {version}")
    with pytest.raises(MigrateError, match=f"schema version {version}.*{says}|{says}"):
        await migrate_store(source, pg_url)


async def test_a_value_the_target_cannot_hold_rolls_everything_back(
    tmp_path: Path, pg_url: str
) -> None:
    """SQLite keeps whatever it is given: a bad value found late leaves nothing copied."""
    source = tmp_path / "supplier.db"
    await make_store(source, time.time())
    with sqlite3.connect(source) as db:
        db.execute("UPDATE bank_modules SET held = 7 WHERE module = 2")
    with pytest.raises(MigrateError, match=r"bank_modules: .*expected 0 or 1, found 7"):
        await migrate_store(source, pg_url)
    db2 = await asyncpg.connect(pg_url)
    try:
        for table in TABLES:
            assert await db2.fetchval(f"SELECT COUNT(*) FROM {table}") == 0, table
    finally:
        await db2.close()


async def test_the_copy_follows_the_columns_both_sides_have(
    tmp_path: Path, pg_url: str, pg_cluster: Cluster
) -> None:
    """A column only the target has (a later migration's) takes its default; one only the
    store has would be lost, so it is refused."""
    source = tmp_path / "supplier.db"
    await make_store(source, time.time())
    store = await PgStore.open(pg_url)
    await store.close()
    db = await asyncpg.connect(pg_url)
    try:
        await db.execute("ALTER TABLE deliveries ADD COLUMN later_column text")
        copied = {table.table: table for table in await migrate_store(source, pg_url)}
        assert "later_column" not in copied["deliveries"].columns
        assert await db.fetchval("SELECT COUNT(*) FROM deliveries WHERE later_column IS NULL") == 2
    finally:
        await db.close()
    with sqlite3.connect(source) as lite:
        lite.execute("ALTER TABLE sims ADD COLUMN colour TEXT")
    target = await pg_cluster.new_database()
    with pytest.raises(MigrateError, match="table sims has no column colour"):
        await migrate_store(source, target)


async def test_cli_copies_and_prints_rows_per_table(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "supplier.db"
    await make_store(source, time.time())
    code, out, err = await supplier("migrate-store", "--from", str(source), "--to", pg_url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"copied {source} into postgresql://supplier@/")
    assert any(line.split()[:3] == ["activations", "4", "rows"] for line in lines)
    assert any(line.split()[:3] == ["deliveries", "2", "rows"] for line in lines)
    assert lines[-1].split()[0] == "total"
    # Again: the target is no longer empty; one line, exit 1, nothing changed.
    code, out, err = await supplier("migrate-store", "--from", str(source), "--to", pg_url)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "not empty" in err


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://supplier@127.0.0.1:1/nowhere", "cannot connect"),
        ("mysql://supplier@127.0.0.1/db", "expected a PostgreSQL URL"),
        ("postgresql://supplier:secret@[::1/db", "postgresql://supplier@[::1/db"),
    ],
)
async def test_cli_bad_or_unreachable_url_is_one_line(tmp_path: Path, url: str, says: str) -> None:
    source = tmp_path / "supplier.db"
    await make_store(source, time.time())
    code, out, err = await supplier("migrate-store", "--from", str(source), "--to", url)
    assert code == 1 and out == "", err
    assert err.count("\n") == 1 and err.startswith("supplier: ") and says in err, err
    assert "secret" not in err


async def test_cli_missing_store_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    code, _, err = await supplier(
        "migrate-store", "--from", str(missing), "--to", "postgresql://supplier@127.0.0.1:1/x"
    )
    assert code == 1 and err.count("\n") == 1 and "no such file" in err
    assert not missing.exists()


async def test_a_store_left_by_a_killed_daemon_is_copied_with_its_wal(
    tmp_path: Path, pg_url: str
) -> None:
    """kill -9 leaves committed transactions in the -wal file, not yet in the database
    file: the copy reads them too (the read-only connection reads the WAL)."""
    live = tmp_path / "live" / "supplier.db"
    await make_store(live, time.time())
    store = await Store.open(live)  # a running daemon: its last writes are in the WAL
    try:
        await store.learn_number("8970100000000000001", "79001110002", "SMS from MTS", 5.0)
        killed = tmp_path / "killed"
        killed.mkdir()
        for suffix in ("", "-wal", "-shm"):  # the files as a kill -9 leaves them
            shutil.copyfile(f"{live}{suffix}", killed / f"supplier.db{suffix}")
    finally:
        await store.close()
    source = killed / "supplier.db"
    assert (killed / "supplier.db-wal").stat().st_size > 0
    await migrate_store(source, pg_url)
    learned = {row["iccid"]: row["source"] for row in await pg_rows(pg_url, "learned_numbers")}
    assert learned["8970100000000000001"] == "SMS from MTS"
    assert len(await pg_rows(pg_url, "activations")) == 4
