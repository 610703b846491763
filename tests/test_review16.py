"""Issue 16 review: several hosts on one PostgreSQL store, as a hostile hub and a careless
operator meet it. A real PostgreSQL server (tests/pg.py), real HTTP on loopback."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from supplier.errors import StoreError
from supplier.hosts import Hosts
from supplier.inventory import Inventory
from supplier.migrate import MigrateError, migrate_store
from supplier.pgstore import PgStore, probe
from supplier.protocol import ProtocolService, create_protocol_app

from .hubkit import RunFactory
from .pg import Stores, set_read_only
from .test_migrate_store import make_store
from .test_two_hosts import SERVICES, SMSHUB, Host, eventually, lease

SECRET = "s3cret-in-the-query"


def _stranger(pg_url: str) -> str:
    """`pg_url` as a role the server does not know, its password given as a query parameter
    (asyncpg and libpq accept `?password=`)."""
    return pg_url.replace("supplier@", "nobody@") + f"&password={SECRET}"


async def test_a_password_in_the_urls_query_is_never_printed(pg_url: str) -> None:
    url = _stranger(pg_url)
    with pytest.raises(StoreError) as opened:
        await PgStore.open(url, timeout=2.0)
    assert "nobody" in str(opened.value)  # the error still says what was tried…
    assert SECRET not in str(opened.value)  # …without the password
    problem = await probe(url)
    assert problem is not None and "nobody" in problem
    assert SECRET not in problem
    with pytest.raises(MigrateError) as copied:
        await migrate_store("/nonexistent/store.db", url.replace("postgresql", "mysql"))
    assert SECRET not in str(copied.value)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_database_down_is_not_one_error_line_per_hub_request(
    run: RunFactory, stores: Stores
) -> None:
    """Every GET_NUMBER fails while the database refuses writes: the hub gets ERROR each time,
    the log gets the first failure and then a count, not a line per request."""
    r = await run(modems=1)
    url = (await stores.storage()).url
    assert url is not None
    await set_read_only(url, True)
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(12):
                answer = await r.call(
                    "alpha",
                    {
                        "action": "GET_NUMBER",
                        "country": "russia",
                        "operator": "any",
                        "service": "vk",
                        "sum": 5,
                    },
                )
                assert answer == {
                    "status": "ERROR",
                    "error": "temporarily unable to record the request",
                }
            errors = [e for e in logs if e["log_level"] == "error"]
        assert len(errors) == 1, errors  # one line for the episode, not one per request
        assert errors[0]["event"].startswith("store failed during a hub request")
        assert errors[0]["action"] == "GET_NUMBER"
    finally:
        await set_read_only(url, False)
    with structlog.testing.capture_logs() as logs:
        assert (await r.number("alpha", "any"))["status"] == "SUCCESS"  # back by itself
    back = [e for e in logs if e["event"] == "hub requests served by the store again"]
    assert [e["answered_error"] for e in back] == [12]


async def test_a_host_whose_clock_is_ahead_does_not_sell_a_sim_another_host_holds(
    pg_url: str, aiohttp_client: Any
) -> None:
    """Holds end at `release_at`, the selling host's clock; another host compares it with
    its own. Host b's clock is 700 s ahead (no NTP): to b, the 600 s hold a's sale put on
    the one SIM has ended, and b would sell it again while a's buyer still waits for the
    code. b refuses to sell until its clock agrees with the database server's."""
    offset = [700.0]

    def skewed() -> float:
        return time.time() + offset[0]

    started: list[Host] = []

    async def host(name: str, clock: Callable[[], float]) -> Host:
        store = await PgStore.open(pg_url)
        inventory = Inventory(store, services=SERVICES, release_after=600.0, clock=clock)
        await inventory.load()
        hosts = inventory.hosts = Hosts(store, inventory, lease(name), wall=clock)
        hosts.start()
        client = await aiohttp_client(create_protocol_app(ProtocolService(inventory, [SMSHUB])))
        started.append(Host(name, client, inventory, hosts, store))
        return started[-1]

    try:
        a = await host("a", time.time)
        await a.add_sims(0)
        given = await a.number()
        assert given["status"] == "SUCCESS"
        with structlog.testing.capture_logs() as logs:
            b = await host("b", skewed)
            await b.hosts.caught_up()
            again = await b.number()
        assert again["status"] == "ERROR", again  # not the SIM a sold a moment ago
        assert b.hosts.clock_skew is not None and 690 < b.hosts.clock_skew < 710
        [said] = [e for e in logs if "clock is off" in e["event"]]
        assert said["log_level"] == "error"
        offset[0] = 0.0  # the clock set right: b sells again at its next renewal
        await eventually(lambda: _agrees(b))
        assert (await b.number())["status"] == "NO_NUMBERS"  # the one SIM is a's buyer's
    finally:
        for each in started:
            await each.hosts.stop(leave=False)
            await each.store.close()


async def _agrees(host: Host) -> bool:
    return host.hosts.clock_skew is None


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_an_sms_with_a_nul_character_is_stored_and_pushed(run: RunFactory) -> None:
    """Anyone can send a UCS-2 SMS holding U+0000, which PostgreSQL's text refuses: the SMS
    must still be stored and pushed (the PDU keeps it exactly), not retried from the SIM
    for ever and never delivered."""
    r = await run(1)
    hub = r.hubs["alpha"]
    await r.number("alpha", "any")
    r.bank[0].deliver("code\x004711", ucs2=True)
    await hub.wait_for(1, timeout=15)
    assert hub.received[0]["text"] == "code\ufffd4711"
    r.bank[0].deliver("code 2222")  # and the next one after it
    await hub.wait_for(2, timeout=15)
    assert hub.received[1]["text"] == "code 2222"


async def test_a_store_holding_an_sms_with_a_nul_character_is_copied(
    tmp_path: Path, pg_url: str
) -> None:
    """SQLite keeps U+0000 in an SMS's text; the copy into PostgreSQL must not be refused
    for it (a supplier could never move in)."""
    source = tmp_path / "supplier.db"
    await make_store(source, time.time())
    with sqlite3.connect(source) as db:
        db.execute(
            "UPDATE sms SET text = 'code' || char(0) || '4711' WHERE id = (SELECT MIN(id) FROM sms)"
        )
    copied = {c.table: c.rows for c in await migrate_store(source, pg_url)}
    assert copied["sms"] == 2
    db2 = await asyncpg.connect(pg_url)
    try:
        texts = await db2.fetch("SELECT text FROM sms ORDER BY id")
    finally:
        await db2.close()
    assert texts[0][0] == "code\ufffd4711"
