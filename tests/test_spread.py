"""Background modem work is spread over its interval and kept off the event loop:
modems that come up together do not check their health together (issue 17: 512
times 3 commands in one burst held the event loop every 10 s), and the port
rescan's file-system work runs in a thread."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from modems.emulator import VirtualModem
from modems.events import ModemState, ModemStateChanged
from modems.modem import HEALTH_LINE, ModemSettings
from modems.pool import ModemPool, expand_ports

from .conftest import FAST, BankFactory, Recorder

COUNT = 16
INTERVAL = 2.0
HEALTH = HEALTH_LINE  # a ready modem's health check


async def test_health_checks_of_modems_that_start_together_are_spread(
    make_bank: BankFactory,
    pool_of: Callable[..., Awaitable[tuple[ModemPool, Recorder]]],
) -> None:
    bank = await make_bank(COUNT, profiles=("generic",))  # all come up within a moment
    settings: ModemSettings = dataclasses.replace(FAST, health_interval=INTERVAL)
    _, recorder = await pool_of(bank, settings)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == COUNT, timeout=20)
    ready_at = time.monotonic()
    first_check: dict[int, float] = {}
    heard = [len(vm.commands) for vm in bank]

    def watcher(index: int, vm: VirtualModem) -> Callable[[], None]:
        def changed() -> None:
            new, heard[index] = vm.commands[heard[index] :], len(vm.commands)
            if index not in first_check and HEALTH in new:
                first_check[index] = time.monotonic()

        return changed

    unsubscribe = [vm.subscribe(watcher(i, vm)) for i, vm in enumerate(bank)]
    try:
        for vm in bank:
            await vm.wait_until(lambda: len(first_check) == COUNT, timeout=2 * INTERVAL + 5)
    finally:
        for stop in unsubscribe:
            stop()
    moments = sorted(first_check.values())
    # Started together, the old code checked all 16 within the come-up's spread
    # (well under 0.5 s) one interval later; spread, 16 phases drawn over a
    # whole interval span far more than 0.8 s (all within 0.8 s: p < 1e-5).
    assert moments[-1] - moments[0] > 0.4 * INTERVAL, [m - ready_at for m in moments]


_GLOB_THREADS: dict[str, set[int]] = {}


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "glob.glob" and args and args[0] in _GLOB_THREADS:
        _GLOB_THREADS[str(args[0])].add(threading.get_ident())


sys.addaudithook(_audit)  # audit hooks stay for the process: this one only notes our patterns


async def test_the_port_rescan_runs_off_the_event_loop(
    make_bank: BankFactory,
    pool_of: Callable[..., Awaitable[tuple[ModemPool, Recorder]]],
) -> None:
    """Globbing and resolving 512 ports held the loop for 25-30 ms every 2 s."""
    bank = await make_bank(2, profiles=("generic",))
    _GLOB_THREADS[bank.pattern] = set()
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 2, timeout=20)
    await pool.rescan()
    assert _GLOB_THREADS[bank.pattern]  # the pattern was globbed (the hook sees it)
    assert threading.get_ident() not in _GLOB_THREADS.pop(bank.pattern)


def test_a_rescan_resolves_a_port_again_only_when_its_name_changed(tmp_path: Path) -> None:
    """The rescan keeps what each name resolved to while the name is the same file."""
    for name in ("ttyUSB0", "ttyUSB1"):
        (tmp_path / name).write_text("")
    links = tmp_path / "by-path"
    links.mkdir()
    (links / "port-a").symlink_to(tmp_path / "ttyUSB0")
    resolved: dict[str, tuple[int, int, str]] = {}
    pattern = str(links / "*")
    assert expand_ports([pattern], resolved=resolved) == {
        str(links / "port-a"): str(tmp_path / "ttyUSB0")
    }
    assert list(resolved) == [str(links / "port-a")]
    # udev re-creates the link for another device: a new file under the same name.
    (links / "port-a.new").symlink_to(tmp_path / "ttyUSB1")
    os.replace(links / "port-a.new", links / "port-a")
    assert expand_ports([pattern], resolved=resolved) == {
        str(links / "port-a"): str(tmp_path / "ttyUSB1")
    }
    (links / "port-a").unlink()
    assert expand_ports([pattern], resolved=resolved) == {}
    assert resolved == {}  # names that are gone are forgotten


def test_a_rescan_skips_dangling_links_and_directories_and_takes_one_name_per_device(
    tmp_path: Path,
) -> None:
    (tmp_path / "ttyUSB0").write_text("")
    (tmp_path / "ttyUSB1").write_text("")
    (tmp_path / "ttyUSB2").mkdir()  # a directory matching the pattern: never a port
    links = tmp_path / "by-path"
    links.mkdir()
    (links / "a").symlink_to(tmp_path / "ttyUSB0")
    (links / "b").symlink_to(tmp_path / "gone")  # dangling: its device is unplugged
    (links / "c").symlink_to(tmp_path / "ttyUSB2")  # a link to a directory
    resolved: dict[str, tuple[int, int, str]] = {}
    patterns = [str(links / "*"), str(tmp_path / "ttyUSB*"), str(tmp_path / "missing")]
    for _ in range(2):  # the second scan from what the first one resolved
        assert expand_ports(patterns, resolved=resolved) == {
            str(links / "a"): str(tmp_path / "ttyUSB0"),  # not ttyUSB0 again: one device
            str(tmp_path / "ttyUSB1"): str(tmp_path / "ttyUSB1"),
        }
    # The dangling link's device comes back: the next scan takes it.
    (tmp_path / "gone").write_text("")
    assert expand_ports(patterns, resolved=resolved)[str(links / "b")] == str(tmp_path / "gone")


async def test_an_idle_modem_sees_its_port_go_with_no_health_check_due(
    make_bank: BankFactory,
) -> None:
    """An idle modem waited on two new futures per wake-up (its queue's get and its
    port's close); now one watcher per session turns the close into a wake-up.
    A port that goes must still end the session at once while nothing else is
    due: no health check and no rescan for ten minutes here."""
    bank = await make_bank(2, profiles=("generic",))
    settings: ModemSettings = dataclasses.replace(FAST, health_interval=600.0)
    recorder = Recorder()
    pool = ModemPool([bank.pattern], recorder, settings, rescan_interval=600.0)
    await pool.start()
    try:
        await recorder.wait_for(lambda: len(recorder.ready_ports()) == 2, timeout=20)
        vm = bank[0]
        vm.unplug()
        await recorder.wait_for(
            lambda: any(
                e.port == vm.link and e.state is ModemState.DISCONNECTED
                for e in recorder.of(ModemStateChanged)
            ),
            timeout=10,
        )
        assert bank[1].link in recorder.ready_ports()
    finally:
        await pool.stop()
