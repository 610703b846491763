"""A modem that answers is a modem; a modem that stops answering leaves sale at once.

Issue 11, points 7 and 8, through the real path: emulated modems on ptys,
the real serial code, and for sellability the daemon answering GET_SERVICES
and GET_NUMBER over loopback HTTP.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from modems.events import ModemState, ModemStateChanged, PoolEvent, SimLost, SimReady
from supplier.daemon import Daemon

from .conftest import FAST, BankFactory, RunFactory
from .hubkit import FakeHub, Running, make_config

BUSY = "+CME ERROR: 14"  # SIM busy: Qualcomm-based modems for seconds after power-up


async def test_errors_at_power_up_are_an_answer_not_a_missing_modem(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(8)
    for i, vm in enumerate(bank):
        vm.power_up_errors = (BUSY,) * 3 if i % 2 else ("ERROR",) * 3
        vm.unplug()
        vm.replug()  # power-cycled: the errors come first
    # The real re-probe interval for a port that is not a modem: a minute.
    settings = dataclasses.replace(FAST, not_modem_retry=60.0)
    started = time.monotonic()
    pool, recorder = await pool_of(bank, settings)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 8, timeout=20)
    assert time.monotonic() - started < 20
    states = [e.state for e in recorder.of(ModemStateChanged)]  # type: ignore[attr-defined]
    assert ModemState.NOT_MODEM not in states
    assert all(not vm.power_up_errors or vm.command_count > 3 for vm in bank)


async def test_every_sim_is_sellable_within_20_s_of_start_despite_busy_answers(
    make_bank: BankFactory, tmp_path: Path
) -> None:
    bank = await make_bank(4)
    for vm in bank:
        vm.power_up_errors = (BUSY,) * 3
        vm.unplug()
        vm.replug()
    hub = FakeHub()
    await hub.start()
    daemon = Daemon(make_config(tmp_path, bank, {"alpha": hub}))
    started = time.monotonic()
    await daemon.start()
    try:
        running = Running(daemon, bank, {"alpha": hub})
        await running.ready(4)  # within Running.until's 15 s
        services = await running.call("alpha", {"action": "GET_SERVICES"})
        russia = {c["country"]: c["operatorMap"] for c in services["countryList"]}["russia"]
        assert russia == {
            op: {"vk": 1, "tg": 1, "wa": 1} for op in ("mts", "megafon", "beeline", "tele2")
        }
        assert time.monotonic() - started < 20
    finally:
        await daemon.stop()
        await hub.stop()


async def test_a_hung_modem_leaves_sale_at_the_first_timeout_and_comes_back(
    run: RunFactory,
) -> None:
    r = await run(4)
    vm = r.bank[1]  # the MegaFon SIM
    assert vm.sim is not None and r.daemon.running.pool is not None
    modem = r.daemon.running.pool.get(vm.link)
    assert modem is not None
    timeouts_at_loss: list[int] = []

    def watch(event: PoolEvent) -> None:
        if isinstance(event, SimLost) and event.port == vm.link:
            timeouts_at_loss.append(modem.timeouts)

    r.daemon.subscribe(watch)
    before = modem.timeouts
    vm.hang()
    await r.until(lambda: bool(timeouts_at_loss), timeout=10)
    # Out of sale at the first unanswered command, not after `hang_after` of them.
    assert timeouts_at_loss[0] == before + 1
    answer = await r.call("alpha", _get_number("megafon"))
    assert answer["status"] == "NO_NUMBERS", answer
    seen = len(r.events)
    vm.unhang()
    await r.until(
        lambda: any(isinstance(e, SimReady) and e.port == vm.link for e in r.events[seen:]),
        timeout=10,
    )
    answer = await r.number("alpha", "megafon")
    assert answer["number"] == int(vm.sim.number or 0)


def _get_number(operator: str) -> dict[str, Any]:
    return {
        "action": "GET_NUMBER",
        "country": "russia",
        "operator": operator,
        "service": "vk",
        "sum": 5,
    }
