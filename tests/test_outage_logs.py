"""A store that refuses writes for a while, seen from the daemon (issue 16, point 4).

The refusing store is a real SQLite database switched to `PRAGMA query_only`
(every write fails inside SQLite, as on a full disk or a read-only file); the
PostgreSQL server stopped under load is tests/test_pg_outage.py. What is
checked here is what an operator reads: one line when the episode starts, one
when it ends, never a line per request; and that nothing spins meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from modems.emulator import VirtualModemBank
from modems.emulator.ussd_commands import NUMBER_SERVICES, NumberService

from .hubkit import RunFactory
from .test_push_faults import captured_logs, set_writable
from .test_ussd_upkeep import FAST_USSD, BankRun, bank_without_numbers  # noqa: F401 - fixture

pytestmark = pytest.mark.backends  # each test on SQLite and on PostgreSQL


async def test_hub_requests_refused_by_the_store_are_logged_once_per_episode(
    run: RunFactory,
) -> None:
    r = await run(2)
    store = r.daemon.running.store
    with captured_logs() as logs:
        await set_writable(store, False)  # type: ignore[arg-type]
        answers = [await r.call("alpha", _get_number("mts")) for _ in range(5)]
        assert [a["status"] for a in answers] == ["ERROR"] * 5
        assert {a["error"] for a in answers} == {"temporarily unable to record the request"}
        await set_writable(store, True)  # type: ignore[arg-type]
        assert (await r.call("alpha", _get_number("mts")))["status"] == "SUCCESS"
        assert (await r.call("alpha", _get_number("megafon")))["status"] == "SUCCESS"
    failing = "store failed during a hub request; answering ERROR until it works"
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == [failing]
    assert errors[0]["action"] == "GET_NUMBER" and errors[0]["hub"] == "alpha"
    quiet = [e for e in logs if e["event"] == "store failed during a hub request"]
    assert [e["log_level"] for e in quiet] == ["debug"] * 4  # the other four
    [back] = [e for e in logs if e["event"] == "hub requests served by the store again"]
    assert back["log_level"] == "info" and back["answered_error"] == 5


def _get_number(operator: str) -> dict[str, Any]:
    return {
        "action": "GET_NUMBER",
        "country": "russia",
        "operator": operator,
        "service": "vk",
        "sum": 5,
    }


async def test_a_number_answer_the_store_cannot_keep_is_asked_again_later(
    bank_without_numbers: BankRun,  # noqa: F811 - the fixture imported above
) -> None:
    def prepare(bank: VirtualModemBank) -> None:
        sim = bank[0].sim
        assert sim is not None
        mts = NUMBER_SERVICES[sim.operator]
        sim.ussd = NumberService(mts.code, mts.text, delay=1.0)  # time to make the store refuse

    with captured_logs() as logs:
        r = await bank_without_numbers(1, prepare=prepare, ussd=FAST_USSD)
        store = r.daemon.running.store
        vm = r.bank[0]
        assert vm.sim is not None
        iccid = vm.sim.iccid
        await set_writable(store, False)  # type: ignore[arg-type]
        await vm.wait_until(lambda: len(vm.ussd.requests) >= 3, timeout=15)  # asked again
        times = vm.ussd.request_times
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.5  # the job's back-off (and the answer's 1 s), never at once
        await set_writable(store, True)  # type: ignore[arg-type]
        inventory = r.daemon.running.inventory
        await r.until(lambda: inventory.sims[iccid].number is not None, timeout=15)
    refused = [e for e in logs if e["event"] == "cannot store a USSD answer; asking again later"]
    assert len(refused) == 1 and refused[0]["log_level"] == "error"
    assert sum(e["event"] == "cannot store a USSD answer" for e in logs) >= 1  # at debug
    [back] = [e for e in logs if e["event"] == "USSD answers stored again"]
    assert back["log_level"] == "info"
    # The episode's end says how many answers it refused (logs.Episode, as the inbox).
    assert back["refused"] == sum(e["event"].startswith("cannot store a USSD") for e in logs)


async def test_sms_the_store_refuses_stay_on_the_sim_and_are_logged_once_per_episode(
    run: RunFactory,
) -> None:
    with captured_logs() as logs:  # before the modems bind their loggers
        r = await run(1)
        store, hub, vm = r.daemon.running.store, r.hubs["alpha"], r.bank[0]
        await r.number("alpha", "mts")
        start = len(logs)
        await set_writable(store, False)  # type: ignore[arg-type]
        texts = [f"code {n}" for n in range(3)]
        for text in texts:
            vm.deliver(text)
        quiet = "cannot store SMS"  # the inbox's later refusals, at debug
        # Every sweep (each health check here) tries them again: many refusals.
        async with asyncio.timeout(15):
            while sum(e["event"] == quiet for e in logs) < 6:
                logs.changed.clear()
                await logs.changed.wait()
        assert len(vm.stored()) == 3 and hub.received == []
        await set_writable(store, True)  # type: ignore[arg-type]
        await hub.wait_for(3)
        await vm.wait_until(lambda: not vm.stored(), timeout=5)  # deleted once stored
    assert sorted(p["text"] for p in hub.received) == texts
    episode = logs[start:]
    errors = [e["event"] for e in episode if e["log_level"] == "error"]
    assert errors == [
        "cannot store SMS; they stay on their SIMs until the store takes them",
        "SMS not accepted; kept on the SIM",
    ]
    infos = [e["event"] for e in episode if e["log_level"] == "info"]
    assert infos.count("SMS stored again") == 1 and infos.count("SMS accepted again") == 1
