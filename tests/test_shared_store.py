"""Several hosts, one PostgreSQL inventory, at the store level (supplier/shared.py).

A real PostgreSQL server (tests/pg.py). SIM rows are seeded with plain SQL,
as a host's `sim_ready` would have written them; hosts are only names here:
each publish is what that host's publisher would send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import asyncpg
import pytest

from supplier.config import ConfigError, parse_config
from supplier.pgstore import PgStore
from supplier.sale import Prefixes, SaleRequest
from supplier.shared import LiveSim
from supplier.store import StoreError

from .hubkit import prefix_set

SERVICES = ("vk", "tg")
HUB = {"name": "smshub", "key": "0123456789abcdef", "push_url": "https://hub.example/api"}


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PgStore]:
    opened = await PgStore.open(pg_url)
    yield opened
    await opened.close()


async def seed(
    store: PgStore,
    iccid: str,
    number: str,
    *,
    last_used: float | None = None,
    enabled: bool = True,
) -> None:
    """A `sims` row as a host's `sim_ready` writes it."""
    connection = await asyncpg.connect(store.url)
    try:
        await connection.execute(
            "INSERT INTO sims (iccid, imsi, number, country, operator, port, enabled, "
            "first_seen, last_seen, last_used) VALUES ($1, '25001', $2, 'russia', 'mts', "
            "'/dev/x', $3, 0, 0, $4)",
            iccid,
            number,
            enabled,
            last_used,
        )
    finally:
        await connection.close()


async def sql(store: PgStore, statement: str, *params: object) -> None:
    connection = await asyncpg.connect(store.url)
    try:
        await connection.execute(statement, *params)
    finally:
        await connection.close()


def live(
    iccid: str, number: str, *, present: bool = True, operator: str = "mts", country: str = "russia"
) -> LiveSim:
    return LiveSim(iccid, number, country, operator, "/dev/x", present)


async def allocate(
    store: PgStore,
    service: str = "vk",
    *,
    operator: str = "any",
    exclude: Iterable[str] = (),
    now: float | None = None,
    release_after: float = 600.0,
) -> tuple[str, int] | None:
    activation = await store.allocate(
        SaleRequest(
            "smshub",
            "russia",
            operator,
            service,
            sum="10",
            currency=643,
            exclude=Prefixes.of(exclude),
        ),
        now=time.time() if now is None else now,
        release_after=release_after,
    )
    return None if activation is None else (activation.iccid, activation.id)


