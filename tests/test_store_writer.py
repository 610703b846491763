"""The store's own database thread: one hand-off per write, and how its writes fail.

Real SQLite files throughout. To line writes up in one transaction the
thread is held on a real job (a read waiting for a `threading.Event`), so
the writes queued behind it are taken together when it lets go.

SQLite only: these are the writer thread's own rules (group commit, its
queue, the file). PostgreSQL has no such thread (a pool, one transaction per
write); its counterparts (a failing write, a database refusing writes, close
with writes under way, an unreachable server, a newer schema) are in
test_store_backends.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from supplier.errors import StoreError, UnknownActivation
from supplier.sale import SaleRequest
from supplier.store import FinishStatus, Store

ICCID = "8970010000000000004"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "s.db")
    yield opened
    await opened.close()


class Held:
    """Keeps the database thread busy until `release()`: what is queued meanwhile waits."""

    def __init__(self, store: Store) -> None:
        self.gate = threading.Event()
        self.job = asyncio.ensure_future(store._db.call(lambda db: self.gate.wait(10)))

    async def release(self) -> None:
        self.gate.set()
        assert await asyncio.wait_for(self.job, 10) is True


async def queued(*writes: Awaitable[Any]) -> list[asyncio.Future[Any]]:
    """Start each write and let it reach the thread's queue."""
    futures = [asyncio.ensure_future(w) for w in writes]
    await asyncio.sleep(0)  # one loop turn: each coroutine runs up to its hand-off
    return futures


async def learned(store: Store) -> dict[str, str]:
    return await store.learned_numbers()


def remove_database(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink()


def exists(path: str) -> bool:
    return Path(path).exists()


def learn(store: Store, iccid: str, number: str) -> Awaitable[None]:
    return store.learn_number(iccid, number, "ussd", 1.0)


async def test_a_failing_write_leaves_nothing_and_the_others_in_its_transaction_commit(
    store: Store,
) -> None:
    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO learned_numbers (iccid, number, source, learned) VALUES (?, ?, ?, ?)",
            ("half", "79000000000", "ussd", 1.0),
        )
        db.execute(  # the same key again: UNIQUE constraint failed
            "INSERT INTO learned_numbers (iccid, number, source, learned) VALUES (?, ?, ?, ?)",
            ("half", "79000000001", "ussd", 1.0),
        )

    held = Held(store)
    first, failing, last = await queued(
        learn(store, "a", "79000000002"),
        store._write(half_then_fail, "cannot learn half"),
        learn(store, "b", "79000000003"),
    )
    await held.release()
    with pytest.raises(StoreError, match="cannot learn half: UNIQUE constraint failed"):
        await asyncio.wait_for(failing, 10)
    await asyncio.wait_for(asyncio.gather(first, last), 10)
    assert await learned(store) == {"a": "79000000002", "b": "79000000003"}  # no "half"


def sale(store: Store, service: str) -> Awaitable[Any]:
    return store.open_activation(
        SaleRequest("h", "russia", "mts", service), iccid=ICCID, number="79000000009",
        country="russia", operator="mts", now=5.0, release_at=1205.0,
    )  # fmt: skip


async def test_a_sale_the_database_refuses_leaves_nothing_and_its_transaction_commits(
    store: Store,
) -> None:
    # A sale is one INSERT whose triggers count the offer: it runs without a
    # savepoint, so what undoes a refused one (the count included) is SQLite's
    # own statement rollback, while the transaction goes on for the others.
    await store._db.execute(
        "CREATE TRIGGER refuse_boom AFTER INSERT ON activations WHEN NEW.service = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    held = Held(store)
    sold, refused, other = await queued(
        sale(store, "vk"), sale(store, "boom"), learn(store, "a", "79000000002")
    )
    await held.release()
    with pytest.raises(StoreError, match="cannot open an activation: refused"):
        await asyncio.wait_for(refused, 10)
    activation = await asyncio.wait_for(sold, 10)
    await asyncio.wait_for(other, 10)
    usage = await store.load_usage()
    assert ("79000000009", "boom") not in usage
    assert usage[("79000000009", "vk")].offers == 1
    assert [a.id for a in await store.load_activations(0.0)] == [activation.id]
    assert await learned(store) == {"a": "79000000002"}


async def test_an_error_of_the_protocol_reaches_its_caller_as_it_is(store: Store) -> None:
    held = Held(store)
    unknown, other = await queued(
        store.finish_activation(424242, int(FinishStatus.SOLD), 1.0),
        learn(store, "a", "79000000002"),
    )
    await held.release()
    with pytest.raises(UnknownActivation):
        await asyncio.wait_for(unknown, 10)
    await asyncio.wait_for(other, 10)
    assert await learned(store) == {"a": "79000000002"}


async def test_a_full_database_refuses_the_whole_transaction_and_recovers(store: Store) -> None:
    [[pages]] = await store._db.execute("PRAGMA page_count")
    await store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL, as on a full disk
    big = "7" * 20_000
    with pytest.raises(StoreError, match="full"):
        await asyncio.wait_for(learn(store, "a", big), 10)
    assert await learned(store) == {}
    await store._db.execute(f"PRAGMA max_page_count = {pages * 100}")
    await asyncio.wait_for(learn(store, "a", big), 10)
    assert await learned(store) == {"a": big}


async def test_a_lost_file_refuses_writes_even_those_already_queued(
    store: Store, tmp_path: Path
) -> None:
    await learn(store, "a", "79000000002")
    held = Held(store)
    [waiting] = await queued(learn(store, "b", "79000000003"))
    remove_database(store.path)
    assert store.file_problem() == f"{store.path} was deleted"
    await held.release()
    with pytest.raises(StoreError, match="was deleted"):
        await asyncio.wait_for(waiting, 10)
    with pytest.raises(StoreError, match="was deleted"):
        await learn(store, "c", "79000000004")
    assert not exists(store.path)  # nothing was written under its name again


async def test_close_commits_what_is_queued_then_stops_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await Store.open(path)
    thread = store._db._thread
    held = Held(store)
    writes = await queued(*(learn(store, f"sim{i}", f"7900000000{i}") for i in range(5)))
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)  # its stop is queued behind the writes, the thread still held
    assert not closing.done() and thread.is_alive()
    await held.release()
    await asyncio.wait_for(closing, 10)
    await asyncio.wait_for(asyncio.gather(*writes), 1)
    assert not thread.is_alive()
    with pytest.raises(StoreError, match="is closed"):
        await learn(store, "late", "79000000009")
    with pytest.raises(StoreError, match="is closed"):
        await store.learned_numbers()
    await store.close()  # a second close is harmless
    again = await Store.open(path)
    try:
        assert len(await learned(again)) == 5
    finally:
        await again.close()


async def test_a_store_that_cannot_open_says_why_and_leaves_no_thread(tmp_path: Path) -> None:
    before = threading.active_count()
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    with pytest.raises(StoreError, match="cannot open"):
        await Store.open(folder)
    assert threading.active_count() == before


async def test_a_newer_schema_is_refused_by_name_and_leaves_no_thread(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await Store.open(path)
    await store._db.execute("PRAGMA user_version = 999")
    await store.close()
    before = threading.active_count()
    with pytest.raises(StoreError, match="schema version 999 is newer than this program knows"):
        await Store.open(path)
    assert threading.active_count() == before
