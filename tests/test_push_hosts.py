"""The pusher on a shared store (issue 16): several hosts push from one PostgreSQL outbox.

Real PostgreSQL (tests/pg.py), real pushers, a real aiohttp hub on loopback
(tests/hubkit.py FakeHub). The outbox is seeded with plain SQL, as another
host's inbox would have stored it: the pushers here were never told about
those SMS and find them by polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import asyncpg
import pytest

from supplier.config import HubConfig
from supplier.pgstore import PgStore
from supplier.pusher import POLL_FLOOR, POLL_INTERVAL, Pusher
from supplier.store import Delivery, Sms

from .hubkit import FakeHub
from .test_push_leases import HUB, row, seed


class CountingStore(PgStore):
    """A real PgStore that counts how often its outbox is read (a hot loop shows here)."""

    reads = 0

    async def due_deliveries(
        self,
        hub: str,
        now: float,
        limit: int,
        exclude: Iterable[int] = (),
        *,
        push_timeout: float = 10.0,
    ) -> list[tuple[Delivery, Sms]]:
        self.reads += 1
        return await super().due_deliveries(hub, now, limit, exclude, push_timeout=push_timeout)


Hosts = Callable[..., Awaitable[tuple[PgStore, Pusher]]]


@pytest.fixture
async def fake_hub() -> AsyncIterator[FakeHub]:
    hub = FakeHub()
    await hub.start()
    yield hub
    await hub.stop()


@pytest.fixture
async def pushing_host(pg_url: str, fake_hub: FakeHub) -> AsyncIterator[Hosts]:
    """`await pushing_host("b")`: a host's store and its running pusher to the fake hub."""
    made: list[tuple[PgStore, Pusher]] = []

    async def factory(name: str, *, concurrency: int = 4) -> tuple[PgStore, Pusher]:
        store = await CountingStore.open(pg_url, host=name)
        hub = HubConfig(
            name=HUB,
            key="alpha-key-0001",
            push_url=fake_hub.url,
            retry_interval=0.5,
            push_timeout=2.0,
        )
        pusher = Pusher(store, [hub], concurrency=concurrency)
        await pusher.start()
        made.append((store, pusher))
        return store, pusher

    yield factory
    for store, pusher in made:
        await pusher.stop()
        await store.close()


async def test_a_dead_hosts_pushes_are_taken_over_each_pushed_once(
    pg_url: str, pushing_host: Hosts, fake_hub: FakeHub
) -> None:
    # Host a takes 20 pushes with a 1 s lease and dies before sending any of them.
    dead = await PgStore.open(pg_url, host="a", timeout=0.5)
    dead.lease_slack = 0.0
    leased = await seed(pg_url, 20)
    taken = await dead.due_deliveries(HUB, time.time(), 100, push_timeout=0.5)
    assert {d.id for d, _ in taken} == set(leased)
    await dead.close()
    # Two live hosts, told about nothing. 20 more SMS stored by some other host, no lease.
    await pushing_host("b")
    await pushing_host("c")
    unleased = await seed(pg_url, 20)
    started = time.monotonic()
    await fake_hub.wait_for(40, timeout=15)
    took = time.monotonic() - started
    sms_ids = [body["smsId"] for body in fake_hub.received]
    assert len(sms_ids) == len(set(sms_ids)) == 40  # each pushed once, by one host
    # Nothing waits longer than a's lease plus one poll (and load).
    assert took < 1.0 + POLL_INTERVAL + 3.0
    for delivery_id in leased + unleased:
        done = await row(pg_url, delivery_id)
        assert (done["outcome"], done["attempts"], done["lease_until"]) == ("SUCCESS", 1, None)
        assert done["leased_by"].split("#")[0] in ("b", "c")
    # Settled: no host pushes anything again.
    await asyncio.sleep(POLL_INTERVAL + 0.5)  # a poll of each live host goes by
    assert len(fake_hub.received) == 40


async def test_an_idle_shared_pusher_polls_without_a_hot_loop(
    pg_url: str, pushing_host: Hosts, fake_hub: FakeHub
) -> None:
    # Another host holds a live lease on a due push, and another host's transaction
    # holds a second due row locked (SKIP LOCKED passes it over, next_due sees it due).
    other = await PgStore.open(pg_url, host="a")
    [held] = await seed(pg_url, 1)
    assert [d.id for d, _ in await other.due_deliveries(HUB, time.time(), 10)] == [held]
    await other.close()
    [locked] = await seed(pg_url, 1)
    lock = await asyncpg.connect(pg_url)
    try:
        async with lock.transaction():
            await lock.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", locked)
            store, _ = await pushing_host("b")
            assert isinstance(store, CountingStore)
            await asyncio.sleep(2.0)  # the interval measured
            reads = store.reads
        # At most one read per POLL_FLOOR while the row is locked; a hot loop makes thousands.
        assert 2 <= reads <= 2.0 / POLL_FLOOR + 2
    finally:
        await lock.close()
    await fake_hub.wait_for(1, timeout=5)  # the lock gone, the row is pushed
    assert [body["smsId"] for body in fake_hub.received] == [await row_sms(pg_url, locked)]
    # Only the other host's lease is left: one read per POLL_INTERVAL.
    before = store.reads
    await asyncio.sleep(POLL_INTERVAL * 2)
    assert store.reads - before <= 3
    assert (await row(pg_url, held))["leased_by"].startswith("a#")
    assert len(fake_hub.received) == 1


async def row_sms(url: str, delivery_id: int) -> int:
    db = await asyncpg.connect(url)
    try:
        return int(await db.fetchval("SELECT sms_id FROM deliveries WHERE id = $1", delivery_id))
    finally:
        await db.close()
