"""GET_NUMBER's index of sellable SIMs gives what the scan of every SIM gave.

Issue 17: GET_NUMBER and GET_SERVICES read an index kept up to date by
every change of state, instead of looking at every SIM. Hypothesis drives
an inventory on a real store (SQLite, and PostgreSQL with fewer examples:
each one is a database round trip per step) through random sequences of modem
events, operator actions, GET_NUMBERs, FINISHes and the passing of time,
and after every step compares the pick for every request and the counts
with the scan the inventory used before (kept here as the reference).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import supplier
from modems.events import NetworkInfo
from supplier.backend import StoreBackend
from supplier.inventory import Inventory, NumberTaken, SimState
from supplier.networks import ANY
from supplier.pgstore import PgStore
from supplier.sale import Prefixes, SaleRequest
from supplier.store import FinishStatus, Store

from .hubkit import Clock, sim_ready

SERVICES = ("vk", "ok", "wa", "tg")
# The emulator's SIM scheme: 0 and 8 Russia/MTS, 1 and 9 Russia/MegaFon, 4 Ukraine, 6 Kazakhstan.
SLOTS = (0, 8, 1, 9, 4, 6)
PORTS = 4  # fewer ports than SIMs: a SIM coming up takes another one's modem
# A whole number, and a prefix longer than any number (it bars none), too.
PREFIXES = (
    (), ("7",), ("79",), ("7926", "380"), ("380",), ("234803",), ("79150000000", "7926000000199")
)  # fmt: skip
RELEASE_AFTER = 600.0


# -- the reference: the scan GET_NUMBER and GET_SERVICES did before the index --------------


def scan_pick(
    inventory: Inventory, country: str, operator: str, service: str, exclude: tuple[str, ...]
) -> SimState | None:
    now = inventory.clock()
    found = []
    for sim in inventory.sims.values():
        if sim.country != country or operator not in (ANY, sim.operator):
            continue
        if not inventory.present(sim) or not inventory.free(sim, now):
            continue
        assert sim.number is not None
        if exclude and sim.number.startswith(exclude):
            continue
        if inventory.allows(sim.number, service):
            found.append(sim)
    return min(found, key=lambda s: (s.last_used or 0.0, s.iccid)) if found else None


def scan_counts(inventory: Inventory) -> dict[str, dict[str, dict[str, int]]]:
    now = inventory.clock()
    out: dict[str, dict[str, dict[str, int]]] = {}
    for sim in inventory.sims.values():
        if not inventory.present(sim):
            continue
        assert sim.country is not None and sim.number is not None
        services = out.setdefault(sim.country, {}).setdefault(
            sim.operator, dict.fromkeys(inventory.services, 0)
        )
        if inventory.free(sim, now):
            for service in inventory.services:
                services[service] += inventory.allows(sim.number, service)
    return out


def check(inventory: Inventory) -> None:
    assert inventory.counts() == scan_counts(inventory)
    requests = {(s.country, op) for s in inventory.sims.values() for op in (ANY, s.operator)}
    for country, operator in requests:
        if country is None:
            continue
        for service in inventory.services:  # GET_NUMBER answers NO_NUMBERS for others
            for exclude in PREFIXES:
                expected = scan_pick(inventory, country, operator, service, exclude)
                got = inventory.pick(country, operator, service, Prefixes.of(exclude))
                assert got is expected, (country, operator, service, exclude)


# -- random histories ------------------------------------------------------------------

slots = st.sampled_from(SLOTS)
steps = st.one_of(
    st.tuples(st.just("ready"), slots, st.integers(0, PORTS - 1), st.booleans(), st.booleans()),
    st.tuples(st.just("lost"), slots),
    st.tuples(st.just("network"), slots, st.booleans()),
    st.tuples(st.just("gone"), st.integers(0, PORTS - 1)),
    st.tuples(st.just("enable"), slots, st.booleans()),
    # Slot 0's and slot 1's numbers: an operator's number another SIM has is refused.
    st.tuples(st.just("number"), slots, st.sampled_from([None, "79150000000", "79260000001"])),
    # A number learned by USSD is never refused: two SIMs claiming one are both held back.
    st.tuples(st.just("learned"), slots, st.sampled_from(["79150000000", "79260000001"])),
    # A SIM bank withholds a SIM about to be switched out of its module, then gives it back.
    st.tuples(st.just("withhold"), slots, st.booleans()),
    st.tuples(
        st.just("get"),
        st.sampled_from(["russia", "ukraine", "kazakhstan"]),
        st.sampled_from([ANY, "mts", "megafon", "beeline", "kyivstar"]),
        st.sampled_from(SERVICES),
        st.sampled_from(PREFIXES),
    ),
    st.tuples(st.just("finish"), st.integers(0, 30), st.sampled_from(list(FinishStatus))),
    st.tuples(st.just("time"), st.sampled_from([1.0, 60.0, RELEASE_AFTER, 3600.0])),
    st.tuples(st.just("services"), st.sampled_from([SERVICES, SERVICES[:2], ("tg", "vk")])),
)


async def empty_store(pg_url: str | None) -> StoreBackend:
    """SQLite in memory, or the PostgreSQL database at `pg_url` emptied (one per example)."""
    if pg_url is None:
        return await Store.open(":memory:")
    store = await PgStore.open(pg_url)
    connection = await asyncpg.connect(pg_url)
    try:
        await connection.execute("TRUNCATE sims, activations, usage")
    finally:
        await connection.close()
    return store


async def replay(history: list[tuple[Any, ...]], pg_url: str | None = None) -> None:
    clock = Clock()
    store = await empty_store(pg_url)
    try:
        inventory = Inventory(store, services=SERVICES, release_after=RELEASE_AFTER, clock=clock)
        await inventory.load()
        opened: list[int] = []
        for step in history:
            kind = step[0]
            if kind == "ready":
                _, slot, port, registered, with_number = step
                event = sim_ready(
                    slot, port=f"/dev/p{port}", number=with_number, registered=registered
                )
                await inventory.sim_ready(event.port, event.sim, event.network)
            elif kind == "lost":
                inventory.sim_lost(sim_ready(step[1]).sim.iccid)
            elif kind == "network":
                network = NetworkInfo(1 if step[2] else 0, "x", 10)
                inventory.network_changed(sim_ready(step[1]).sim.iccid, network)
            elif kind == "gone":
                inventory.modem_gone(f"/dev/p{step[1]}")
            elif kind == "enable":
                await inventory.set_enabled(sim_ready(step[1]).sim.iccid, step[2])
            elif kind == "number":
                with contextlib.suppress(NumberTaken):
                    await inventory.set_number(sim_ready(step[1]).sim.iccid, step[2])
            elif kind == "learned":
                inventory.learned_number(sim_ready(step[1]).sim.iccid, step[2])
            elif kind == "withhold":
                inventory.withhold(sim_ready(step[1]).sim.iccid, step[2])
            elif kind == "get":
                _, country, operator, service, exclude = step
                expected = scan_pick(inventory, country, operator, service, exclude)
                activation = await inventory.get_number(
                    SaleRequest(
                        "alpha", country, operator, service, sum="1", exclude=Prefixes.of(exclude)
                    )
                )
                if service not in inventory.services:
                    assert activation is None
                else:
                    got = None if activation is None else activation.iccid
                    assert got == (expected.iccid if expected else None)
                if activation is not None:
                    opened.append(activation.id)
            elif kind == "finish":
                if opened:
                    await inventory.finish("alpha", opened[step[1] % len(opened)], step[2])
            elif kind == "time":
                clock.advance(step[1])
            elif kind == "services":
                inventory.reconfigure(
                    services=step[1],
                    release_after=RELEASE_AFTER,
                    sim_overrides={},
                    network_overrides={},
                )
            check(inventory)
    finally:
        await store.close()


READY_0 = ("ready", 0, 0, True, True)
READY_8 = ("ready", 8, 1, True, True)
SHARED = ("number", 8, "79150000000")  # slot 0's number for slot 8: refused (NumberTaken)
GET = ("get", "russia", "mts", "vk", ())


@example(history=[READY_0, GET, ("time", RELEASE_AFTER)])  # a hold ends exactly now
@example(  # two SIMs told one number are both held back; when one gets another, the other sells
    history=[
        ("ready", 0, 0, True, False),
        ("ready", 8, 1, True, False),
        ("learned", 0, "79150000000"),
        ("learned", 8, "79150000000"),
        ("number", 0, "79260000001"),
    ]
)
@example(history=[READY_0, READY_8, SHARED, GET, ("finish", 0, FinishStatus.SOLD)])
@example(history=[READY_0, READY_8, SHARED] + [GET, ("time", RELEASE_AFTER)] * 3 + [GET])
@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(history=st.lists(steps, min_size=1, max_size=40))
def test_the_index_picks_and_counts_as_the_scan_did(history: list[tuple[Any, ...]]) -> None:
    asyncio.run(replay(history))


@example(history=[READY_0, READY_8, SHARED, GET, ("finish", 0, FinishStatus.SOLD)])
@example(history=[READY_0, READY_8, SHARED] + [GET, ("time", RELEASE_AFTER)] * 3 + [GET])
@settings(
    max_examples=100,
    deadline=None,
    # One database for every example: each starts by emptying it.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(history=st.lists(steps, min_size=1, max_size=40))
def test_the_index_picks_and_counts_as_the_scan_did_on_postgresql(
    pg_url: str, history: list[tuple[Any, ...]]
) -> None:
    asyncio.run(replay(history, pg_url))


def test_a_get_number_costs_the_same_at_64_and_at_1024_sims() -> None:
    """No scan: one GET_NUMBER's choice does not grow with the bank.

    Counted, not timed (a timing is the machine's load as much as the code's):
    the lines of `supplier` code run for 400 picks, each SIM picked going to
    the back of the line as a GET_NUMBER and its FINISH 4 do. A scan runs a
    line per candidate, 16 times more at 1024 SIMs than at 64.
    """
    supplier_dir = str(Path(supplier.__file__).parent)

    async def lines_per_pick(count: int) -> float:
        store = await Store.open(":memory:")
        try:
            inventory = Inventory(store, services=SERVICES, release_after=RELEASE_AFTER)
            for slot in range(count):
                event = sim_ready(slot)
                await inventory.sim_ready(event.port, event.sim, event.network)
            lines = 0

            def trace(frame: FrameType, event: str, arg: object) -> Any:
                nonlocal lines
                if not frame.f_code.co_filename.startswith(supplier_dir):
                    return None
                if event == "line":
                    lines += 1
                return trace

            sys.settrace(trace)
            try:
                for _ in range(400):
                    sim = inventory.pick("russia", ANY, "vk")
                    assert sim is not None
                    sim.last_used = (sim.last_used or 0.0) + 1.0 + count
                    inventory._restock(sim)
            finally:
                sys.settrace(None)
            return lines / 400
        finally:
            await store.close()

    small = asyncio.run(lines_per_pick(64))
    large = asyncio.run(lines_per_pick(1024))
    assert small > 5  # the tracer saw the inventory's code
    # The heap index: the same few lines whatever the bank (a scan: 16 times more).
    assert large < 1.5 * small, (small, large)


@given(
    st.lists(st.text("0123456789", min_size=1, max_size=15), max_size=40),
    st.lists(st.text("0123456789", min_size=1, max_size=15), min_size=1, max_size=40),
)
@example(["7915", "79150000000123"], ["79150000000", "7915"])
@example(["791500"], ["7915"])  # a number shorter than the prefix is not under it
def test_prefixes_bar_what_startswith_bars(prefixes: list[str], numbers: list[str]) -> None:
    # exceptionPhoneSet's matching: one set lookup per length gives str.startswith's answer.
    barred = Prefixes.of(prefixes)
    assert bool(barred) == bool(prefixes)
    for number in numbers:
        assert barred.bar(number) == number.startswith(tuple(prefixes))
