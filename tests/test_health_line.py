"""A ready modem's health check is one command line, `AT+CSQ;+CREG?;+CPIN?`
(issue 17: at 512 modems, three exchanges per check every 10 s were most of the
idle daemon's CPU), and a periodic sweep of an empty storage is one too,
`AT+CMGL=4;+CPMS?`. They read what the commands alone read; a SIM that is
not ready in the answer, or a modem that refuses such lines, gets the commands
one at a time. Real emulated modems on ptys, the real serial path."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from modems.codes import RegStatus
from modems.emulator import VirtualModem
from modems.events import ModemState, NetworkChanged, SimLost
from modems.modem import HEALTH_LINE
from modems.pool import ModemPool

from .conftest import FAST, BankFactory, Recorder
from .test_push_faults import captured_logs

ALONE = ("AT+CSQ", "AT+CREG?", "AT+CPIN?")
SWEEP_LINE = "AT+CMGL=4;+CPMS?"
PoolOf = Callable[..., Awaitable[tuple[ModemPool, Recorder]]]


async def _heard(vm: VirtualModem, predicate: Callable[[list[str]], bool], since: int) -> None:
    """Wait (under a timeout) until the lines the modem heard after `since` satisfy it."""
    await vm.wait_until(lambda: predicate(vm.commands[since:]), timeout=10)


async def test_a_ready_modems_health_check_is_one_line(
    make_bank: BankFactory, pool_of: PoolOf
) -> None:
    # Wavecom ends `+CPIN: READY` without OK: the line's grace completes it.
    bank = await make_bank(3, profiles=("generic", "huawei", "wavecom"))
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 3, timeout=20)
    for vm in bank:
        await _heard(vm, lambda lines: HEALTH_LINE in lines, 0)
        since = len(vm.commands)
        await _heard(vm, lambda lines: lines.count(HEALTH_LINE) >= 5, since)
        heard = vm.commands[since:]
        assert not [line for line in heard if line in ALONE], heard
        modem = pool.get(vm.link)
        assert modem is not None and modem.state is ModemState.READY
        assert modem.timeouts == 0  # no line waited for a final it never got
    assert not recorder.of(SimLost)


async def test_the_line_reads_signal_and_registration(
    make_bank: BankFactory, pool_of: PoolOf
) -> None:
    bank = await make_bank(1, profiles=("generic",))
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 1, timeout=20)
    vm = bank[0]
    await _heard(vm, lambda lines: HEALTH_LINE in lines, 0)

    def latest() -> NetworkChanged | None:
        changes = recorder.of(NetworkChanged)
        return changes[-1] if changes else None  # type: ignore[return-value]

    vm.rssi = 5
    await recorder.wait_for(lambda: (c := latest()) is not None and c.network.rssi == 5)
    vm.registration = RegStatus.ROAMING
    await recorder.wait_for(lambda: (c := latest()) is not None and c.network.registration == 5)
    change = latest()
    assert change is not None and change.network.operator == vm.sim.operator  # type: ignore[union-attr]
    modem = pool.get(vm.link)
    assert modem is not None and modem.network == change.network


async def test_a_sim_gone_in_the_lines_answer_is_found_by_the_commands_alone(
    make_bank: BankFactory, pool_of: PoolOf
) -> None:
    # Wavecom announces nothing when its SIM goes: only the health check sees it.
    bank = await make_bank(1, profiles=("wavecom",))
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 1, timeout=20)
    vm = bank[0]
    await _heard(vm, lambda lines: HEALTH_LINE in lines, 0)
    since = len(vm.commands)
    old = vm.remove_sim()
    await recorder.wait_for(lambda: not recorder.ready_ports(), timeout=10)
    lost = recorder.of(SimLost)
    assert [e.iccid for e in lost] == [old.iccid] if old else False  # type: ignore[attr-defined]
    heard = vm.commands[since:]
    # The line answered +CME ERROR (SIM not inserted); AT+CPIN? alone said what it was.
    assert HEALTH_LINE in heard and "AT+CPIN?" in heard[heard.index(HEALTH_LINE) :]
    modem = pool.get(vm.link)
    assert modem is not None and modem.state is ModemState.NO_SIM


async def test_a_modem_that_refuses_the_line_is_asked_one_command_at_a_time(
    make_bank: BankFactory, pool_of: PoolOf
) -> None:
    bank = await make_bank(1, profiles=("generic",))
    vm = bank[0]
    vm.concatenation = False  # old firmware: a line of several commands is ERROR
    settings = dataclasses.replace(FAST, health_interval=0.1)
    with captured_logs() as logs:
        pool, recorder = await pool_of(bank, settings)
        await recorder.wait_for(lambda: len(recorder.ready_ports()) == 1, timeout=20)
        await _heard(vm, lambda lines: lines.count(HEALTH_LINE) >= 3, 0)
        since = len(vm.commands)
        # Five checks later, each one command at a time, and the line never again.
        await _heard(vm, lambda lines: lines.count("AT+CPIN?") >= 5, since)
    assert vm.commands.count(HEALTH_LINE) == 3
    assert all(line in vm.commands[since:] for line in ALONE)
    refused = [e for e in logs if e["event"].startswith("health check on one line refused")]
    assert len(refused) == 1
    modem = pool.get(vm.link)
    assert modem is not None and modem.state is ModemState.READY
    assert not recorder.of(SimLost)  # the refusals never took the SIM out of sale


async def test_a_sweep_is_one_line_and_usage_follows_what_it_read(
    make_bank: BankFactory, pool_of: PoolOf
) -> None:
    bank = await make_bank(1, profiles=("generic",))
    vm = bank[0]
    settings = dataclasses.replace(FAST, sweep_interval=0.3)
    pool, recorder = await pool_of(bank, settings)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 1, timeout=20)
    modem = pool.get(vm.link)
    assert modem is not None
    await _heard(vm, lambda lines: SWEEP_LINE in lines, 0)
    since = len(vm.commands)
    await _heard(vm, lambda lines: lines.count(SWEEP_LINE) >= 3, since)
    assert "AT+CPMS?" not in vm.commands[since:]  # an empty storage: its usage came along
    assert (modem.storage_used, modem.storage_total) == (0, vm.profile.capacity)
    # Messages that came while nobody listened (no +CMTI): the next sweep reads them all;
    # the usage its line reported is from before the deletes, so it is asked again.
    stored = vm.fill_storage()
    await recorder.wait_for(lambda: len(recorder.sms()) == stored, timeout=10)
    await _heard(vm, lambda lines: "AT+CPMS?" in lines, since)
    await recorder.wait_for(lambda: modem.storage_used == 0, timeout=5)
    assert not vm.stored()


async def test_a_modem_that_refuses_lines_still_has_its_storage_swept(
    make_bank: BankFactory, pool_of: PoolOf
) -> None:
    bank = await make_bank(1, profiles=("generic",))
    vm = bank[0]
    vm.concatenation = False
    settings = dataclasses.replace(FAST, sweep_interval=0.3)
    _, recorder = await pool_of(bank, settings)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 1, timeout=20)
    stored = vm.fill_storage()
    await recorder.wait_for(lambda: len(recorder.sms()) == stored, timeout=10)
    assert not vm.stored()
