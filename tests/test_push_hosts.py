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
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from supplier.config import HubConfig
from supplier.pgstore import PgStore
from supplier.pusher import POLL_FLOOR, POLL_INTERVAL, Pusher
from supplier.store import Delivery, Sms

from .hubkit import FakeHub, success
from .pg import lock_waiters, set_read_only
from .test_push_faults import captured_logs
from .test_push_leases import HUB, row, seed


class CountingStore(PgStore):
    """A real PgStore that counts how often its outbox is read (a hot loop shows here)."""

    reads = 0
    read: asyncio.Event | None = None  # set at every read, for a test to wait on

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
        if self.read is not None:
            self.read.set()
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

    async def factory(
        name: str, *, concurrency: int = 4, on_result: Callable[[str, str], None] | None = None
    ) -> tuple[PgStore, Pusher]:
        store = await CountingStore.open(pg_url, host=name)
        hub = HubConfig(
            name=HUB,
            key="alpha-key-0001",
            push_url=fake_hub.url,
            retry_interval=0.5,
            push_timeout=10.0,
        )
        pusher = Pusher(store, [hub], concurrency=concurrency, on_result=on_result)
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
    # Taken over once a's 1 s lease ran out and a poll came (with room for a loaded machine).
    assert took < 1.0 + POLL_INTERVAL + 7.0
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


# -- a database that refuses writes (tests/pg.py set_read_only: PostgreSQL's own rule) ----


async def reads_after(store: CountingStore, count: int, timeout: float = 10.0) -> None:
    """Wait until the store's outbox was read `count` more times."""
    target = store.reads + count
    store.read = asyncio.Event()
    async with asyncio.timeout(timeout):
        while store.reads < target:
            store.read.clear()
            await store.read.wait()


async def test_a_read_only_database_takes_no_push_and_never_spins(
    pg_url: str, pushing_host: Hosts, fake_hub: FakeHub
) -> None:
    """Taking a push is a write (its lease): refused, nothing is pushed, and the
    worker waits its hub's retry interval (0.5 s) between tries, never a hot loop."""
    recorded = asyncio.Event()
    store, _ = await pushing_host("b", on_result=lambda hub, outcome: recorded.set())
    assert isinstance(store, CountingStore)
    await set_read_only(pg_url, True)
    try:
        [delivery_id] = await seed(pg_url, 1)
        started, first = time.monotonic(), store.reads
        await reads_after(store, 3)
        elapsed = time.monotonic() - started
        assert elapsed >= 2 * 0.5 - 0.1  # three tries: two retry intervals between them
        assert store.reads - first <= elapsed / 0.5 + 2
        assert fake_hub.received == []
    finally:
        await set_read_only(pg_url, False)
    async with asyncio.timeout(10):
        await recorded.wait()
    assert (await row(pg_url, delivery_id))["outcome"] == "SUCCESS"
    assert len(fake_hub.received) == 1


def late_success(gate: asyncio.Event) -> Callable[[], web.StreamResponse]:
    """The hub's SUCCESS, sent once the test opens `gate`."""

    class _Late(web.Response):
        async def prepare(self, request: web.BaseRequest) -> Any:
            await gate.wait()
            return await super().prepare(request)

    return lambda: _Late(text='{"status": "SUCCESS"}', content_type="application/json")


async def test_a_success_the_database_cannot_record_is_recorded_not_pushed_again(
    pg_url: str, pushing_host: Hosts, fake_hub: FakeHub
) -> None:
    gate = asyncio.Event()
    fake_hub.answers = [late_success(gate)]
    results: list[str] = []
    recorded = asyncio.Event()

    def on_result(hub: str, outcome: str) -> None:
        results.append(outcome)
        recorded.set()

    store, _ = await pushing_host("b", on_result=on_result)
    assert isinstance(store, CountingStore)
    [delivery_id] = await seed(pg_url, 1)
    await fake_hub.wait_for(1, timeout=5)  # found by polling, pushed; the hub holds its answer
    await set_read_only(pg_url, True)
    try:
        gate.set()  # SUCCESS, which the database cannot record now
        await reads_after(store, 3)  # the pusher tried again three times meanwhile
        assert len(fake_hub.received) == 1 and results == []
    finally:
        await set_read_only(pg_url, False)
    async with asyncio.timeout(10):
        await recorded.wait()
    assert results == ["SUCCESS"]
    done = await row(pg_url, delivery_id)
    assert (done["outcome"], done["attempts"], done["lease_until"]) == ("SUCCESS", 1, None)
    assert len(fake_hub.received) == 1  # recorded, not pushed again


