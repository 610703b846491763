"""The store's interface, on SQLite and on PostgreSQL: the same answers, the same types.

The first part runs every test on both backends (a real SQLite file, a real
PostgreSQL database in the session's throwaway cluster). The second part is
what only PostgreSQL has: several stores (hosts) on one database at once, a
server that stops and comes back, a database that refuses writes, a URL
whose password must never be shown.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from supplier.backend import StoreBackend, open_store
from supplier.bankstore import BankStore, ModuleRow, SlotRow
from supplier.config import StorageConfig
from supplier.errors import StoreError, UnknownActivation
from supplier.pgstore import Connection, PgStore
from supplier.sale import SaleRequest
from supplier.store import MAX_JSON_ID, BalanceRow, Delivery, NewPart, NewSms, Sms, Usage

from .pg import Cluster, Stores, set_read_only

ICCID = "8970010000000000004"
NUMBER = "79001234567"
NOW = 1_800_000_000.0
CLOCK_2026 = 1_767_225_600 * 1_000_000  # ids start above the clock in µs: past this


async def open_one(store: StoreBackend, *, hub: str = "alpha", now: float = NOW) -> int:
    activation = await store.open_activation(
        SaleRequest(hub, "russia", "mts", "vk", sum="12.50", currency=643),
        iccid=ICCID, number=NUMBER, country="russia", operator="mts", now=now,
        release_at=now + 600,
    )  # fmt: skip
    return activation.id


def part(digest: str, *, key: str | None = None, seq: int | None = None) -> NewPart:
    return NewPart(
        digest, ICCID, "/dev/ttyUSB0", "SM", 3, "0791", NOW, "VK",
        part_key=key, part_total=2 if key else None, part_seq=seq,
    )  # fmt: skip


def message(*digests: str, routes: tuple[tuple[str, int | None], ...] = ()) -> NewSms:
    return NewSms(
        digests=digests, iccid=ICCID, number=NUMBER, sender="VK", text="code 1234", kind="text",
        sent=NOW - 5, received=NOW, complete=True, routes=routes,
    )  # fmt: skip


# -- both backends ------------------------------------------------------------------------


@pytest.mark.backends
async def test_sims_are_upserted_and_a_known_number_is_kept(store: StoreBackend) -> None:
    first = await store.upsert_sim(
        iccid=ICCID, imsi="250011", number=NUMBER, country="russia", operator="mts",
        port="/dev/a", now=NOW,
    )  # fmt: skip
    assert (first.enabled, first.first_seen, first.last_used) == (True, NOW, None)
    again = await store.upsert_sim(
        iccid=ICCID, imsi="250012", number=None, country="russia", operator="mts",
        port="/dev/b", now=NOW + 1,
    )  # fmt: skip
    assert (again.number, again.imsi, again.port) == (NUMBER, "250012", "/dev/b")
    assert (again.first_seen, again.last_seen) == (NOW, NOW + 1)
    assert await store.set_sim_enabled(ICCID, False) is True
    assert await store.set_sim_number(ICCID, "79009999999") is True
    assert await store.set_sim_enabled("no-such-sim", False) is False
    await store.touch_sims([ICCID, "no-such-sim"], NOW + 7)
    [row] = await store.load_sims()
    assert (row.enabled, row.number_manual, row.last_seen) == (False, "79009999999", NOW + 7)
    assert type(row.enabled) is bool and type(row.last_seen) is float


@pytest.mark.backends
async def test_finish_counts_once_a_repeat_changes_nothing_a_stranger_is_unknown(
    store: StoreBackend,
) -> None:
    await store.upsert_sim(
        iccid=ICCID, imsi=None, number=NUMBER, country="russia", operator="mts", port=None,
        now=NOW,
    )  # fmt: skip
    activation_id = await open_one(store)
    assert type(activation_id) is int and CLOCK_2026 < activation_id <= MAX_JSON_ID
    [sim] = await store.load_sims()
    assert sim.last_used == NOW  # by trigger, in the same transaction
    finished, first = await store.finish_activation(activation_id, 3, NOW + 10, hub="alpha")
    assert first and (finished.status, finished.finished, finished.sum) == (3, NOW + 10, "12.50")
    repeat, first = await store.finish_activation(activation_id, 4, NOW + 20, hub="alpha")
    assert not first and (repeat.status, repeat.finished) == (3, NOW + 10)  # the first stands
    with pytest.raises(UnknownActivation):
        await store.finish_activation(activation_id, 3, NOW, hub="beta")  # another hub's
    with pytest.raises(UnknownActivation):
        await store.finish_activation(activation_id + 1000, 3, NOW, hub="alpha")
    with pytest.raises(ValueError, match="status 2"):
        await store.finish_activation(activation_id, 2, NOW)
    assert await store.load_usage() == {(NUMBER, "vk"): Usage(1, 1, 0, 0, True)}
    stored = await store.get_activation(activation_id)
    assert stored == finished and await store.get_activation(1) is None
    assert await store.activations_of(ICCID) == [finished]
    assert [e.sum for e in await store.earnings(NOW)] == ["12.50"]
    assert await store.earnings(NOW + 11) == []
    assert await store.load_activations(NOW + 1) == []  # finished and older
    assert await store.load_activations(NOW) == [finished]


@pytest.mark.backends
async def test_an_sms_is_stored_once_with_one_delivery_per_hub(store: StoreBackend) -> None:
    duplicate, sms, deliveries = await store.receive(
        part("d1"), message("d1", routes=(("alpha", 7), ("beta", None)))
    )
    assert not duplicate and isinstance(sms, Sms) and sms.complete is True
    assert sms.id > CLOCK_2026  # smsId above the clock in µs at open, as activation ids
    assert [(d.hub, d.activation_id, d.attempts, d.next_attempt) for d in deliveries] == [
        ("alpha", 7, 0, NOW),
        ("beta", None, 0, NOW),
    ]
    assert all(isinstance(d, Delivery) for d in deliveries)
    assert await store.receive(part("d1"), message("d1")) == (True, None, [])  # read again
    assert await store.deliveries_for(sms.id) == deliveries
    assert await store.recent_sms() == [sms]
    assert await store.sms_of(ICCID) == [(sms, deliveries)]
    assert await store.sms_count(NOW) == 1 and await store.sms_count(NOW + 1) == 0
    assert await store.last_sms() == {ICCID: NOW}
    assert await store.backlog(NOW + 30) == {"alpha": (1, 30.0), "beta": (1, 30.0)}


@pytest.mark.backends
async def test_parts_wait_until_complete_then_become_one_message(store: StoreBackend) -> None:
    assert await store.receive(part("p1", key="VK/1/2", seq=1), None) == (False, None, [])
    [pending] = await store.pending_parts()
    assert (pending.digest, pending.part_key, pending.received) == ("p1", "VK/1/2", NOW)
    sms, deliveries = await store.complete(message("p1", routes=(("alpha", 1),)))
    assert await store.pending_parts() == []
    assert [d.sms_id for d in deliveries] == [sms.id]


@pytest.mark.backends
async def test_pushes_are_due_settled_once_and_retried(store: StoreBackend) -> None:
    _, sms, [alpha] = await store.receive(part("d1"), message("d1", routes=(("alpha", 1),)))
    assert sms is not None
    assert await store.next_due("alpha") == NOW
    assert await store.due_deliveries("alpha", NOW - 1, 10) == []
    assert await store.due_deliveries("alpha", NOW, 10) == [(alpha, sms)]
    assert await store.due_deliveries("alpha", NOW, 10, exclude=[alpha.id]) == []
    assert await store.next_due("alpha", exclude=[alpha.id]) is None
    await store.retry_delivery(alpha.id, "HTTP 500", NOW + 1, NOW + 11)
    assert await store.next_due("alpha") == NOW + 11
    assert await store.settle_delivery(alpha.id, "SUCCESS", "HTTP 200", NOW + 12) is True
    assert await store.settle_delivery(alpha.id, "SUCCESS", "HTTP 200", NOW + 13) is False
    [done] = await store.deliveries_for(sms.id)
    assert (done.attempts, done.done, done.outcome, done.last_result) == (
        2,
        NOW + 12,
        "SUCCESS",
        "HTTP 200",
    )
    assert await store.next_due("alpha") is None and await store.backlog(NOW) == {}


@pytest.mark.backends
async def test_learned_numbers_and_balances_are_replaced_not_added(store: StoreBackend) -> None:
    await store.learn_number(ICCID, "79001111111", "USSD *111#", NOW)
    await store.learn_number(ICCID, NUMBER, "USSD *111*0887#", NOW + 1)
    assert await store.learned_numbers() == {ICCID: NUMBER}
    await store.save_balance(ICCID, BalanceRow("10.50", "RUB", "Balans 10.50 r", NOW))
    await store.save_balance(ICCID, BalanceRow(None, None, "unreadable", NOW + 1))
    assert await store.balances() == {ICCID: BalanceRow(None, None, "unreadable", NOW + 1)}


@pytest.mark.backends
async def test_bank_slots_and_modules_round_trip(store: StoreBackend) -> None:
    records = BankStore(store)
    slot = SlotRow("pool1", 1, 2, ICCID, "250011", NUMBER, "known", NOW, 0, None, True)
    await records.save_slot(slot)
    slot.failures, slot.state, slot.in_rotation = 2, "faulty", False
    await records.save_slot(slot)
    await records.save_slot(SlotRow("pool1", 1, 3))
    await records.save_module(ModuleRow("pool1", 1, 2, switching=True))
    await records.save_module(ModuleRow("pool1", 1, 3, switching=False, held=True))
    slots = sorted(await records.load_slots(), key=lambda s: s.slot)
    assert slots == [slot, SlotRow("pool1", 1, 3)]
    assert await records.load_modules() == [ModuleRow("pool1", 1, 3, False, True)]
    with pytest.raises(ValueError, match="not a table or column name"):
        await store.table_rows("bank_slots; DROP TABLE sims", ["bank"])


@pytest.mark.backends
async def test_ids_only_grow_across_reopening(stores: Stores) -> None:
    before = time.time()
    store = await stores.open("ids")
    first = await open_one(store)
    assert first >= before * 1_000_000
    await store.close()
    store = await stores.open("ids")
    second = await open_one(store)
    assert first < second and await store.schema_version() >= 6


# -- PostgreSQL only: several hosts on one database ----------------------------------------


async def two_hosts(pg_url: str) -> tuple[PgStore, PgStore]:
    return await asyncio.gather(PgStore.open(pg_url), PgStore.open(pg_url))


async def test_hosts_opening_at_once_migrate_once(pg_url: str) -> None:
    a, b = await two_hosts(pg_url)  # one takes the advisory lock, the other sees it done
    try:
        assert await a.schema_version() == await b.schema_version() >= 6
        rows = await a._fetch("SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_migrations")
        assert rows[0][0] == rows[0][1]
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_finish_through_two_hosts_at_once_counts_once(pg_url: str) -> None:
    a, b = await two_hosts(pg_url)
    try:
        ids = [await open_one(a) for _ in range(20)]
        for activation_id in ids:
            results = await asyncio.gather(
                a.finish_activation(activation_id, 3, NOW + 1, hub="alpha"),
                b.finish_activation(activation_id, 4, NOW + 2, hub="alpha"),
            )
            assert sorted(first for _, first in results) == [False, True]
            assert results[0][0].status == results[1][0].status  # both tell the one that stood
        [usage] = (await a.load_usage()).values()
        assert (usage.offers, usage.sold + usage.cancelled) == (20, 20)
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_part_read_by_two_hosts_at_once_is_stored_once(pg_url: str) -> None:
    a, b = await two_hosts(pg_url)
    try:
        for i in range(20):
            digest = f"d{i}"
            results = await asyncio.gather(
                a.receive(part(digest), message(digest, routes=(("alpha", 1),))),
                b.receive(part(digest), message(digest, routes=(("alpha", 1),))),
            )
            assert sorted(duplicate for duplicate, _, _ in results) == [False, True]
        assert await a.sms_count(0) == 20
        assert (await a.backlog(NOW))["alpha"][0] == 20  # one delivery each
    finally:
        await asyncio.gather(a.close(), b.close())


# -- PostgreSQL only: failures -------------------------------------------------------------


async def test_a_read_only_database_refuses_writes_and_they_work_again(pg_url: str) -> None:
    store = await PgStore.open(pg_url)
    try:
        await store.learn_number(ICCID, NUMBER, "ussd", NOW)
        await set_read_only(pg_url, True)
        with pytest.raises(StoreError, match="cannot record the number"):
            await store.learn_number(ICCID, "79000000000", "ussd", NOW)
        with pytest.raises(StoreError, match="cannot open an activation"):
            await open_one(store)
        assert await store.learned_numbers() == {ICCID: NUMBER}  # reads still answer
        await set_read_only(pg_url, False)
        await store.learn_number(ICCID, "79000000000", "ussd", NOW)  # the pool reconnected
        assert await store.learned_numbers() == {ICCID: "79000000000"}
    finally:
        await store.close()


async def test_a_stopped_server_is_an_error_then_works_again_without_reopening(
    pg_cluster: Cluster, pg_url: str
) -> None:
    store = await PgStore.open(pg_url, timeout=2.0)
    try:
        await store.learn_number(ICCID, NUMBER, "ussd", NOW)
        pg_cluster.stop("immediate")  # as if it crashed
        started = time.monotonic()
        with pytest.raises(StoreError):
            await store.learn_number(ICCID, "79000000000", "ussd", NOW)
        with pytest.raises(StoreError):
            await store.learned_numbers()
        assert time.monotonic() - started < 2 * 2.0 + 1  # each under the store's timeout
        pg_cluster.start()
        await store.learn_number(ICCID, "79000000000", "ussd", NOW)
        assert await store.learned_numbers() == {ICCID: "79000000000"}
    finally:
        if not pg_cluster.running():
            pg_cluster.start()
        await store.close()


async def test_close_lets_writes_in_flight_commit_then_refuses(pg_url: str) -> None:
    store = await PgStore.open(pg_url)
    writes = [
        asyncio.ensure_future(store.learn_number(f"sim{i}", f"7900000000{i}", "ussd", NOW))
        for i in range(5)
    ]
    await asyncio.sleep(0)  # each has started
    await store.close()
    await asyncio.wait_for(asyncio.gather(*writes), 5)
    with pytest.raises(StoreError):
        await store.learn_number("late", "79000000009", "ussd", NOW)
    await store.close()  # twice is harmless
    again = await PgStore.open(pg_url)
    try:
        assert len(await again.learned_numbers()) == 5
    finally:
        await again.close()


async def test_an_unreachable_server_is_one_error_without_the_password(
    tmp_path: pytest.TempPathFactory,
) -> None:
    url = f"postgresql://supplier:s3cret-pw@/supplier?host={tmp_path}/no-server"
    with pytest.raises(StoreError) as caught:
        await open_store(StorageConfig(url=url))
    text = str(caught.value)
    assert "cannot connect" in text and "s3cret-pw" not in text
    assert "postgresql://supplier@/supplier" in text


async def test_a_newer_schema_is_refused_by_name(pg_url: str) -> None:
    store = await PgStore.open(pg_url)
    await store.close()
    connection = await asyncpg.connect(pg_url)
    try:
        await connection.execute("INSERT INTO schema_migrations VALUES (999, 0)")
    finally:
        await connection.close()
    with pytest.raises(StoreError, match="schema version 999 is newer than this program knows"):
        await PgStore.open(pg_url)


async def test_a_failing_write_leaves_nothing_and_the_others_commit(pg_url: str) -> None:
    store = await PgStore.open(pg_url)

    async def half_then_fail(db: Connection) -> None:
        insert = (
            "INSERT INTO learned_numbers (iccid, number, source, learned) VALUES ($1, $2, $3, $4)"
        )
        await db.execute(insert, "half", "79000000000", "ussd", 1.0)
        await db.execute(insert, "half", "79000000001", "ussd", 1.0)  # the same key: refused

    try:
        first, failing, last = await asyncio.gather(
            store.learn_number("a", "79000000002", "ussd", 1.0),
            store._write(half_then_fail, "cannot learn half"),
            store.learn_number("b", "79000000003", "ussd", 1.0),
            return_exceptions=True,
        )
        assert isinstance(failing, StoreError) and str(failing).startswith(
            "cannot learn half: duplicate key value violates unique constraint"
        )
        assert first is None and last is None
        assert await store.learned_numbers() == {"a": "79000000002", "b": "79000000003"}
    finally:
        await store.close()
