"""The switch mechanism and the emulated SIM bank, over ptys (modem layer only)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from modems.emulator.simbank import SimBank
from modems.events import SimLost, SimReady
from modems.modem import Modem
from modems.switching import ModuleSimSwitch, PoolBoardSwitch, SwitchError, SwitchResult

from .conftest import FAST, Recorder

SimBankFactory = Callable[..., Awaitable[SimBank]]


@pytest.fixture
async def simbank(tmp_path: Path) -> AsyncIterator[SimBankFactory]:
    banks: list[SimBank] = []

    async def factory(modules: int = 2, slots: int = 4, **kwargs: object) -> SimBank:
        bank = SimBank(str(tmp_path / f"pool{len(banks)}"), modules, slots, **kwargs)  # type: ignore[arg-type]
        await bank.start()
        banks.append(bank)
        return bank

    yield factory
    for bank in banks:
        bank.stop()


async def test_board_answering_ok_moves_the_sim(simbank: SimBankFactory) -> None:
    bank = await simbank()
    board = PoolBoardSwitch(bank.control.link, answer_timeout=0.3)
    try:
        assert await board.switch(2, 3) == SwitchResult.ANSWERED
    finally:
        await board.close()
    assert bank.switches == [(2, 3)]
    assert bank.control.commands == ["AT+SWIT02-0003"]
    await bank.modules[2].wait_until(lambda: bank.modules[2].sim is bank.sims[(2, 3)], 2.0)


async def test_silent_board_is_not_a_failure(simbank: SimBankFactory) -> None:
    bank = await simbank(answer="silent")
    board = PoolBoardSwitch(bank.control.link, answer_timeout=0.2)
    try:
        assert await board.switch(1, 2) == SwitchResult.SILENT
        assert await board.switch(1, 3) == SwitchResult.SILENT  # the channel stays usable
    finally:
        await board.close()
    assert bank.switches == [(1, 2), (1, 3)]


async def test_unplugged_control_port_fails_then_recovers(simbank: SimBankFactory) -> None:
    bank = await simbank()
    board = PoolBoardSwitch(bank.control.link, answer_timeout=0.3)
    try:
        await board.switch(1, 2)
        bank.control.unplug()
        with pytest.raises(SwitchError):
            await board.switch(1, 3)
        bank.control.replug()
        assert await board.switch(1, 3) == SwitchResult.ANSWERED
    finally:
        await board.close()
    assert bank.switches == [(1, 2), (1, 3)]


async def test_module_reports_new_iccid_after_switch(simbank: SimBankFactory) -> None:
    """The modem sees NOT READY → READY and identifies the new SIM; a failing slot keeps the old."""
    bank = await simbank(fail_slots=frozenset({(1, 4)}))
    recorder = Recorder()
    modem = Modem(bank.modules[1].link, recorder, FAST)
    modem.start()
    board = PoolBoardSwitch(bank.control.link, answer_timeout=0.3)
    try:
        first = bank.sims[(1, 1)]
        second = bank.sims[(1, 2)]
        assert first is not None and second is not None
        await recorder.wait_for(lambda: modem.sim is not None and modem.sim.iccid == first.iccid)
        await board.switch(1, 2)
        await recorder.wait_for(lambda: modem.sim is not None and modem.sim.iccid == second.iccid)
        lost = [e for e in recorder.of(SimLost) if isinstance(e, SimLost)]
        assert [e.iccid for e in lost] == [first.iccid]
        # A switch that does not take: the module keeps its SIM.
        await board.switch(1, 4)
        assert bank.modules[1].sim is second
    finally:
        await board.close()
        await modem.stop()
    ready = [e.sim.iccid for e in recorder.of(SimReady) if isinstance(e, SimReady)]
    assert ready == [first.iccid, second.iccid]


async def test_network_holds_sms_for_an_absent_sim(simbank: SimBankFactory) -> None:
    bank = await simbank(modules=1, slots=2)
    away = bank.sims[(1, 2)]
    assert away is not None and away.number is not None
    assert bank.send_sms(away.number, "code 1111")
    assert len(bank.held[away.iccid]) == 1
    assert not bank.send_sms("999", "nobody")
    bank.switch(1, 2)
    module = bank.modules[1]
    await module.wait_until(lambda: len(away.sm) == 1, 2.0)
    assert away.iccid not in bank.held


async def test_held_sms_expire(simbank: SimBankFactory) -> None:
    bank = await simbank(modules=1, slots=2, sms_expiry=0.0)
    away = bank.sims[(1, 2)]
    assert away is not None and away.number is not None
    bank.send_sms(away.number, "too late")
    bank.switch(1, 2)
    module = bank.modules[1]
    await module.wait_until(lambda: module.sim is away and module.registration == 1, 2.0)
    assert bank.expired == 1
    assert away.sm == {}


async def test_stuck_module_never_comes_back(simbank: SimBankFactory) -> None:
    bank = await simbank(modules=1, slots=2)
    bank.stuck.add(1)
    bank.switch(1, 2)
    await bank.modules[1].wait_until(lambda: bank.modules[1].hung, 2.0)
    assert bank.modules[1].sim is None


async def test_module_sim_switch_sends_qdsim(simbank: SimBankFactory) -> None:
    """The second mechanism: a module command given in the modem's own turn."""
    bank = await simbank(modules=1, slots=1)
    recorder = Recorder()
    modem = Modem(bank.modules[1].link, recorder, FAST)
    modem.start()

    async def send(module: int, command: str) -> None:
        assert module == 1
        await modem.command(command, timeout=2.0)

    try:
        await recorder.wait_for(lambda: modem.ready)
        switch = ModuleSimSwitch(send)
        # The generic emulated module does not know AT+QDSIM: an error, not a hang.
        with pytest.raises(SwitchError, match="QDSIM=1"):
            await switch.switch(1, 2)
    finally:
        await modem.stop()
    assert "AT+QDSIM=1" in bank.modules[1].commands