# -- answers the store could not record ----------------------------------------------------


async def test_an_answer_kept_for_a_delivery_another_host_settled_is_forgotten(
    pg_url: str, fake_hub: FakeHub
) -> None:
    """Two SUCCESS answers this host could not record (their settles' backends ended
    while row locks held them). One delivery is then settled by another host: its
    answer is forgotten, not kept for ever. The other, not done (locked by another
    session meanwhile), keeps its answer, which is recorded once it comes back here:
    neither SMS is pushed again."""
    store = await CountingStore.open(pg_url, host="a", timeout=10.0)
    lockers = [await asyncpg.connect(pg_url) for _ in range(2)]
    watcher = await asyncpg.connect(pg_url)
    gates = [asyncio.Event(), asyncio.Event()]
    fake_hub.answers = [late_success(gate) for gate in gates]
    recorded = asyncio.Event()
    config = HubConfig(
        name=HUB, key="alpha-key-0001", push_url=fake_hub.url, retry_interval=0.3,
        push_timeout=30.0,
    )  # fmt: skip
    pusher = Pusher(store, [config], on_result=lambda hub, outcome: recorded.set())
    try:
        with captured_logs() as logs:
            ids = await seed(pg_url, 2)
            await pusher.start()
            await fake_hub.wait_for(2)  # both taken and pushed; the hub holds the answers
            for locker, delivery_id in zip(lockers, ids, strict=True):
                await locker.execute("BEGIN")
                await locker.execute(
                    "SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", delivery_id
                )
            for gate in gates:
                gate.set()  # SUCCESS: both settles wait for their rows
            for pid in await lock_waiters(watcher, 2):
                await watcher.execute("SELECT pg_terminate_backend($1)", pid)
            async with asyncio.timeout(10):
                while len(pusher._unrecorded) < 2:
                    logs.changed.clear()
                    await logs.changed.wait()
            # Another host's attempt settles the first (as its store does), and its lock goes.
            await lockers[0].execute(
                "UPDATE deliveries SET done = 1, outcome = 'SUCCESS', attempts = attempts + 1, "
                "lease_until = NULL, leased_by = 'b#0001' WHERE id = $1",
                ids[0],
            )
            await lockers[0].execute("COMMIT")
            await logs.wait_for("push answer not recorded: the delivery was settled elsewhere")
            assert set(pusher._unrecorded) == {ids[1]}
            await reads_after(store, 3)  # turns that do not find it: still kept
            assert set(pusher._unrecorded) == {ids[1]}
            await lockers[1].execute("ROLLBACK")
            async with asyncio.timeout(10):
                await recorded.wait()
        assert pusher._unrecorded == {}
        assert len(fake_hub.received) == 2  # recorded, not pushed again
        first, second = await row(pg_url, ids[0]), await row(pg_url, ids[1])
        assert (first["leased_by"], first["attempts"]) == ("b#0001", 1)
        assert (second["outcome"], second["attempts"], second["leased_by"]) == (
            "SUCCESS", 1, store.holder,
        )  # fmt: skip
    finally:
        await pusher.stop()
        await watcher.close()
        for locker in lockers:
            await locker.close()
        await store.close()


# -- a clean stop ---------------------------------------------------------------------------


