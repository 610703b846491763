"""Push leases on PostgreSQL (issue 16): several hosts push from one outbox.

Two `PgStore`s on one database are two hosts. A due delivery is taken by one
host only (`FOR UPDATE SKIP LOCKED`), with a lease by the server's clock; a
lease that runs out is taken over by another host; recording the answer
ends the lease; a SUCCESS is settled once. The outbox is seeded with plain
SQL, as another host's inbox would have stored it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from supplier.pgstore import PgStore
from supplier.store import Store

HUB = "alpha"
Hosts = Callable[..., Awaitable[PgStore]]


@pytest.fixture
async def host(pg_url: str) -> AsyncIterator[Hosts]:
    """`await host("a")`: a PgStore on the test's database naming itself `a`."""
    opened: list[PgStore] = []

    async def factory(name: str, *, timeout: float = 5.0) -> PgStore:
        store = await PgStore.open(pg_url, host=name, timeout=timeout)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


async def seed(url: str, count: int, *, hub: str = HUB, due: float = 0.0) -> list[int]:
    """`count` stored SMS with one delivery each to `hub`, due at `due`; their delivery ids."""
    db = await asyncpg.connect(url)
    try:
        # Another host's inbox, which may write when the test made the database read-only.
        await db.execute("SET default_transaction_read_only = off")
        ids = []
        for n in range(count):
            sms_id = await db.fetchval(
                "INSERT INTO sms (iccid, number, sender, text, kind, received) "
                "VALUES ('8970010000000000004', '79001234567', 'Bank', $1, 'text', $2) "
                "RETURNING id",
                f"code {n}",
                time.time(),
            )
            ids.append(
                await db.fetchval(
                    "INSERT INTO deliveries (sms_id, hub, activation_id, created, next_attempt) "
                    "VALUES ($1, $2, 7, $3, $4) RETURNING id",
                    sms_id,
                    hub,
                    time.time(),
                    due,
                )
            )
        return ids
    finally:
        await db.close()


async def row(url: str, delivery_id: int) -> asyncpg.Record:
    db = await asyncpg.connect(url)
    try:
        found = await db.fetchrow(
            "SELECT attempts, done, outcome, lease_until, leased_by, next_attempt, "
            "extract(epoch FROM clock_timestamp())::float8 AS server_now "
            "FROM deliveries WHERE id = $1",
            delivery_id,
        )
        assert found is not None
        return found
    finally:
        await db.close()


async def test_migration_8_adds_the_lease_columns_in_both_dialects(
    pg_url: str, tmp_path: Path
) -> None:
    pg = await PgStore.open(pg_url)
    try:
        assert await pg.schema_version() >= 8
        columns = {r[0] for r in await pg._fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'deliveries'"
        )}  # fmt: skip
        index = await pg._fetch(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'deliveries_due'"
        )
    finally:
        await pg.close()
    assert {"lease_until", "leased_by"} <= columns
    assert "(hub, next_attempt, id) INCLUDE (lease_until)" in index[0][0]
    lite = await Store.open(tmp_path / "s.db")
    try:
        assert await lite.schema_version() >= 8
        rows = await lite._fetchall("PRAGMA table_info(deliveries)")
    finally:
        await lite.close()
    assert {"lease_until", "leased_by"} <= {r[1] for r in rows}


async def test_each_due_delivery_is_taken_by_one_host_only(host: Hosts, pg_url: str) -> None:
    a, b = await host("a"), await host("b")
    ids = await seed(pg_url, 60)
    taken: dict[str, list[int]] = {"a": [], "b": []}

    async def drain(store: PgStore, rounds: int | None = None) -> None:
        # As a pusher does: what this store has in flight is excluded (its own lease).
        mine = taken[store.host]
        while batch := await store.due_deliveries(HUB, time.time(), 7, exclude=mine):
            mine.extend(d.id for d, _ in batch)
            if rounds is not None and (rounds := rounds - 1) == 0:
                return

    started = time.monotonic()
    await asyncio.gather(drain(a, 1), drain(b, 1))  # at once: 7 each, none of the other's
    assert len(taken["a"]) == len(taken["b"]) == 7
    first = await row(pg_url, taken["a"][0])
    elapsed = time.monotonic() - started
    await asyncio.gather(drain(a), drain(b))  # one taker per host and hub, as a pusher
    both = taken["a"] + taken["b"]
    assert sorted(both) == sorted(ids)  # every one taken, none twice
    assert first["leased_by"] == a.holder and a.holder.startswith("a#")
    # The lease is on the server's clock: push timeout + store timeout + slack from then.
    left = first["lease_until"] - first["server_now"]
    assert 10.0 + 5.0 + 5.0 - elapsed - 0.1 <= left <= 10.0 + 5.0 + 5.0


async def test_a_taken_delivery_comes_with_its_sms_in_due_order(host: Hosts, pg_url: str) -> None:
    a = await host("a")
    late, early = await seed(pg_url, 1, due=20.0), await seed(pg_url, 1, due=10.0)
    assert await a.due_deliveries(HUB, 5.0, 10) == []  # not due yet by the host's clock
    taken = await a.due_deliveries(HUB, 30.0, 10)
    assert [d.id for d, _ in taken] == [*early, *late]
    delivery, sms = taken[0]
    assert (delivery.hub, delivery.activation_id, delivery.attempts) == (HUB, 7, 0)
    assert (sms.id, sms.text, sms.number) == (delivery.sms_id, "code 0", "79001234567")


