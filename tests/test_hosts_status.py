"""Several hosts on the status route (supplier/hosts.py) against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from modems.emulator import VirtualModemBank
from supplier.config import Config, ConfigError, parse_config
from supplier.daemon import Daemon
from supplier.hosts_status import HostsView, remote_state
from supplier.pgstore import PgStore

from .conftest import BankFactory
from .hubkit import FakeHub, Running, make_config
from .test_status_browser import browser, expect  # noqa: F401 - the browser fixture

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


async def some_hosts(store: PgStore) -> None:
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
    await some_hosts(store)
    hosts = {h.name: h for h in await HostsView(store, "a", None).hosts()}
    assert hosts["a"].alive and 8 < hosts["a"].lease_left <= 10
    assert not hosts["b"].alive and -31 < hosts["b"].lease_left <= -30
    assert (hosts["a"].sims, hosts["a"].present) == (2, 1)
    assert (hosts["b"].sims, hosts["b"].present) == (1, 1)


async def test_every_hosts_sims_with_their_state(store: PgStore) -> None:
    await some_hosts(store)
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
    await some_hosts(store)
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
    await some_hosts(store)
    hosts = HostsView(store, "c", None)
    taken = await hosts.number_taken("8970003", "79000000000")
    assert taken is not None and (taken.iccid, taken.host) == ("8970001", "a")
    assert await hosts.number_taken("8970001", "79000000000") is None  # its own
    assert await hosts.number_taken("8970001", "79000000002") is None  # b is down


async def test_status_urls_are_published_and_withdrawn(store: PgStore) -> None:
    await some_hosts(store)
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


# -- two real daemons on one database ----------------------------------------------------

TOKEN = "status-token-123"


def host_config(
    tmp_path: Path, bank: VirtualModemBank, hub: FakeHub, url: str, name: str
) -> Config:
    return make_config(
        tmp_path,
        bank,
        {"alpha": hub},
        storage_url=url,
        host={"name": name, "lease": "2s", "renew": "0.5s"},
        status={"listen": "127.0.0.1:0", "token": TOKEN},
    )


def status_base(daemon: Daemon) -> str:
    assert daemon.running.status_listening is not None
    return f"http://127.0.0.1:{daemon.running.status_listening[1]}"


async def call(
    daemon: Daemon, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, status_base(daemon) + path, headers=headers,
            **({"json": body} if body is not None else {}),
        ) as response,
    ):  # fmt: skip
        return response.status, dict(await response.json(content_type=None))


async def applied(daemon: Daemon, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until a host's own view shows what an operator stored on another host's page."""
    hosts = daemon.running.view.hosts
    assert hosts is not None
    async with asyncio.timeout(timeout):
        while not predicate():
            await hosts.next_look()


async def publish_as(url: str, host: str, bank: VirtualModemBank, lease: float) -> None:
    """A host's lease and SIMs as its publisher writes them (left alone where it already
    has: with migration 7's publisher the daemons publish themselves)."""
    db = await asyncpg.connect(url)
    try:
        await db.execute(
            f"INSERT INTO hosts (name, lease_until, started) VALUES ($1, {NOW} + $2, {NOW}) "
            f"ON CONFLICT (name) DO UPDATE SET lease_until = {NOW} + $2",
            host,
            lease,
        )
        for modem in bank:
            assert modem.sim is not None
            await db.execute(
                "INSERT INTO live_sims (iccid, host, number, country, operator, port, present, "
                f"published) VALUES ($1, $2, $3, 'russia', $4, $5, true, {NOW}) "
                "ON CONFLICT (iccid) DO NOTHING",
                modem.sim.iccid,
                host,
                modem.sim.number,
                "mts",
                modem.link,
            )
    finally:
        await db.close()


@dataclass
class TwoHosts:
    a: Daemon
    b: Daemon
    bank_a: VirtualModemBank
    bank_b: VirtualModemBank


@pytest.fixture
async def two_hosts(tmp_path: Path, make_bank: BankFactory, pg_url: str) -> AsyncIterator[TwoHosts]:
    """Hosts `a` and `b` (real daemons, banks of 2) on one database, `b` reachable by its
    status URL; a third host `c` whose lease ran out 30 s ago, with one SIM."""
    bank_a = await make_bank(2)
    bank_b = await make_bank(2, first_index=100)
    hub = FakeHub()
    await hub.start()
    a = Daemon(host_config(tmp_path / "a", bank_a, hub, pg_url, "a"))
    b = Daemon(host_config(tmp_path / "b", bank_b, hub, pg_url, "b"))
    try:
        await a.start()
        running_a = Running(a, bank_a, {"alpha": hub})  # listening from its start: b's SIMs
        await b.start()
        running_b = Running(b, bank_b, {"alpha": hub})  # may come up while a's are awaited
        await running_a.ready(2)
        await running_b.ready(2)
        db = await asyncpg.connect(pg_url)
        try:
            await db.execute(HOSTS_DDL)
        finally:
            await db.close()
        await publish_as(pg_url, "a", bank_a, 3600)
        await publish_as(pg_url, "b", bank_b, 3600)
        await publish_as(pg_url, "c", await make_bank(1, first_index=200), -30)  # down
        b_view = b.running.view.hosts
        assert b_view is not None
        b_view.status_url = status_base(b)
        await b_view.advertise(time.time())
        yield TwoHosts(a, b, bank_a, bank_b)
    finally:
        await a.stop()
        await b.stop()
        await hub.stop()