async def test_a_clean_stop_gives_its_pushes_to_another_host_at_once(
    pg_url: str, pushing_host: Hosts, fake_hub: FakeHub
) -> None:
    """Host a stops cleanly with three pushes in flight (the hub holds their answers
    past the grace) and one answered SUCCESS. Host b pushes the three on its next
    poll, long before a's leases (20 s) would have run out; the one answered is not
    pushed again, and the abandoned attempts are not counted."""
    gate = asyncio.Event()  # opened at the end only: a's three pushes are never answered
    fake_hub.answers = [success, *[late_success(gate)] * 3]
    recorded = asyncio.Event()
    a = await PgStore.open(pg_url, host="a")
    config = HubConfig(
        name=HUB, key="alpha-key-0001", push_url=fake_hub.url, retry_interval=0.5,
        push_timeout=10.0,
    )  # fmt: skip
    pusher = Pusher(a, [config], on_result=lambda hub, outcome: recorded.set())
    try:
        ids = await seed(pg_url, 4)
        await pusher.start()
        await fake_hub.wait_for(4)  # found by polling, all four pushed
        async with asyncio.timeout(10):
            await recorded.wait()  # the first answer is recorded
        answered = fake_hub.received[0]["smsId"]
        held = [i for i in ids if await row_sms(pg_url, i) != answered]
        lease = await row(pg_url, held[0])
        assert lease["lease_until"] - lease["server_now"] > 15.0  # 10 + 5 + 5 s from taking
        b, _ = await pushing_host("b")
        await pusher.stop(grace=0.2)
        started = time.monotonic()
        await fake_hub.wait_for(7, timeout=10)
        took = time.monotonic() - started
    finally:
        gate.set()
        await pusher.stop()
        await a.close()
    assert took < 10.0  # b's next poll (every POLL_INTERVAL), not a's leases running out
    pushed = [body["smsId"] for body in fake_hub.received]
    assert pushed.count(answered) == 1
    assert sorted(pushed[4:]) == sorted([await row_sms(pg_url, i) for i in held])
    for delivery_id in held:
        done = await row(pg_url, delivery_id)
        assert (done["outcome"], done["attempts"], done["leased_by"]) == ("SUCCESS", 1, b.holder)
    await asyncio.sleep(POLL_INTERVAL + 0.5)  # a poll of b's goes by: nothing more to push
    assert len(fake_hub.received) == 7


async def test_an_answer_kept_unrecorded_is_recorded_at_a_clean_stop(
    pg_url: str, pushing_host: Hosts, fake_hub: FakeHub
) -> None:
    """A SUCCESS the store could not record (its settle's backend ended under a row
    lock) is recorded when the pusher stops, not left to another host to push again."""
    a = await PgStore.open(pg_url, host="a", timeout=10.0)
    locker, watcher = await asyncpg.connect(pg_url), await asyncpg.connect(pg_url)
    gate = asyncio.Event()
    fake_hub.answers = [late_success(gate)]
    # A long retry interval: after the failure a's worker waits, so only the stop records.
    config = HubConfig(
        name=HUB, key="alpha-key-0001", push_url=fake_hub.url, retry_interval=60.0,
        push_timeout=10.0,
    )  # fmt: skip
    pusher = Pusher(a, [config])
    try:
        with captured_logs() as logs:
            [delivery_id] = await seed(pg_url, 1)
            await pusher.start()
            await fake_hub.wait_for(1)
            await locker.execute("BEGIN")
            await locker.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", delivery_id)
            gate.set()  # SUCCESS: its settle waits for the row
            [pid] = await lock_waiters(watcher, 1)
            await watcher.execute("SELECT pg_terminate_backend($1)", pid)
            await logs.wait_for("cannot record a push answer")
            await locker.execute("ROLLBACK")
            assert set(pusher._unrecorded) == {delivery_id}
            await pusher.stop(grace=0.2)
        done = await row(pg_url, delivery_id)
        assert (done["outcome"], done["attempts"], done["lease_until"]) == ("SUCCESS", 1, None)
        b, _ = await pushing_host("b")
        assert isinstance(b, CountingStore)
        await reads_after(b, 2)  # b looks at the outbox: nothing to push
        assert len(fake_hub.received) == 1
    finally:
        await pusher.stop()
        await watcher.close()
        await locker.close()
        await a.close()
