"""SIM-bank rotation through the whole daemon, over ptys: an emulated pool board and its modules."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modems.emulator.interpreter import Slot
from modems.emulator.simbank import SimBank
from modems.pdu import encode_deliver_parts
from supplier.config import load_config, parse_config
from supplier.daemon import Daemon
from supplier.rotation import ModuleStatus, Rotation, SlotState

from .hubkit import KEYS, FakeHub
from .pg import Stores
from .test_run_e2e import Process, free_port


class Bench:
    """A daemon driving one emulated SIM bank, with one fake hub."""

    def __init__(self, daemon: Daemon, bank: SimBank, hub: FakeHub) -> None:
        self.daemon = daemon
        self.bank = bank
        self.hub = hub
        assert daemon.running.listening is not None
        self.url = f"http://127.0.0.1:{daemon.running.listening[1]}/"
        self._changed = asyncio.Event()
        daemon.subscribe(lambda _event: self._changed.set())
        assert daemon.running.rotation is not None
        self.rotation: Rotation = daemon.running.rotation
        self.rotation.subscribe(self._changed.set)
        self._session: aiohttp.ClientSession | None = None
        self.raw: dict[str, Any] = {}  # the configuration it was started with

    async def until(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def call(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.url, json={"key": KEYS["alpha"], **body}) as response:
            assert response.status == 200
            return dict(await response.json())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def sim_in(self, module: int) -> str | None:
        sim = self.bank.modules[module].sim
        return sim.iccid if sim is not None else None

    def sellable(self, module: int) -> bool:
        """The daemon sells the SIM now in `module` (in, ready, registered, not withheld)."""
        inventory = self.daemon.running.inventory
        assert inventory is not None
        iccid = self.sim_in(module)
        sim = inventory.sims.get(iccid) if iccid else None
        return sim is not None and inventory.present(sim)


Factory = Callable[..., Awaitable[Bench]]


def bank_config(
    tmp_path: Path, bank: SimBank, hub: FakeHub, *, rotation: dict[str, Any], **bank_extra: Any
) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0"},
        "status": {"listen": "127.0.0.1:0"},
        "hubs": [
            {
                "name": "alpha",
                "key": KEYS["alpha"],
                "push_url": hub.url,
                "retry_interval": "300ms",
                "push_timeout": "500ms",
            }
        ],
        "modems": {
            "ports": [str(tmp_path / "no-plain-modems*")],
            "health_interval": "200ms",
            "command_timeout": "1s",
            "rescan_interval": "100ms",
        },
        "services": ["vk", "tg", "wa"],
        "storage": {"path": str(tmp_path / "supplier.db")},
        "activation": {"release_after": "20m"},
        "banks": [
            {
                "name": "pool1",
                "control": bank.control.link,
                "slots": bank.slots,
                "modules": bank.module_paths,
                "reset_after_switch": False,
                **bank_extra,
            }
        ],
        "rotation": rotation,
    }


@pytest.fixture
async def bench(tmp_path: Path, stores: Stores) -> AsyncIterator[Factory]:
    started: list[tuple[Bench | None, Daemon, SimBank, FakeHub]] = []

    async def factory(
        modules: int = 2,
        slots: int = 3,
        *,
        rotation: dict[str, Any] | None = None,
        activation: dict[str, Any] | None = None,
        bank_options: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        **bank_kwargs: Any,
    ) -> Bench:
        bank = SimBank(str(tmp_path / "pool1"), modules, slots, **bank_kwargs)
        await bank.start()
        hub = FakeHub()
        await hub.start()
        raw = bank_config(
            tmp_path,
            bank,
            hub,
            rotation=rotation or {"dwell": "300ms", "settle": "3s", "grace": "100ms"},
            **(bank_options or {}),
        )
        if activation:
            raw["activation"] = activation
        url = (await stores.storage()).url  # PostgreSQL where the test runs on both backends
        if url is not None:
            raw["storage"] = {"url": url}
        raw.update(config or {})
        daemon = Daemon(parse_config(raw))
        started.append((None, daemon, bank, hub))
        await daemon.start()
        running = Bench(daemon, bank, hub)
        running.raw = raw
        started[-1] = (running, daemon, bank, hub)
        return running

    yield factory
    for running, daemon, bank, hub in started:
        if running is not None:
            await running.close()
        await daemon.stop()
        await hub.stop()
        bank.stop()


def counts_of(answer: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    out: dict[tuple[str, str, str], int] = {}
    for entry in answer["countryList"]:
        for operator, services in entry["operatorMap"].items():
            for service, count in services.items():
                out[(entry["country"], operator, service)] = int(count)
    return out


def held_by_operator(running: Bench) -> dict[tuple[str, str], int]:
    """SIMs physically in a module now, by the (country, operator) the daemon sells them as."""
    inventory = running.daemon.running.inventory
    assert inventory is not None
    out: dict[tuple[str, str], int] = {}
    for module in running.bank.modules:
        iccid = running.sim_in(module)
        sim = inventory.sims.get(iccid) if iccid else None
        if sim is not None and sim.country is not None:
            key = (sim.country, sim.operator)
            out[key] = out.get(key, 0) + 1
    return out


@pytest.mark.backends
async def test_rotates_through_every_usable_slot_and_never_over_reports(bench: Factory) -> None:
    """4 modules x 8 slots: every usable slot comes in; GET_SERVICES every 100 ms stays honest."""
    running = await bench(
        4,
        8,
        empty_slots=frozenset({(2, 5)}),
        no_number_slots=frozenset({(3, 4)}),
        rotation={"dwell": "200ms", "settle": "3s", "grace": "100ms", "retry_after": "1h"},
    )
    rotation = running.rotation
    usable = {
        (module, slot)
        for module in range(1, 5)
        for slot in range(1, 9)
        if (module, slot) not in {(2, 5)}
    }
    polls = 0
    violations: list[str] = []

    async def poll() -> None:
        nonlocal polls
        while True:
            before = held_by_operator(running)
            answer = await running.call({"action": "GET_SERVICES"})
            after = held_by_operator(running)
            polls += 1
            for (country, operator, service), count in counts_of(answer).items():
                limit = max(before.get((country, operator), 0), after.get((country, operator), 0))
                if count > limit:
                    violations.append(
                        f"{country}/{operator}/{service}: {count} > {limit} in modules"
                    )
            await asyncio.sleep(0.1)  # the poll interval the issue asks for, not a wait

    def seen_all() -> bool:
        seen = {
            (module, slot)
            for (_, module, slot), row in rotation.slots.items()
            if row.state == SlotState.KNOWN
        }
        return usable <= seen and rotation.slots[("pool1", 2, 5)].state == SlotState.EMPTY

    # The moment the board hears AT+SWIT (before the relay moves), the SIM
    # about to leave must already be out of the counts.
    heard = 0
    not_withheld: list[str] = []

    def on_control() -> None:
        nonlocal heard
        commands = running.bank.control.commands
        for line in commands[heard:]:
            module = int(line[7:9])
            if running.sellable(module):
                not_withheld.append(f"{line}: SIM {running.sim_in(module)} still on sale")
        heard = len(commands)

    unsubscribe = running.bank.control.subscribe(on_control)
    poller = asyncio.create_task(poll())
    try:
        await running.until(seen_all, timeout=90.0)
    finally:
        unsubscribe()
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
    assert polls > 10
    assert violations == []
    assert heard > 20
    assert not_withheld == []
    assert rotation.switches[("pool1", "ok")] >= len(usable) - 4
    # Learned identities match the emulator's SIMs slot by slot.
    for (_, module, slot), row in rotation.slots.items():
        sim = running.bank.sims[(module, slot)]
        if sim is not None:
            assert row.iccid == sim.iccid
            assert row.number == sim.number
    # The SIM without a number is known but never chosen again (no value left).
    assert rotation.value(rotation.slots[("pool1", 3, 4)].iccid) == 0


@pytest.mark.backends
async def test_open_activation_keeps_its_sim_until_finish_and_gets_its_sms(bench: Factory) -> None:
    running = await bench(1, 2)
    rotation = running.rotation
    await running.until(lambda: running.sellable(1))
    inventory = running.daemon.running.inventory
    assert inventory is not None
    sim = inventory.sims[running.sim_in(1) or ""]
    answer = await running.call(
        {
            "action": "GET_NUMBER",
            "country": sim.country,
            "operator": sim.operator,
            "service": "vk",
            "sum": 5,
        }
    )
    assert answer["status"] == "SUCCESS", answer
    module = rotation.module("pool1", 1)
    # Its dwell runs out; the open activation holds it.
    await running.until(lambda: module.status is ModuleStatus.WAITING)
    assert running.bank.switches == []
    assert running.bank.send_sms(str(answer["number"]), "Your code 4711")
    await running.hub.wait_for(1)
    assert running.hub.received[0]["text"] == "Your code 4711"
    assert running.bank.switches == []
    finished = await running.call(
        {"action": "FINISH_ACTIVATION", "activationId": answer["activationId"], "status": 3}
    )
    assert finished["status"] == "SUCCESS"
    # Then it moves on (a first start first learns which slot it held: AT+SWIT01-0001).
    await running.until(lambda: (1, 2) in running.bank.switches)
    await running.until(lambda: running.sellable(1) and module.row.slot == 2)
    assert len(running.hub.received) == 1


async def test_sms_to_a_switched_out_number_reaches_the_hub_when_it_returns(
    bench: Factory,
) -> None:
    """release_after lets the SIM leave; the network holds its SMS; back in, it is pushed."""
    running = await bench(1, 2, activation={"release_after": "300ms"})
    rotation = running.rotation
    await running.until(lambda: running.sellable(1))
    inventory = running.daemon.running.inventory
    assert inventory is not None
    first = running.sim_in(1)
    assert first is not None
    sim = inventory.sims[first]
    answer = await running.call(
        {
            "action": "GET_NUMBER",
            "country": sim.country,
            "operator": sim.operator,
            "service": "vk",
            "sum": 5,
        }
    )
    assert answer["status"] == "SUCCESS", answer
    await running.until(lambda: running.sim_in(1) not in (None, first))
    assert running.bank.send_sms(str(answer["number"]), "late code 9090")
    assert len(running.bank.held[first]) == 1
    # Dwell on slot 2 ends; slot 1 is the only other slot: its SIM comes back.
    await running.until(lambda: running.sim_in(1) == first)
    await running.hub.wait_for(1)
    assert running.hub.received[0]["text"] == "late code 9090"
    assert rotation.switches[("pool1", "ok")] >= 2


async def test_failed_switch_is_retried_once_then_the_slot_is_faulty(bench: Factory) -> None:
    running = await bench(
        1,
        3,
        fail_slots=frozenset({(1, 2)}),
        rotation={"dwell": "200ms", "settle": "600ms", "grace": "100ms", "retry_after": "1h"},
    )
    rotation = running.rotation
    await running.until(lambda: rotation.slots[("pool1", 1, 2)].state == SlotState.FAULTY)
    # (A first start learns its slot with AT+SWIT01-0001 first.)
    assert running.bank.switches == [(1, 1), (1, 2), (1, 2)]
    assert rotation.switches[("pool1", "unchanged")] == 1
    # The old SIM never left: back on sale; the next switch skips the faulty slot.
    await running.until(lambda: running.bank.switches[-1:] == [(1, 3)])
    assert (1, 2) not in running.bank.switches[3:]
    await running.until(
        lambda: running.sellable(1) and running.sim_in(1) == rotation.slots[("pool1", 1, 3)].iccid
    )


async def test_control_port_unplugged_and_back(bench: Factory) -> None:
    running = await bench(
        1,
        2,
        rotation={"dwell": "200ms", "settle": "2s", "grace": "100ms", "retry_after": "300ms"},
    )
    rotation = running.rotation
    module = rotation.module("pool1", 1)
    await running.until(lambda: module.status is ModuleStatus.IN and running.sellable(1))
    first = running.sim_in(1)
    running.bank.control.unplug()
    await running.until(lambda: rotation.switches[("pool1", "error")] >= 1)
    # Nothing moved: the SIM in the module stays on sale.
    await running.until(lambda: running.sellable(1))
    assert running.sim_in(1) == first
    running.bank.control.replug()
    await running.until(lambda: rotation.switches[("pool1", "ok")] >= 1)
    assert running.sim_in(1) != first
    await running.until(lambda: running.sellable(1))


async def test_kill_9_during_a_switch_and_restart(tmp_path: Path) -> None:
    """`supplier run` killed while a module has no SIM; the next start knows which SIM is in."""
    bank = SimBank(str(tmp_path / "pool1"), 1, 2, switch_delay=1.0, ready_delay=0.1)
    await bank.start()
    hub = FakeHub()
    await hub.start()
    raw = bank_config(
        tmp_path,
        bank,
        hub,
        rotation={"dwell": "300ms", "settle": "3s", "grace": "100ms"},
        reset_after_switch=True,
    )
    raw["server"] = {"listen": f"127.0.0.1:{free_port()}"}
    path = tmp_path / "supplier.yaml"
    path.write_text(json.dumps(raw))
    process = Process(path)
    daemon: Daemon | None = None
    try:
        await process.start()
        await process.until("switch", outcome="adopted")
        first = bank.sims[(1, 1)]
        second = bank.sims[(1, 2)]
        assert first is not None and second is not None
        # The next switch goes out: kill -9 while the module has no SIM.
        await bank.control.wait_until(lambda: (1, 2) in bank.switches, 20.0)
        assert bank.modules[1].sim is None
        await process.stop(signal.SIGKILL)
        daemon = Daemon(load_config(path))
        await daemon.start()
        rotation = daemon.running.rotation
        assert rotation is not None
        module = rotation.module("pool1", 1)
        changed = asyncio.Event()
        rotation.subscribe(changed.set)
        async with asyncio.timeout(20):
            while module.status is ModuleStatus.STARTING:
                changed.clear()
                await changed.wait()
        # Recognised: the SIM that came up is slot 2's, learned; slot 1 kept its identity.
        assert module.row.slot == 2
        assert module.iccid == second.iccid
        assert rotation.slots[("pool1", 1, 2)].iccid == second.iccid
        assert rotation.slots[("pool1", 1, 1)].iccid == first.iccid
        assert not module.row.switching
    finally:
        if process.proc is not None and process.proc.returncode is None:
            await process.stop(signal.SIGKILL)
        if daemon is not None:
            await daemon.stop()
        await hub.stop()
        bank.stop()


async def test_sms_on_the_sim_are_swept_before_it_leaves(bench: Factory) -> None:
    """A message stored without an indication is read into the store before the switch."""
    running = await bench(1, 2, rotation={"dwell": "1h", "settle": "3s", "grace": "100ms"})
    rotation = running.rotation
    module = rotation.module("pool1", 1)
    await running.until(lambda: module.status is ModuleStatus.IN and running.sellable(1))
    leaving = running.bank.modules[1].sim
    assert leaving is not None
    leaving.sm[7] = Slot(encode_deliver_parts("Bank", "silent 5150")[0])  # no +CMTI
    rotation.switch_now("pool1", 1, 2)
    await running.until(lambda: module.row.slot == 2 and running.sellable(1))
    assert leaving.sm == {}  # nothing stayed behind on the SIM that left
    store = running.daemon.running.store
    assert store is not None
    texts = [sms.text for sms, _ in await store.sms_of(leaving.iccid)]
    assert texts == ["silent 5150"]


async def test_a_module_that_never_comes_back(bench: Factory) -> None:
    running = await bench(
        1,
        3,
        rotation={"dwell": "1h", "settle": "600ms", "grace": "100ms", "retry_after": "1h"},
    )
    rotation = running.rotation
    module = rotation.module("pool1", 1)
    await running.until(lambda: module.status is ModuleStatus.IN and running.sellable(1))
    running.bank.stuck.add(1)
    rotation.switch_now("pool1", 1, 2)
    await running.until(lambda: module.status is ModuleStatus.FAULTY, timeout=20.0)
    assert rotation.switches[("pool1", "lost")] == 1
    assert rotation.slots[("pool1", 1, 2)].state == SlotState.FAULTY
    assert module.retry_at > running.daemon.clock() + 3000  # backs off, no hot loop
    assert not running.sellable(1)


async def test_a_module_lost_mid_switch_that_comes_back_with_its_sim_sells_it(
    bench: Factory,
) -> None:
    # The relay did not move (slot 2 fails) and the module rebooted for longer than the
    # settle time (its health check noticed: no SIM reported): the switch ends LOST. When the module answers again it still holds
    # its SIM, which must go back on sale, not stay withheld through the hour's back-off.
    running = await bench(
        1,
        3,
        fail_slots=frozenset({(1, 2)}),
        rotation={"dwell": "1h", "settle": "3s", "grace": "100ms", "retry_after": "1h"},
    )
    rotation = running.rotation
    module = rotation.module("pool1", 1)
    await running.until(lambda: module.status is ModuleStatus.IN and running.sellable(1))
    old = running.sim_in(1)
    bank, board_switch = running.bank, running.bank.switch

    def switch_and_reboot(number: int, slot: int) -> bool:
        bank.modules[number].hang()  # the module stops answering as the relay is asked
        return board_switch(number, slot)

    bank.switch = switch_and_reboot  # type: ignore[method-assign]
    rotation.switch_now("pool1", 1, 2)
    await running.until(lambda: module.status is ModuleStatus.FAULTY, timeout=20.0)
    assert rotation.switches[("pool1", "lost")] == 1
    bank.switch = board_switch  # type: ignore[method-assign]
    bank.modules[1].unhang()
    await running.until(lambda: running.sellable(1), timeout=20.0)
    assert running.sim_in(1) == old
