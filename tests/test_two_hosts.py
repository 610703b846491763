"""Two hosts, one PostgreSQL store: the hub protocol answers the same through either.

A real PostgreSQL server (tests/pg.py). First each host is its protocol
stack on loopback HTTP (Inventory + Hosts + ProtocolService, its own
connection pool), fed SIMs as pool events; then whole daemons (`Daemon`),
each with its own emulated modem bank. Leases are short (3 s, renewed every
0.3 s) so that a host's death is seen in a test's time; every wait polls
with a timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from modems.emulator import make_sim
from supplier.config import HostConfig, HubConfig
from supplier.daemon import Daemon
from supplier.hosts import COUNTS_INTERVAL, PUBLISH_POLL, Hosts
from supplier.inventory import Inventory
from supplier.pgstore import PgStore
from supplier.protocol import ProtocolService, create_protocol_app
from supplier.store import Store

from . import test_protocol as protocol_suite
from .conftest import BankFactory
from .hubkit import KEYS, Clock, FakeHub, Running, make_config, sim_ready
from .pg import Cluster, Stores
from .test_run_e2e import Process

SMSHUB = HubConfig(name="smshub", key="key-smshub-1", push_url="http://127.0.0.1:9/push")
OTHER = HubConfig(name="other", key="key-other-22", push_url="http://127.0.0.1:9/push")
SERVICES = ("vk", "ok", "wa", "tg")
# Short leases so that a death is seen in a test's time, yet a live host renewing every
# 0.3 s keeps its lease through a stall of 2.7 s on a loaded machine (default: 15 s).
LEASE = HostConfig(name="x", lease=3.0, renew=0.3)
# A dead host's SIMs are out of GET_SERVICES after its lease and one refresh of the
# counts, plus a margin for the load.
GONE_WITHIN = LEASE.lease + COUNTS_INTERVAL + 2.5


def lease(name: str) -> HostConfig:
    return LEASE.model_copy(update={"name": name})


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll until `check` holds (leases run out on the database server's clock)."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


class Host:
    """One host's protocol stack on loopback HTTP, on its own pool of connections."""

    def __init__(
        self, name: str, client: TestClient, inventory: Inventory, hosts: Hosts, store: PgStore
    ) -> None:
        self.name = name
        self.client = client
        self.inventory = inventory
        self.hosts = hosts
        self.store = store

    async def add_sims(self, *slots: int) -> None:
        for slot in slots:
            event = sim_ready(slot)
            await self.inventory.sim_ready(event.port, event.sim, event.network)
        await self.hosts.caught_up()

    async def call(self, body: dict[str, Any], key: str = "key-smshub-1") -> dict[str, Any]:
        response = await self.client.post("/", json={"key": key, **body})
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert isinstance(answer, dict)
        return answer

    async def services(self) -> dict[str, Any]:
        answer = await self.call({"action": "GET_SERVICES"})
        assert answer["status"] == "SUCCESS", answer
        return {c["country"]: c["operatorMap"] for c in answer["countryList"]}

    async def number(self, service: str = "vk", **extra: Any) -> dict[str, Any]:
        body = {
            "action": "GET_NUMBER",
            "country": "russia",
            "operator": "any",
            "service": service,
            "sum": 10,
            **extra,
        }
        return await self.call(body)

    async def finish(self, activation_id: int, status: int, key: str = "key-smshub-1") -> Any:
        return await self.call(
            {"action": "FINISH_ACTIVATION", "activationId": activation_id, "status": status}, key
        )


HostFactory = Callable[[str], Awaitable[Host]]


