"""Several hosts on the status route (supplier/hosts.py) against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from supplier.config import ConfigError, parse_config
from supplier.hosts_status import HostsView, remote_state
from supplier.pgstore import PgStore

# The layout of migration 7 (hosts, live_sims), for a branch where it is not there yet.
HOSTS_DDL = """
CREATE TABLE IF NOT EXISTS hosts (
    name text PRIMARY KEY, lease_until double precision NOT NULL,
    started double precision NOT NULL);
CREATE TABLE IF NOT EXISTS live_sims (
    iccid text PRIMARY KEY, host text NOT NULL REFERENCES hosts (name) ON DELETE CASCADE,
    number text, country text, operator text, port text, present boolean NOT NULL,
    published double precision NOT NULL, held_until double precision, holder bigint);
"""
NOW = "extract(epoch FROM clock_timestamp())::double precision"


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PgStore]:
    store = await PgStore.open(pg_url)

    async def op(db: object) -> None:
        await db.execute(HOSTS_DDL)  # type: ignore[attr-defined]

    await store._write(op, "create the hosts tables")
    try:
        yield store
    finally:
        await store.close()


async def sql(store: PgStore, statement: str, *params: object) -> None:
    async def op(db: object) -> None:
        await db.execute(statement, *params)  # type: ignore[attr-defined]

    await store._write(op, "test setup")


async def two_hosts(store: PgStore) -> None:
    """Host `a` alive (its lease 10 s ahead of the server's clock), `b` down 30 s ago."""
    await sql(
        store,
        f"INSERT INTO hosts VALUES ('a', {NOW} + 10, {NOW} - 100), ('b', {NOW} - 30, {NOW} - 900)",
    )
    for i, (iccid, host, present) in enumerate(
        [("8970001", "a", True), ("8970002", "a", False), ("8970003", "b", True)]
    ):
        await sql(
            store,
            "INSERT INTO sims (iccid, number, enabled, first_seen, last_seen) "
            "VALUES ($1, $2, true, 1, 2)",
            iccid,
            f"7900000000{i}",
        )
        await sql(
            store,
            "INSERT INTO live_sims (iccid, host, number, country, operator, port, present, "
            "published) VALUES ($1, $2, $3, 'russia', 'mts', $4, $5, 5)",
            iccid,
            host,
            f"7900000000{i}",
            f"/dev/ttyUSB{i}",
            present,
        )


async def test_liveness_is_the_lease_on_the_servers_clock(store: PgStore) -> None:
    await two_hosts(store)
    hosts = {h.name: h for h in await HostsView(store, "a", None).hosts()}
    assert hosts["a"].alive and 8 < hosts["a"].lease_left <= 10
    assert not hosts["b"].alive and -31 < hosts["b"].lease_left <= -30
    assert (hosts["a"].sims, hosts["a"].present) == (2, 1)
    assert (hosts["b"].sims, hosts["b"].present) == (1, 1)


async def test_every_hosts_sims_with_their_state(store: PgStore) -> None:
    await two_hosts(store)
    hosts = HostsView(store, "c", None)
    sims = await hosts.live_sims()
    assert {i: s.host for i, s in sims.items()} == {"8970001": "a", "8970002": "a", "8970003": "b"}
    assert [remote_state(sims[i], 100.0) for i in sorted(sims)] == [
        "ready",
        "not_ready",
        "host_down",  # present, but its host's lease ran out: nobody sells it
    ]
    # Out of sale wins over present; a hold that has not run out makes it active.
    assert await hosts.set_enabled("8970001", False)
    assert remote_state((await hosts.live_sims())["8970001"], 100.0) == "disabled"
    await hosts.set_enabled("8970001", True)
    await sql(store, "UPDATE live_sims SET held_until = 200, holder = 1 WHERE iccid = '8970001'")
    sim = (await hosts.live_sims())["8970001"]
    assert remote_state(sim, 100.0) == "active"
    assert remote_state(sim, 300.0) == "ready"  # the hold ran out without a FINISH


async def test_operator_changes_are_stored_for_the_owning_host(store: PgStore) -> None:
    await two_hosts(store)
    page = HostsView(store, "c", None)  # the host whose page the operator uses
    owner = HostsView(store, "a", None)
    assert await page.set_enabled("8970002", False)
    assert await page.set_number("8970002", "79005550000")
    assert not await page.set_enabled("0000000", False)  # no such SIM
    assert await owner.operator_settings(["8970001", "8970002", "0000000"]) == {
        "8970001": (True, None),
        "8970002": (False, "79005550000"),
    }


async def test_a_number_is_taken_only_by_a_live_hosts_sim(store: PgStore) -> None:
    await two_hosts(store)
    hosts = HostsView(store, "c", None)
    taken = await hosts.number_taken("8970003", "79000000000")
    assert taken is not None and (taken.iccid, taken.host) == ("8970001", "a")
    assert await hosts.number_taken("8970001", "79000000000") is None  # its own
    assert await hosts.number_taken("8970001", "79000000002") is None  # b is down


async def test_status_urls_are_published_and_withdrawn(store: PgStore) -> None:
    await two_hosts(store)
    a = HostsView(store, "a", "http://10.0.0.11:8001")
    await a.advertise(1.0)
    await a.advertise(2.0)  # unchanged: once is enough
    assert await HostsView(store, "b", None).status_url_of("a") == "http://10.0.0.11:8001"
    assert {h.name: h.status_url for h in await a.hosts()} == {
        "a": "http://10.0.0.11:8001",
        "b": None,
    }
    a.status_url = None
    await a.advertise(3.0)
    assert await a.status_url_of("a") is None


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("http://10.0.0.11:8001", "http://10.0.0.11:8001"),
        ("https://a.example:8443/", "https://a.example:8443"),
        ("10.0.0.11:8001", None),
        ("http://10.0.0.11:8001/status", None),
        ("ftp://a", None),
    ],
)
def test_host_status_url_is_a_base_url(value: str, ok: str | None) -> None:
    hub = {"name": "smshub", "key": "0123456789abcdef", "push_url": "https://hub.example/api"}
    raw = {"hubs": [hub], "host": {"name": "a", "status_url": value}}
    if ok is not None:
        assert parse_config(raw).host.status_url == ok
    else:
        with pytest.raises(ConfigError, match=r"host\.status_url: .*expected the status route"):
            parse_config(raw)