async def test_a_lease_that_runs_out_is_taken_over_by_another_host(
    host: Hosts, pg_url: str
) -> None:
    a, b = await host("a", timeout=0.4), await host("b", timeout=0.4)
    a.lease_slack = 0.0  # a's lease: push timeout 0.2 + store timeout 0.4
    [delivery_id] = await seed(pg_url, 1)
    [(taken, _)] = await a.due_deliveries(HUB, time.time(), 10, push_timeout=0.2)
    assert taken.id == delivery_id
    # While a's lease runs nobody else takes it, and it is not due for b.
    assert await b.due_deliveries(HUB, time.time(), 10) == []
    assert await b.next_due(HUB) is None
    # a dies (never answers). Its lease runs out by the server's clock and b takes it.
    # The wait is the lease itself: time is the event here.
    lease = await row(pg_url, delivery_id)
    assert lease["lease_until"] - lease["server_now"] == pytest.approx(0.6, abs=0.3)
    await asyncio.sleep(lease["lease_until"] - lease["server_now"] + 0.05)
    over = await b.due_deliveries(HUB, time.time(), 10)
    assert [d.id for d, _ in over] == [delivery_id]
    assert (await row(pg_url, delivery_id))["leased_by"] == b.holder
    # a comes back late with a failed attempt: b's lease is left alone.
    await a.retry_delivery(delivery_id, "timeout", time.time(), time.time() + 60)
    after = await row(pg_url, delivery_id)
    assert (after["leased_by"], after["attempts"]) == (b.holder, 0)
    assert after["lease_until"] > after["server_now"]
    # b's attempt fails: its lease ends and the delivery waits for its next attempt.
    await b.retry_delivery(delivery_id, "HTTP 500", 100.0, 200.0)
    after = await row(pg_url, delivery_id)
    assert (after["attempts"], after["lease_until"], after["next_attempt"]) == (1, None, 200.0)
    assert await a.next_due(HUB) == 200.0
    assert [d.id for d, _ in await a.due_deliveries(HUB, 200.0, 10)] == [delivery_id]


async def test_a_success_is_settled_once_whichever_host_answers(host: Hosts, pg_url: str) -> None:
    a, b = await host("a"), await host("b")
    [delivery_id] = await seed(pg_url, 1)
    await a.due_deliveries(HUB, time.time(), 10)
    settled = await asyncio.gather(
        a.settle_delivery(delivery_id, "SUCCESS", "HTTP 200, status 'SUCCESS'", 50.0),
        b.settle_delivery(delivery_id, "SUCCESS", "HTTP 200, status 'SUCCESS'", 51.0),
    )
    assert sorted(settled) == [False, True]
    done = await row(pg_url, delivery_id)
    assert (done["attempts"], done["outcome"], done["lease_until"]) == (1, "SUCCESS", None)
    assert done["done"] in (50.0, 51.0)
    # Done is done: never due again, a late failure changes nothing.
    await a.retry_delivery(delivery_id, "timeout", 60.0, 70.0)
    assert (await row(pg_url, delivery_id))["attempts"] == 1
    assert await b.due_deliveries(HUB, time.time() + 1000, 10) == []
    assert await b.next_due(HUB) is None


async def test_a_stores_own_lease_is_taken_again_unless_in_flight(host: Hosts, pg_url: str) -> None:
    """A lease of this store's not in flight here: an attempt whose answer the store
    could not record. Taken again at once, not after the lease; by no one else."""
    a = await host("a")
    first, second = await seed(pg_url, 2)
    taken = await a.due_deliveries(HUB, time.time(), 10)
    assert {d.id for d, _ in taken} == {first, second}
    # `first` still in flight here: only `second` is taken again; another host gets neither.
    again = await a.due_deliveries(HUB, time.time(), 10, exclude={first})
    assert [d.id for d, _ in again] == [second]
    assert await a.next_due(HUB, exclude={first, second}) is None
    assert await a.next_due(HUB, exclude={first}) == 0.0
    b = await host("b")
    assert await b.due_deliveries(HUB, time.time(), 10) == []
    # A second daemon given the same name (a mistake), or "a" restarted: another run,
    # so it waits for the leases like any other host instead of pushing them twice.
    a2 = await host("a")
    assert a2.holder != a.holder
    assert await a2.due_deliveries(HUB, time.time(), 10) == []
    assert await a2.next_due(HUB) is None


async def test_taking_is_per_hub_and_bounded(host: Hosts, pg_url: str) -> None:
    a = await host("a")
    await seed(pg_url, 5)
    beta = await seed(pg_url, 2, hub="beta")
    assert await a.due_deliveries(HUB, time.time(), 0) == []
    assert len(await a.due_deliveries(HUB, time.time(), 3)) == 3
    assert {d.id for d, _ in await a.due_deliveries("beta", time.time(), 10)} == set(beta)