@pytest.fixture
async def host(pg_url: str, aiohttp_client: Any) -> AsyncIterator[HostFactory]:
    started: list[Host] = []

    async def factory(name: str) -> Host:
        store = await PgStore.open(pg_url)
        inventory = Inventory(store, services=SERVICES, release_after=600.0)
        await inventory.load()
        hosts = inventory.hosts = Hosts(store, inventory, lease(name))
        hosts.start()
        client = await aiohttp_client(
            create_protocol_app(ProtocolService(inventory, [SMSHUB, OTHER]))
        )
        started.append(Host(name, client, inventory, hosts, store))
        return started[-1]

    yield factory
    for each in started:
        await each.hosts.stop(leave=False)
        await each.store.close()


def total(services: dict[str, Any], country: str = "russia", service: str = "vk") -> int:
    return sum(counts.get(service, 0) for counts in services.get(country, {}).values())


# -- the protocol through either host ---------------------------------------------------


async def test_get_services_is_the_same_through_either_host_and_counts_both(
    host: HostFactory, tmp_path: Path
) -> None:
    a, b = await host("a"), await host("b")
    await a.add_sims(*range(8))
    await b.add_sims(*range(8, 16))
    await a.hosts.caught_up()
    # What one host with all sixteen SIMs on SQLite would answer: the same map.
    store = await Store.open(tmp_path / "one.db")
    try:
        one = Inventory(store, services=SERVICES, release_after=600.0)
        for slot in range(16):
            event = sim_ready(slot)
            await one.sim_ready(event.port, event.sim, event.network)
        expected = one.counts()
    finally:
        await store.close()
    through_a, through_b = await a.services(), await b.services()
    assert through_a == through_b
    assert through_a == expected
    assert total(through_a) == 8  # four Russian SIMs on each host


async def test_an_activation_opened_on_one_host_is_finished_through_the_other(
    host: HostFactory,
) -> None:
    a, b = await host("a"), await host("b")
    await a.add_sims(0)
    await b.add_sims(9)
    given = await a.number()
    assert given["status"] == "SUCCESS"
    activation_id = given["activationId"]
    assert (await b.finish(activation_id, 4))["status"] == "SUCCESS"
    assert (await a.finish(activation_id, 3))["status"] == "SUCCESS"  # a repeat: no effect
    stranger = await b.finish(activation_id, 4, key="key-other-22")
    assert stranger["status"] == "ERROR"  # another hub's activation
    assert (await b.finish(activation_id + 10**6, 4))["status"] == "ERROR"
    # The first FINISH stands (4: offered again), through either host.
    again = {(await a.number())["number"], (await b.number())["number"]}
    assert given["number"] in again


async def test_a_host_learns_what_another_sold_of_its_sims(host: HostFactory) -> None:
    """b's rotation and page must know that a sold b's SIM, and when a finished it."""
    a, b = await host("a"), await host("b")
    await a.add_sims(0)
    await b.add_sims(9)  # MegaFon: only b has one
    given = await a.number(operator="megafon")
    assert given["status"] == "SUCCESS"
    iccid = make_sim(9).iccid

    def held() -> Any:
        return b.inventory.holder(iccid)

    async def learned() -> bool:
        return held() is not None and held().id == given["activationId"]

    await eventually(learned)
    assert b.inventory.usage[(str(given["number"]), "vk")].offers == 1
    assert (await a.finish(given["activationId"], 3))["status"] == "SUCCESS"

    async def finished() -> bool:
        return held() is None and b.inventory.activations[given["activationId"]].status == 3

    await eventually(finished)
    assert b.inventory.usage[(str(given["number"]), "vk")].blocked


async def test_a_number_retired_on_one_host_is_not_sold_by_the_other(host: HostFactory) -> None:
    a, b = await host("a"), await host("b")
    await a.add_sims(0, 1)
    await b.add_sims(8, 9)
    retired = await b.number()
    assert (await b.finish(retired["activationId"], 3))["status"] == "SUCCESS"
    await a.hosts.recount()
    assert total(await a.services()) == 3
    sold = []
    while (answer := await a.number())["status"] == "SUCCESS":
        sold.append(answer["number"])
    assert answer["status"] == "NO_NUMBERS"
    assert len(sold) == 3 and retired["number"] not in sold
    # Retired for vk only: for tg it is the one SIM not held.
    assert (await a.number("tg"))["number"] == retired["number"]