async def finish(store: PgStore, activation_id: int, status: int) -> None:
    """FINISH as the store writes it: the triggers keep usage and the hold."""
    await sql(
        store,
        "UPDATE activations SET finished = $2, status = $3 WHERE id = $1",
        activation_id,
        time.time(),
        status,
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll the database until `check` holds (a lease runs out on the server's clock)."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def counts(store: PgStore, now: float) -> dict[str, dict[str, dict[str, int]]]:
    """Every live host's SIMs as a host with none of its own counts them."""
    return (await store.counts(SERVICES, now, "elsewhere")).others


# -- config ------------------------------------------------------------------------------


def test_host_config_defaults_to_the_hostname_and_names_bad_values() -> None:
    import socket

    config = parse_config({"hubs": [HUB]})
    assert config.host.name == socket.gethostname()
    assert (config.host.lease, config.host.renew) == (15.0, 5.0)
    assert parse_config({"hubs": [HUB], "host": {"name": "rack-2.b"}}).host.name == "rack-2.b"
    for host, expected in [
        ({"name": "a b"}, "host.name: 'a b': expected a host name of 1-63 letters"),
        ({"name": ""}, "host.name: '': expected a host name"),
        ({"lease": "10s", "renew": "6s"}, "host.renew: '6s': expected at most half of host.lease"),
        ({"lease": "soon"}, "host.lease: 'soon': expected a duration"),
        ({"nmae": "x"}, "host.nmae: unknown key"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_config({"hubs": [HUB], "host": host})
        assert expected in str(caught.value)


# -- counts and publishing ---------------------------------------------------------------------


async def test_counts_are_every_live_hosts_sims(store: PgStore) -> None:
    for iccid, number in [("A1", "79000000001"), ("A2", "79000000002"), ("B1", "79000000003")]:
        await seed(store, iccid, number)
    await store.publish("a", 15, [live("A1", "79000000001"), live("A2", "79000000002")])
    await store.publish("b", 15, [live("B1", "79000000003", operator="beeline")])
    now = time.time()
    assert await counts(store, now) == {
        "russia": {"mts": {"vk": 2, "tg": 2}, "beeline": {"vk": 1, "tg": 1}}
    }
    # Not present (no signal, withheld…): not counted at all; a SIM gone from a host: gone.
    await store.publish("a", 15, [live("A2", "79000000002", present=False)], gone=["A1"])
    assert await counts(store, now) == {"russia": {"beeline": {"vk": 1, "tg": 1}}}
    # `whole`: the host's list is complete; whatever else it had is deleted.
    await store.publish("b", 15, [], whole=True)
    assert await counts(store, now) == {}


async def test_a_host_gets_its_own_sims_one_by_one(store: PgStore) -> None:
    """So that it can leave out at once one of its own that left sale since."""
    for iccid, number in [("A1", "79000000001"), ("A2", "79000000002"), ("B1", "79000000003")]:
        await seed(store, iccid, number)
    await store.publish("a", 15, [live("A1", "79000000001"), live("A2", "79000000002")])
    await store.publish("b", 15, [live("B1", "79000000003", operator="beeline")])
    got = await allocate(store, operator="mts")
    assert got is not None and got[0] == "A1"
    counted = await store.counts(SERVICES, time.time(), "a")
    assert counted.others == {"russia": {"beeline": {"vk": 1, "tg": 1}}}
    assert counted.mine == {"A1": ("russia", "mts", ()), "A2": ("russia", "mts", ("tg", "vk"))}


async def test_counts_follow_holds_usage_and_the_operators_switch(store: PgStore) -> None:
    await seed(store, "A1", "79000000001")
    await seed(store, "A2", "79000000002")
    await seed(store, "A3", "79000000003", enabled=False)
    await store.publish(
        "a",
        15,
        [live("A1", "79000000001"), live("A2", "79000000002"), live("A3", "79000000003")],
    )
    got = await allocate(store, "vk")
    assert got is not None
    iccid, activation_id = got
    now = time.time()
    # The held SIM counts for nothing; the disabled one is not on sale at all.
    assert await counts(store, now) == {"russia": {"mts": {"vk": 1, "tg": 1}}}
    await finish(store, activation_id, 3)  # sold: this number never again for vk
    assert await counts(store, now) == {"russia": {"mts": {"vk": 1, "tg": 2}}}


async def test_a_host_whose_lease_runs_out_leaves_the_counts_and_rejoins(store: PgStore) -> None:
    await seed(store, "A1", "79000000001")
    await seed(store, "B1", "79000000002")
    await store.publish("a", 30, [live("A1", "79000000001")])
    await store.publish("b", 0.5, [live("B1", "79000000002")])
    assert (await counts(store, time.time()))["russia"]["mts"]["vk"] == 2

    async def only_a() -> bool:
        return (await counts(store, time.time()))["russia"]["mts"]["vk"] == 1

    await eventually(only_a)  # b stops renewing: its SIM goes when the lease ends
    got = await allocate(store)
    assert got is not None and got[0] == "A1"
    assert await allocate(store) is None  # b's SIM is not sold
    await store.publish("b", 30, [live("B1", "79000000002")])  # b is back
    assert (await allocate(store) or ("",))[0] == "B1"


async def test_leases_are_the_servers_clock(store: PgStore) -> None:
    """A lease is ahead of the server's clock by the lease, whatever this host's clock says."""
    await store.publish("a", 15, [])
    [(lease, server)] = [
        tuple(r)
        for r in await store._fetch(
            "SELECT lease_until, extract(epoch FROM clock_timestamp())::float8 FROM hosts"
        )
    ]
    assert 14 < lease - server <= 15


# -- allocation ---------------------------------------------------------------------------------


async def test_allocation_is_least_recently_used_and_holds_the_sim(store: PgStore) -> None:
    await seed(store, "A1", "79000000001", last_used=300)
    await seed(store, "A2", "79000000002", last_used=100)
    await seed(store, "B1", "79000000003")  # never used: first
    await store.publish("a", 15, [live("A1", "79000000001"), live("A2", "79000000002")])
    await store.publish("b", 15, [live("B1", "79000000003")])
    order = [await allocate(store) for _ in range(4)]
    assert [o[0] if o else None for o in order] == ["B1", "A2", "A1", None]
    # FINISH frees the SIM at once (trigger): cancelled, it may be offered again.
    first = order[0]
    assert first is not None
    await finish(store, first[1], 4)
    again = await allocate(store)
    assert again is not None and again[0] == "B1"
    # A hold whose release_at has passed no longer holds.
    assert await allocate(store, now=time.time() + 601) is not None


async def test_allocation_honours_the_numbers_history(store: PgStore) -> None:
    await seed(store, "A1", "79000000001")
    await store.publish("a", 15, [live("A1", "79000000001")])
    # FINISH 1 on vk: never vk again, other services still.
    got = await allocate(store, "vk")
    assert got is not None
    await finish(store, got[1], 1)
    assert await allocate(store, "vk") is None
    # At most four offers in all for one service (FINISH 4 each time).
    for _ in range(4):
        got = await allocate(store, "tg")
        assert got is not None
        await finish(store, got[1], 4)
    assert await allocate(store, "tg") is None


async def test_allocation_honours_market_exclusions_and_the_operators_switch(
    store: PgStore,
) -> None:
    await seed(store, "A1", "79161234567")
    await seed(store, "A2", "79261234567")
    await seed(store, "A3", "79361234567", enabled=False)
    await store.publish(
        "a",
        15,
        [
            live("A1", "79161234567"),
            live("A2", "79261234567", operator="beeline"),
            live("A3", "79361234567"),
        ],
    )
    assert await allocate(store, operator="tele2") is None
    got = await allocate(store, operator="beeline")
    assert got is not None and got[0] == "A2"
    assert await allocate(store, exclude=("7916",)) is None  # A1 excluded, A3 disabled
    got = await allocate(store, exclude=("7926", "7936"))
    assert got is not None and got[0] == "A1"


async def test_allocation_honours_ten_thousand_prefixes(store: PgStore) -> None:
    # Barred among 10,000 prefixes of every length: a whole number (A1), a 4-digit prefix
    # (A2, B2) and a 10-digit one (B3, on another host); A3 and B1 are sold, then nothing.
    sims = {"A1": "79160000001", "A2": "79260000002", "A3": "79030000003",
            "B1": "79160000011", "B2": "79260000012", "B3": "79030000013"}  # fmt: skip
    for iccid, number in sims.items():
        await seed(store, iccid, number)
    for host in "AB":
        await store.publish(host, 15, [live(i, n) for i, n in sims.items() if i[0] == host])
    listed = prefix_set(["79160000001", "7926", "7903000001"])
    got = [await allocate(store, exclude=listed) for _ in range(3)]
    assert sorted(g[0] for g in got if g is not None) == ["A3", "B1"] and got[2] is None
    # 100 prefixes barring the same SIMs, once the holds are over: the same two.
    listed = prefix_set(["79160000001", "7926", "7903000001"], size=100)
    later = time.time() + 601
    got = [await allocate(store, "tg", exclude=listed, now=later) for _ in range(3)]
    assert sorted(g[0] for g in got if g is not None) == ["A3", "B1"] and got[2] is None


async def test_two_live_sims_with_one_number_are_neither_sold(store: PgStore) -> None:
    await seed(store, "A1", "79000000001")
    await seed(store, "B1", "79000000001")
    await store.publish("a", 15, [live("A1", "79000000001")])
    await store.publish("b", 0.3, [live("B1", "79000000001")])
    assert await allocate(store) is None
    assert await counts(store, time.time()) == {}

    async def sold() -> bool:
        return await allocate(store) is not None

    await eventually(sold)  # b is dead: its SIM no longer claims the number


async def test_concurrent_allocations_never_take_one_sim_twice(store: PgStore) -> None:
    sims = [(f"S{i:02d}", f"790000000{i:02d}") for i in range(10)]
    for iccid, number in sims:
        await seed(store, iccid, number)
    await store.publish("a", 15, [live(i, n) for i, n in sims[:5]])
    await store.publish("b", 15, [live(i, n) for i, n in sims[5:]])
    got = await asyncio.gather(*(allocate(store) for _ in range(40)))
    taken = [g[0] for g in got if g is not None]
    assert sorted(taken) == sorted(i for i, _ in sims)  # each once, none twice
    assert got.count(None) == 30


async def test_a_sim_carried_to_another_host_keeps_its_hold(store: PgStore) -> None:
    await seed(store, "X1", "79000000001")
    await store.publish("a", 15, [live("X1", "79000000001")])
    got = await allocate(store)
    assert got is not None
    await store.publish("a", 15, [], gone=["X1"])  # taken out of a's modem…
    await store.publish("b", 15, [live("X1", "79000000001")])  # …and put in b's
    assert await allocate(store) is None
    await finish(store, got[1], 4)
    assert await allocate(store) is not None


async def test_a_clean_stop_takes_the_hosts_sims_out_at_once(store: PgStore) -> None:
    await seed(store, "A1", "79000000001")
    await store.publish("a", 15, [live("A1", "79000000001")])
    await store.leave("a")
    assert await counts(store, time.time()) == {}
    assert await allocate(store) is None


# -- routing ---------------------------------------------------------------------------------


async def test_routes_from_the_shared_activations(store: PgStore) -> None:
    from supplier import shared

    await seed(store, "A1", "79000000001")
    await seed(store, "B1", "79000000002")
    await store.publish("a", 15, [live("A1", "79000000001")])
    await store.publish("b", 15, [live("B1", "79000000002")])

    async def route(number: str | None, iccid: str, now: float | None = None) -> object:
        async def op(db: object) -> object:
            return await shared.routes(db, number, iccid, time.time() if now is None else now)  # type: ignore[arg-type]

        return await store._write(op, "route")

    assert await route("79000000001", "A1") == ()  # never handed out
    first = await allocate(store)  # A1 (lower ICCID), opened "on host a"
    assert first is not None and first[0] == "A1"
    assert await route("79000000001", "A1") == (("smshub", first[1]),)
    assert await route("79000000001", "B1") == ()  # another SIM claiming the number
    assert await route(None, "A1") == ()
    assert await route("79000000001", "A1", time.time() + 86401) == ()  # older than a day
    await finish(store, first[1], 4)
    assert await route("79000000001", "A1") == ()
    # Handed out again (B1 is out of the way): the newest buyer alone.
    await store.publish("b", 15, [], whole=True)
    second = await allocate(store)
    assert second is not None and second[0] == "A1"
    assert await route("79000000001", "A1") == (("smshub", second[1]),)


async def test_what_other_hosts_did_to_a_hosts_sims(store: PgStore) -> None:
    """A host learns the activations holding its SIMs, however opened, and its numbers'
    history: its rotation must not switch out a SIM another host sold."""
    await seed(store, "A1", "79000000001")
    await seed(store, "A2", "79000000002")
    await store.publish("a", 15, [live("A1", "79000000001"), live("A2", "79000000002")])
    first = await allocate(store)  # through any host: the database is the same
    second = await allocate(store)
    assert first is not None and second is not None
    held, usage = await store.held_here("a", [], ["79000000001", "79000000002"])
    assert sorted(a.id for a in held) == sorted([first[1], second[1]])
    assert all(a.finished is None for a in held)
    assert {k: u.offers for k, u in usage.items()} == {
        ("79000000001", "vk"): 1,
        ("79000000002", "vk"): 1,
    }
    await finish(store, first[1], 3)
    # The finished one is no longer a holder; asked for by id (this host had it open),
    # it comes back finished.
    held, usage = await store.held_here("a", [first[1]], ["79000000001"])
    by_id = {a.id: a for a in held}
    assert by_id[first[1]].status == 3 and by_id[second[1]].finished is None
    assert usage[("79000000001", "vk")].blocked
    assert await store.held_here("b", [], []) == ([], {})
    # Asked without its numbers (a learn that began before this host's publish), a
    # holder still comes with its number's history: never the one without the other.
    held, usage = await store.held_here("a", [], [])
    assert [a.id for a in held] == [second[1]]
    assert set(usage) == {("79000000002", "vk")}


async def test_a_host_is_alive_since_its_lease_last_began(store: PgStore) -> None:
    async def started() -> float:
        return float((await store._fetch("SELECT started FROM hosts WHERE name = 'a'"))[0][0])

    first = (await store.publish("a", 15, [])).now
    assert (await store.publish("a", 0, [])).now > first  # renewed in time, no lease left
    assert await started() == first  # still the same run
    again = (await store.publish("a", 15, [])).now  # after its lease ran out: alive since now
    assert await started() == again > first


async def test_two_processes_renewing_one_host_name_are_found(store: PgStore) -> None:
    assert (await store.publish("a", 15, [], instance="one")).rival is None
    assert (await store.publish("a", 15, [], instance="one")).rival is None
    assert (await store.publish("a", 15, [], instance="two")).rival == "one"
    assert (await store.publish("a", 15, [], instance="one")).rival == "two"
    await store.publish("a", 0, [], instance="one")  # one's lease runs out
    assert (await store.publish("a", 15, [], instance="two")).rival is None


async def test_a_whole_publish_brings_the_planners_statistics_up_to_date(store: PgStore) -> None:
    """A fresh database reads as empty to the planner until autovacuum looks (a minute);
    after a host publishes all its SIMs the statistics count them."""
    sims = [(f"89{i:017d}", f"7900{i:07d}") for i in range(300)]
    connection = await asyncpg.connect(store.url)
    try:
        await connection.executemany(
            "INSERT INTO sims (iccid, imsi, number, country, operator, port, enabled, "
            "first_seen, last_seen) VALUES ($1, '25001', $2, 'russia', 'mts', '/dev/x', true, 0, 0)",
            sims,
        )
        await store.publish("a", 15, [live(i, n) for i, n in sims[:10]])  # not whole: no ANALYZE
        counted = "SELECT relname, reltuples FROM pg_class WHERE relname IN ('sims', 'live_sims')"
        assert all(tuples < 0 for _, tuples in await connection.fetch(counted))  # never analyzed
        await store.publish("a", 15, [live(i, n) for i, n in sims], whole=True)
        assert dict(await connection.fetch(counted)) == {"sims": 300, "live_sims": 300}
    finally:
        await connection.close()


async def test_a_released_connection_is_not_reset_by_a_round_trip(store: PgStore) -> None:
    """asyncpg's default pool reset sent `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` on every release (two to three per GET_NUMBER) to undo session state the
    store never makes. The pool's connection ends with the store's own COMMIT; a call
    that failed inside its transaction still leaves none open."""
    await seed(store, "A1", "79000000001")
    await seed(store, "A2", "79000000002")
    await store.publish("a", 15, [live("A1", "79000000001"), live("A2", "79000000002")])
    assert await allocate(store) is not None
    with pytest.raises(StoreError):  # A2 locked, then its activation cannot be written
        await store.allocate(
            # currency: no ISO 4217 code, out of the column's range
            SaleRequest("smshub", "russia", "any", "vk", sum="10", currency=2**40),
            now=time.time(),
            release_after=600.0,
        )
    connection = await asyncpg.connect(store.url)
    try:
        sessions = await connection.fetch(
            "SELECT state, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    assert sessions, "the store keeps its connection in the pool"
    for state, query in sessions:
        assert state == "idle", sessions  # not "idle in transaction": the failed call rolled back
        assert "RESET ALL" not in query and "pg_advisory_unlock_all" not in query, sessions