async def test_every_hosts_page_shows_and_reaches_every_host(two_hosts: TwoHosts) -> None:
    a, b, bank_a, bank_b = two_hosts.a, two_hosts.b, two_hosts.bank_a, two_hosts.bank_b
    b_view = b.running.view.hosts
    assert b_view is not None
    # A's page: every host's SIMs with their host, and each host's liveness.
    code, sims = await call(a, "GET", "/api/sims")
    assert code == 200
    hosts_of = {row["iccid"]: (row["host"], row["state"]) for row in sims["sims"]}
    for bank, host in ((bank_a, "a"), (bank_b, "b")):
        for modem in bank:
            assert modem.sim is not None
            assert hosts_of[modem.sim.iccid] == (host, "ready")
    c_iccid = next(i for i, (h, _) in hosts_of.items() if h == "c")
    assert hosts_of[c_iccid] == ("c", "host_down")
    code, status = await call(a, "GET", "/api/status")
    assert status["host"] == "a"
    alive = {h["name"]: h["alive"] for h in status["hosts"]}
    assert alive == {"a": True, "b": True, "c": False}
    assert status["totals"]["host_down"] == 1 and status["totals"]["ready"] == 4
    b_sim = bank_b[0].sim
    assert b_sim is not None and b_sim.number is not None
    code, page = await call(a, "GET", f"/api/sims/{b_sim.iccid}")
    assert code == 200 and page["sim"]["host"] == "b" and page["host"] == "a"

    # Out of sale on A's page: stored at once, and B's own view follows.
    code, answer = await call(a, "POST", f"/api/sims/{b_sim.iccid}/sale", {"enabled": False})
    assert (code, answer) == (200, {"status": "SUCCESS", "enabled": False, "host": "b"})
    b_inventory = b.running.inventory
    await applied(b, lambda: not b_inventory.sims[b_sim.iccid].enabled)
    await call(a, "POST", f"/api/sims/{b_sim.iccid}/sale", {"enabled": True})
    await applied(b, lambda: b_inventory.sims[b_sim.iccid].enabled)

    # The number: one another host's SIM is sold under is refused; another is B's.
    a_sim = bank_a[0].sim
    assert a_sim is not None and a_sim.number is not None
    code, answer = await call(
        a, "POST", f"/api/sims/{b_sim.iccid}/number", {"number": a_sim.number}
    )
    assert code == 409 and "in host a" in answer["error"]
    code, answer = await call(
        a, "POST", f"/api/sims/{b_sim.iccid}/number", {"number": "79990001122"}
    )
    assert code == 200 and answer["host"] == "b"
    await applied(b, lambda: b_inventory.sims[b_sim.iccid].manual_number == "79990001122")

    # USSD on B's SIM from A's page: B's modem answers, through B's status route.
    code, answer = await call(a, "POST", f"/api/sims/{b_sim.iccid}/ussd", {"code": "*100#"})
    assert code == 200, answer
    assert answer["text"] == "Balans: 100.00 rub." and answer["host"] == "b"
    code, answer = await call(a, "POST", "/api/modems/reset", {"port": bank_b[1].link, "host": "b"})
    assert (code, answer) == (200, {"status": "SUCCESS", "host": "b"})

    # Where it cannot go: a host that is down, a host without a status URL.
    code, answer = await call(a, "POST", f"/api/sims/{c_iccid}/ussd", {"code": "*100#"})
    assert code == 503 and "host c is down" in answer["error"]
    b_view.status_url = status_base(a)  # a wrong URL (A's own): never forwarded twice
    await b_view.advertise(time.time())
    code, answer = await call(a, "POST", f"/api/sims/{b_sim.iccid}/ussd", {"code": "*100#"})
    assert code == 409 and "not in this host's (a) modems (forwarded from a)" in answer["error"]
    b_view.status_url = "http://127.0.0.1:1"  # nothing listens there
    await b_view.advertise(time.time())
    code, answer = await call(a, "POST", f"/api/sims/{b_sim.iccid}/ussd", {"code": "*100#"})
    assert code == 502 and "in host b's modems; http://127.0.0.1:1" in answer["error"]
    b_view.status_url = None
    await b_view.advertise(time.time())
    code, answer = await call(a, "POST", f"/api/sims/{b_sim.iccid}/ussd", {"code": "*100#"})
    assert code == 409 and "host b has no host.status_url" in answer["error"]


async def test_the_page_shows_every_host_and_its_sims(
    two_hosts: TwoHosts,
    browser: Any,  # noqa: F811 - the fixture imported above
) -> None:
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(15_000)
    await page.goto(status_base(two_hosts.a) + "/login")
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    hosts = page.locator('[data-testid="hosts"] tbody tr')
    await expect(hosts).to_have_count(3)
    await expect(page.locator('tr[data-host="b"]')).to_contain_text("alive")
    await expect(page.locator('tr[data-host="c"]')).to_contain_text("down")
    await expect(page.locator('tr[data-host="a"]')).to_contain_text("(this host)")
    b_sim = two_hosts.bank_b[0].sim
    assert b_sim is not None
    row = page.locator(f'#sims tr[data-iccid="{b_sim.iccid}"]')
    await expect(row.locator("td.hostcol")).to_have_text("b")
    await expect(row.locator("td.hostcol")).to_be_visible()  # shown with several hosts
    await expect(page.locator('[data-testid="total-host_down"] .n')).to_have_text("1")
    await page.select_option('[data-testid="state"]', "host_down")
    await expect(page.locator("#sims tbody tr")).to_have_count(1)
    await page.close()