async def test_concurrent_get_number_across_hosts_never_sells_a_sim_twice(
    host: HostFactory,
) -> None:
    a, b = await host("a"), await host("b")
    await a.add_sims(*range(8))
    await b.add_sims(*range(8, 16))
    answers = await asyncio.gather(
        *(([a, b][i % 2]).number(["vk", "tg"][i % 4 // 2]) for i in range(200))
    )
    by_service: dict[str, list[int]] = {"vk": [], "tg": []}
    for i, answer in enumerate(answers):
        assert answer["status"] in ("SUCCESS", "NO_NUMBERS"), answer
        if answer["status"] == "SUCCESS":
            by_service[["vk", "tg"][i % 4 // 2]].append(answer["number"])
    sold = by_service["vk"] + by_service["tg"]
    # Eight Russian SIMs, 200 requests: each SIM once (held until FINISH), never twice.
    assert len(sold) == len(set(sold)) == 8
    ids = [a["activationId"] for a in answers if a["status"] == "SUCCESS"]
    assert len(set(ids)) == 8
    await a.hosts.recount()
    assert total(await a.services()) == total(await b.services()) == 0


async def test_a_sim_change_is_published_within_half_a_second(host: HostFactory) -> None:
    """The publisher's own pace: no hub request, no helper pushing it along."""
    a, b = await host("a"), await host("b")
    await b.add_sims(8, 9)
    iccid = make_sim(8).iccid

    async def present() -> bool:
        rows = await a.store._fetch("SELECT present FROM live_sims WHERE iccid = $1", iccid)
        return bool(rows and rows[0][0])

    assert await present()
    changed = time.monotonic()
    b.inventory.sim_lost(iccid)  # its modem lost it: out of sale on every host

    async def withdrawn() -> bool:
        return not await present()

    await eventually(withdrawn)
    assert time.monotonic() - changed < PUBLISH_POLL + 0.3 + 0.5  # a poll, a write, the load

    async def counted_out() -> bool:
        return total(await a.services()) == 1

    await eventually(counted_out)  # and a's counts follow within a refresh


async def test_a_dead_host_leaves_the_counts_within_the_lease_and_rejoins(
    host: HostFactory,
) -> None:
    a, b = await host("a"), await host("b")
    await a.add_sims(0, 1)
    await b.add_sims(8, 9)
    await a.hosts.recount()
    assert total(await a.services()) == 4
    await b.hosts.stop(leave=False)  # b dies: no clean-up, its lease simply runs out
    died = time.monotonic()

    async def only_a() -> bool:
        return total(await a.services()) == 2

    await eventually(only_a)
    # Within the lease, plus the counts' refresh interval and a margin for the load.
    assert time.monotonic() - died < GONE_WITHIN
    numbers = {(await a.number())["number"], (await a.number())["number"]}
    assert (await a.number())["status"] == "NO_NUMBERS"  # b's SIMs are not sold either
    assert numbers == {int(make_sim(0).number or 0), int(make_sim(1).number or 0)}
    # b restarts: it publishes again and rejoins.
    b.hosts = b.inventory.hosts = Hosts(b.store, b.inventory, lease("b"))
    b.hosts.start()

    async def both() -> bool:
        return total(await a.services()) == 2  # a's two are held; b's two are back

    await eventually(both)
    assert (await a.number())["status"] == "SUCCESS"


async def test_an_unreachable_database_sells_nothing_and_resumes_by_itself(
    host: HostFactory, pg_cluster: Cluster
) -> None:
    a = await host("a")
    await a.add_sims(0, 1)
    assert total(await a.services()) == 2
    pg_cluster.stop("immediate")
    try:
        assert (await a.number())["status"] == "ERROR"

        async def nothing() -> bool:
            return await a.services() == {}

        await eventually(nothing, timeout=15)
    finally:
        pg_cluster.start()

    async def back() -> bool:
        return total(await a.services()) == 2

    await eventually(back, timeout=20)
    assert (await a.number())["status"] == "SUCCESS"


async def test_two_hosts_given_one_name_are_found(host: HostFactory) -> None:
    first, second = await host("a"), await host("a")

    async def found() -> bool:
        return first.hosts.rival == second.hosts.instance or (
            second.hosts.rival == first.hosts.instance
        )

    await eventually(found)


# -- whole daemons, each with its own modem bank ----------------------------------------


@pytest.fixture
async def daemons(
    pg_url: str, tmp_path: Path, make_bank: BankFactory
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    started: list[Daemon] = []
    hub = FakeHub()
    await hub.start()

    async def factory(name: str, first: int, modems: int = 4, bank: Any = None) -> Running:
        bank = bank or await make_bank(modems, first_index=first)
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        config = make_config(
            folder,
            bank,
            {"alpha": hub},
            storage={"url": pg_url},
            host={"name": name, "lease": f"{LEASE.lease}s", "renew": f"{LEASE.renew}s"},
        )
        daemon = Daemon(config)
        await daemon.start()
        started.append(daemon)
        running = Running(daemon, bank, {"alpha": hub})
        await running.ready(modems)  # published and counted too (hubkit)
        assert daemon.running.hosts is not None
        return running

    yield factory
    for daemon in started:
        await daemon.stop()
    await hub.stop()


async def services(running: Running) -> dict[str, Any]:
    answer = await running.call("alpha", {"action": "GET_SERVICES"})
    return {c["country"]: c["operatorMap"] for c in answer["countryList"]}


async def test_two_daemons_sell_route_and_survive_each_other(
    daemons: Callable[..., Awaitable[Running]],
) -> None:
    a = await daemons("a", 0)
    b = await daemons("b", 8)

    async def agreed(russian: int) -> bool:
        seen = await services(a)
        return seen == await services(b) and total(seen) == russian

    await eventually(lambda: agreed(8))  # slots 0-3 and 8-11: all Russian, within a second
    # b's MTS SIM (a's is excluded), handed out through a; its SMS, read by b's modem,
    # reaches the hub through b's routing from the shared activations; FINISH through b.
    mine, theirs = make_sim(0).number, make_sim(8).number
    assert mine is not None and theirs is not None
    given = await a.call(
        "alpha",
        {
            "action": "GET_NUMBER",
            "country": "russia",
            "operator": "mts",
            "service": "vk",
            "sum": 5,
            "exceptionPhoneSet": [mine],
        },
    )
    assert given["status"] == "SUCCESS" and str(given["number"]) == theirs
    modem = next(m for m in b.bank if m.sim is not None and m.sim.number == theirs)
    modem.deliver("Your code 4711")
    hub = a.hubs["alpha"]
    await hub.wait_for(1)
    assert (hub.received[0]["phone"], hub.received[0]["text"]) == (int(theirs), "Your code 4711")
    finish = {"action": "FINISH_ACTIVATION", "activationId": given["activationId"], "status": 3}
    assert (await b.call("alpha", finish))["status"] == "SUCCESS"
    await eventually(lambda: agreed(7))  # the number is retired for vk on both hosts
    # b dies (no clean-up): its publisher and its modems stop, its lease runs out.
    hosts = b.daemon.running.hosts
    assert hosts is not None
    await hosts.stop(leave=False)
    await b.daemon.running.pool.stop()
    died = time.monotonic()

    async def only_a() -> bool:
        return total(await services(a)) == 4  # b's SIMs, not a's, are gone

    await eventually(only_a)
    assert time.monotonic() - died < GONE_WITHIN
    await b.daemon.stop()
    # b again, on the same bank: it rejoins.
    b = await daemons("b", 8, bank=b.bank)

    await eventually(lambda: agreed(7))  # rejoined
    assert len(hub.received) == 1  # pushed once


async def test_two_daemons_never_sell_a_sim_twice(
    daemons: Callable[..., Awaitable[Running]],
) -> None:
    a = await daemons("a", 0)
    b = await daemons("b", 8)
    body = {"action": "GET_NUMBER", "country": "russia", "operator": "any", "sum": 5}
    answers = await asyncio.gather(
        *((a, b)[i % 2].call("alpha", {**body, "service": "vk"}) for i in range(200))
    )
    sold = [x["number"] for x in answers if x["status"] == "SUCCESS"]
    assert {x["status"] for x in answers} == {"SUCCESS", "NO_NUMBERS"}
    assert len(sold) == len(set(sold)) == 8  # every Russian SIM of both, each once
    assert len({x["activationId"] for x in answers if x["status"] == "SUCCESS"}) == 8


async def test_a_host_killed_with_sigkill_leaves_within_the_lease_and_rejoins(
    daemons: Callable[..., Awaitable[Running]],
    make_bank: BankFactory,
    pg_url: str,
    tmp_path: Path,
) -> None:
    """Host b is a real `supplier run` process; kill -9 leaves no chance of a clean-up."""
    a = await daemons("a", 0)
    bank = await make_bank(4, first_index=8)
    config = tmp_path / "b.yaml"
    config.write_text(
        f"""
server: {{listen: "127.0.0.1:0"}}
status: {{listen: "127.0.0.1:0"}}
hubs:
  - {{name: alpha, key: "{KEYS["alpha"]}", push_url: "{a.hubs["alpha"].url}"}}
modems: {{ports: ["{bank.pattern}"], health_interval: 1s}}
services: [vk, tg, wa]
storage: {{url: "{pg_url}"}}
host: {{name: b, lease: {LEASE.lease}s, renew: {LEASE.renew}s}}
"""
    )
    b = Process(config)
    try:
        await b.start()
        await b.until("SIM in inventory", 4)

        async def with_b() -> bool:
            return total(await services(a)) == 8

        async def without_b() -> bool:
            return total(await services(a)) == 4

        await eventually(with_b)
        assert await b.stop(signal.SIGKILL) == -signal.SIGKILL
        died = time.monotonic()
        await eventually(without_b)
        assert time.monotonic() - died < GONE_WITHIN
        await b.start()  # restarted (systemd would): it rejoins
        await b.until("SIM in inventory", 4)
        await eventually(with_b)
    finally:
        if b.proc is not None and b.proc.returncode is None:
            await b.stop(signal.SIGKILL)


# -- test_protocol's suite, SIMs on one host and every request through the other ------------


class CrossAgent(protocol_suite.Agent):
    """test_protocol's Agent with its SIMs on host a and every hub request through host b.

    Around each request a publishes, learns and recounts and b recounts: what the
    hosts see of each other within a second, without the wait."""

    def __init__(self, client: TestClient, a: Inventory, b: Inventory, clock: Clock) -> None:
        super().__init__(client, a, a.store, clock)
        self.a = a.hosts
        self.b = b.hosts

    async def sync(self) -> None:
        assert self.a is not None and self.b is not None
        await self.a.caught_up()
        await self.a.learn()
        await self.b.recount()

    async def add_sims(self, *slots: int, **kwargs: Any) -> None:
        await super().add_sims(*slots, **kwargs)
        await self.sync()  # some tests post through the client itself

    async def call(
        self, body: dict[str, Any], key: str | None = SMSHUB.key.get_secret_value(), **kw: Any
    ) -> dict[str, Any]:
        await self.sync()
        answer = await super().call(body, key, **kw)
        await self.sync()  # what b did, in a's memory and counts, as a test reads them next
        return answer


def _protocol_cases() -> list[Any]:
    """Every test of test_protocol that takes an agent (with its own cases, if any), but
    the parsing of malformed bodies and bad fields, which no store or host takes part in."""
    cases = []
    for name in sorted(dir(protocol_suite)):
        test = getattr(protocol_suite, name)
        if not name.startswith("test_") or name in _PARSING:
            continue
        parameters = list(inspect.signature(test).parameters)
        if parameters == ["agent"]:
            cases.append(pytest.param(name, {}, id=name))
        elif parameters[0] == "agent":
            [mark] = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
            names, values = mark.args
            for i, value in enumerate(values):
                cases.append(
                    pytest.param(name, dict(zip(names, value, strict=True)), id=f"{name}-{i}")
                )
    return cases


_PARSING = {
    "test_bad_requests_get_an_error_and_change_nothing",
    "test_malformed_bodies_get_an_error",
}


@pytest.fixture
async def cross_agent(
    pg_cluster: Cluster, tmp_path: Path, aiohttp_client: Any
) -> AsyncIterator[Callable[..., Awaitable[CrossAgent]]]:
    stores = Stores("postgresql", tmp_path, pg_cluster)
    running: list[Hosts] = []
    runs = 0

    async def factory(
        release_after: float = 1200.0,
        db: str = "agent",
        clock: Clock | None = None,
        max_body: int = 4096,
    ) -> CrossAgent:
        nonlocal runs
        for hosts in running:  # a second agent on one database: the first one's run is over
            await hosts.stop(leave=False)
        running.clear()
        runs += 1
        clock = clock or Clock()
        pair = []
        for name in ("a", "b"):
            inventory = Inventory(
                await stores.open(db),
                services=protocol_suite.SERVICES,
                release_after=release_after,
                clock=clock,
            )
            await inventory.load()
            assert isinstance(inventory.store, PgStore)
            hosts = inventory.hosts = Hosts(inventory.store, inventory, lease(f"{name}{runs}"))
            hosts.start()
            running.append(hosts)
            pair.append(inventory)
        service = ProtocolService(pair[1], [SMSHUB, protocol_suite.ONLINESIM])
        client = await aiohttp_client(create_protocol_app(service, max_body=max_body))
        return CrossAgent(client, pair[0], pair[1], clock)

    yield factory
    for hosts in running:
        await hosts.stop(leave=False)
    await stores.close()


@pytest.mark.parametrize(("name", "arguments"), _protocol_cases())
async def test_the_protocol_suite_through_the_other_host(
    name: str, arguments: dict[str, Any], cross_agent: Callable[..., Awaitable[CrossAgent]]
) -> None:
    await getattr(protocol_suite, name)(cross_agent, **arguments)


async def test_a_sim_withheld_for_a_switch_learns_a_sale_made_on_another_host(
    host: HostFactory,
) -> None:
    """The rotation withholds a SIM, then checks it is free before switching it out: with
    several hosts that check must include a sale another host has just made (its own
    view learns other hosts' sales only every second), and from then on no host sells it."""
    a, b = await host("a"), await host("b")
    await b.add_sims(9)  # MegaFon: only b has one
    iccid = make_sim(9).iccid
    given = await a.number(operator="megafon")  # sold through a, a moment before b's switch
    assert given["status"] == "SUCCESS"
    b.inventory.withhold(iccid)
    await b.hosts.confirm_withheld(iccid)
    holder = b.inventory.holder(iccid)
    assert holder is not None
    assert holder.id == given["activationId"]  # b's rotation keeps the SIM in its module
    assert (await a.finish(given["activationId"], 4))["status"] == "SUCCESS"
    await b.hosts.confirm_withheld(iccid)
    assert b.inventory.holder(iccid) is None  # free now, but withheld: nobody sells it
    assert (await a.number(operator="megafon"))["status"] == "NO_NUMBERS"
    assert (await b.number(operator="megafon"))["status"] == "NO_NUMBERS"
