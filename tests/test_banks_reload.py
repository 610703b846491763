"""`banks:` and `rotation:` on SIGHUP, through the daemon and over ptys (an emulated pool board).

What can change while the modems run does at once (rotation settings, a bank's
name, switch template, slot count); what needs a restart (a bank's ports, a
bank added or removed) is logged as such, every reload, and not applied; a file
that does not validate is refused and the old settings stay.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from modems.emulator.simbank import SimBank
from supplier.bankstore import BankStore
from supplier.config import load_config
from supplier.daemon import Daemon
from supplier.rotation import ModuleStatus

from .hubkit import FakeHub
from .test_banks_rotation import Bench, Factory, bank_config, bench  # noqa: F401 - the fixture
from .test_run_e2e import Process, free_port

RESTART = "configuration change needs a restart; not applied until then"


async def reload(running: Bench, raw: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """What `supplier run` does on SIGHUP: read the file, hand it to `Daemon.reload`."""
    await asyncio.to_thread(path.write_text, json.dumps(raw))
    quiet = structlog.get_config()["wrapper_class"]  # the tests' WARNING filter (conftest)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with structlog.testing.capture_logs() as logs:
            await running.daemon.reload(load_config(path))
    finally:
        structlog.configure(wrapper_class=quiet)
    return logs


def logged(logs: list[dict[str, Any]], event: str) -> list[tuple[Any, Any, Any]]:
    return [
        (line["key"], line["value"], line.get("was", line.get("running")))
        for line in logs
        if line["event"] == event
    ]


@pytest.mark.backends
async def test_name_slots_template_and_dwell_change_on_reload(
    bench: Factory,  # noqa: F811
    tmp_path: Path,
) -> None:
    running = await bench(
        1, 3, rotation={"dwell": "1h", "settle": "3s", "grace": "100ms", "retry_after": "1h"}
    )
    rotation, bank = running.rotation, running.bank
    module = rotation.module("pool1", 1)
    await running.until(lambda: module.status is ModuleStatus.IN and running.sellable(1))
    # Slot 1's SIM learned (a first start's switch to the slot it holds), then slot 3 in.
    rotation.switch_now("pool1", 1, 1)
    await running.until(lambda: rotation.slots[("pool1", 1, 1)].iccid is not None)
    rotation.switch_now("pool1", 1, 3)
    await running.until(lambda: module.row.slot == 3 and running.sellable(1))
    learned = {slot: rotation.slots[("pool1", 1, slot)].iccid for slot in (1, 3)}
    assert None not in learned.values()
    heard, switched = len(bank.control.commands), len(bank.switches)

    # Renamed, slot 3 taken out of use, a new template (the board takes either case).
    raw = copy.deepcopy(running.raw)
    raw["banks"][0].update(name="poola", slots=2, switch="at+swit{module:02d}-{slot:04d}")
    path = tmp_path / "reloaded.yaml"
    logs = await reload(running, raw, path)
    assert logged(logs, "bank setting changed") == [
        ("banks[0].name", "poola", "pool1"),
        ("banks[0].switch", "at+swit{module:02d}-{slot:04d}", "AT+SWIT{module:02d}-{slot:04d}"),
        ("banks[0].slots", 2, 3),
    ]
    assert logged(logs, RESTART) == []
    assert [line["banks"] for line in logs if line["event"] == "configuration reloaded"] == [
        ["poola"]
    ]
    assert rotation.module("poola", 1) is module and ("pool1", 1) not in rotation.modules

    # The module leaves the slot now out of use at once (its dwell is an hour), with the
    # new template, and never goes back to it.
    await running.until(lambda: module.row.slot == 2 and running.sellable(1))
    assert bank.control.commands[heard:] == ["at+swit01-0002"]
    assert bank.switches[switched:] == [(1, 2)]
    (grid,) = rotation.grid()
    assert grid["name"] == "poola"
    assert [len(m["slots"]) for m in grid["modules"]] == [2]  # type: ignore[index]
    assert sum(rotation.slot_counts().values()) == 2
    assert {name for name, _ in rotation.switches} == {"poola"}
    with pytest.raises(ValueError, match="expected 1-2"):
        rotation.switch_now("poola", 1, 3)

    # A shorter dwell applies to the SIM already in: it moves on, between slots 1 and 2 only.
    raw["rotation"]["dwell"] = "200ms"
    logs = await reload(running, raw, path)
    assert logged(logs, "bank setting changed") == [("rotation.dwell", 0.2, 3600.0)]
    await running.until(lambda: len(bank.switches) >= switched + 4)
    assert {slot for _, slot in bank.switches[switched:]} <= {1, 2}

    # The store knows the slots under the new name (the old name's rows emptied), so the
    # next start recognises every SIM it learned before the rename.
    store = running.daemon.running.store
    rows = {(r.bank, r.slot): r for r in await BankStore(store).load_slots()}
    assert rows[("poola", 1)].iccid == learned[1] and rows[("poola", 3)].iccid == learned[3]
    assert all(row.iccid is None for (name, _), row in rows.items() if name == "pool1")
    await running.daemon.stop()
    again = Daemon(load_config(path))
    try:
        await again.start()
        assert again.running.rotation is not None
        known = again.running.rotation.slots[("poola", 1, 1)]
        assert known.iccid == learned[1] and known.last_in is not None
    finally:
        await again.stop()


async def test_ports_and_banks_added_or_removed_need_a_restart(
    bench: Factory,  # noqa: F811
    tmp_path: Path,
) -> None:
    running = await bench(1, 2, rotation={"dwell": "1h", "settle": "3s", "grace": "100ms"})
    rotation, bank = running.rotation, running.bank
    module = rotation.module("pool1", 1)
    await running.until(lambda: module.status is ModuleStatus.IN and running.sellable(1))
    moved = str(tmp_path / "moved-module")
    raw = copy.deepcopy(running.raw)
    # The module's port moved (and its slot count changed: it waits with the port), a
    # second bank added; the rotation's dwell is a change that can apply.
    raw["banks"][0].update(modules={1: moved}, slots=1)
    extra = {"name": "pool2", "control": str(tmp_path / "c2"), "slots": 4, "modules": {1: "/x"}}
    raw["banks"].append(extra)
    raw["rotation"]["dwell"] = "200ms"
    path = tmp_path / "reloaded.yaml"
    for _ in range(2):  # said again at every reload until the restart, never forgotten
        logs = await reload(running, raw, path)
        assert logged(logs, RESTART) == [
            ("banks[0].modules", {1: moved}, bank.module_paths),
            ("banks[1]", "bank pool2 (new)", "not running"),
        ]
    assert rotation.banks[0].modules == bank.module_paths and rotation.banks[0].slots == 2
    assert [b.name for b in rotation.banks] == ["pool1"]
    # The dwell applied: the module moves on, over its two slots.
    await running.until(lambda: (1, 2) in bank.switches and running.sellable(1))

    # The bank no longer listed: it rotates on until the restart, and it is said.
    raw["banks"] = []
    logs = await reload(running, raw, path)
    assert logged(logs, RESTART) == [("banks", "bank pool1 not listed", "bank pool1")]
    switched = len(bank.switches)
    await running.until(lambda: len(bank.switches) > switched)


async def test_sighup_refuses_a_bad_banks_section_then_applies_a_good_one(
    tmp_path: Path,
) -> None:
    """`supplier run` and a real SIGHUP: the refusal names key, value and what was expected."""
    bank = SimBank(str(tmp_path / "pool1"), 1, 2)
    await bank.start()
    hub = FakeHub()
    await hub.start()
    raw = bank_config(
        tmp_path, bank, hub, rotation={"dwell": "1h", "settle": "3s", "grace": "100ms"}
    )
    raw["server"] = {"listen": f"127.0.0.1:{free_port()}"}
    path = tmp_path / "supplier.yaml"
    path.write_text(json.dumps(raw))
    process = Process(path)
    try:
        await process.start()
        await process.until("bank module adopted")
        assert process.proc is not None
        for problem, said in (
            ({"slots": 0}, "banks[0].slots: 0: input should be greater than or equal to 1"),
            ({"switch": "AT+SWIT{slot}"}, "'AT+SWIT{slot}': expected a template with {module}"),
        ):
            bad = copy.deepcopy(raw)
            bad["banks"][0].update(problem)
            path.write_text(json.dumps(bad))
            refused = process.count("reload refused; keeping the old settings")
            process.proc.send_signal(signal.SIGHUP)
            await process.until("reload refused; keeping the old settings", refused + 1)
            error = [
                line["error"]
                for line in process.lines
                if line["event"] == "reload refused; keeping the old settings"
            ][-1]
            assert said in error and "banks[0]" in error, error
        assert process.count("configuration reloaded") == 0
        # A good file: renamed and a short dwell, both at once; the module moves on.
        raw["banks"][0]["name"] = "poola"
        raw["rotation"]["dwell"] = "200ms"
        path.write_text(json.dumps(raw))
        process.proc.send_signal(signal.SIGHUP)
        await process.until("configuration reloaded", banks=["poola"])
        assert process.count("bank setting changed", key="banks[0].name", value="poola") == 1
        assert process.count(RESTART) == 0
        await process.until("switch", bank="poola", outcome="ok")
        assert await process.stop() == 0
    finally:
        if process.proc is not None and process.proc.returncode is None:
            await process.stop(signal.SIGKILL)
        await hub.stop()
        bank.stop()


async def test_a_held_module_in_a_slot_taken_out_of_use_survives_a_restart(
    bench: Factory,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An operator's hold keeps it there; a restart recognises its SIM; resumed, it moves off."""
    running = await bench(1, 3, rotation={"dwell": "1h", "settle": "3s", "grace": "100ms"})
    rotation = running.rotation
    module = rotation.module("pool1", 1)
    await running.until(lambda: module.status is ModuleStatus.IN and running.sellable(1))
    rotation.switch_now("pool1", 1, 3)
    await running.until(lambda: module.row.slot == 3 and running.sellable(1))
    third = running.sim_in(1)
    await rotation.hold("pool1", 1, True)
    raw = copy.deepcopy(running.raw)
    raw["banks"][0]["slots"] = 2
    path = tmp_path / "reloaded.yaml"
    await reload(running, raw, path)
    await running.until(lambda: module.status is ModuleStatus.HELD)
    assert module.row.slot == 3 and running.sim_in(1) == third and running.sellable(1)

    await running.daemon.stop()
    again = Daemon(load_config(path))
    try:
        await again.start()
        rotation = again.running.rotation
        assert rotation is not None
        changed = asyncio.Event()
        rotation.subscribe(changed.set)

        async def until(predicate: Callable[[], bool]) -> None:
            async with asyncio.timeout(20):
                while not predicate():
                    changed.clear()
                    await changed.wait()

        module = rotation.module("pool1", 1)
        await until(lambda: module.status is ModuleStatus.HELD)
        assert module.row.slot == 3 and module.iccid == third
        assert sum(rotation.slot_counts().values()) == 2
        await rotation.hold("pool1", 1, False)
        await until(lambda: module.row.slot in (1, 2) and module.status is ModuleStatus.IN)
        assert running.bank.switches[-1][1] in (1, 2)
    finally:
        await again.stop()


async def test_a_switch_asked_to_a_slot_taken_out_of_use_is_dropped(
    bench: Factory,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Asked while an activation held the SIM; the slot leaves at a reload: no switch to it."""
    running = await bench(1, 3, rotation={"dwell": "1h", "settle": "3s", "grace": "100ms"})
    rotation, bank = running.rotation, running.bank
    module = rotation.module("pool1", 1)
    await running.until(lambda: module.status is ModuleStatus.IN and running.sellable(1))
    inventory = running.daemon.running.inventory
    sim = inventory.sims[running.sim_in(1) or ""]
    answer = await running.call(
        {"action": "GET_NUMBER", "country": sim.country, "operator": sim.operator, "service": "vk"}
    )
    assert answer["status"] == "SUCCESS", answer
    rotation.switch_now("pool1", 1, 3)
    await running.until(lambda: module.status is ModuleStatus.WAITING)
    raw = copy.deepcopy(running.raw)
    raw["banks"][0]["slots"] = 2
    await reload(running, raw, tmp_path / "reloaded.yaml")
    switched = len(bank.switches)
    finished = await running.call(
        {"action": "FINISH_ACTIVATION", "activationId": answer["activationId"], "status": 3}
    )
    assert finished["status"] == "SUCCESS"
    await running.until(lambda: module.status is ModuleStatus.IN)
    assert bank.switches[switched:] == [] and running.sim_in(1) == sim.iccid


async def test_settings_only_a_restart_applies_are_named_at_every_reload(
    bench: Factory,  # noqa: F811
    tmp_path: Path,
) -> None:
    running = await bench(1, 2, rotation={"dwell": "1h", "settle": "3s", "grace": "100ms"})
    daemon = running.daemon
    started = daemon.config
    raw = copy.deepcopy(running.raw)
    raw["modems"]["ports"] = [str(tmp_path / "elsewhere*")]
    raw["modems"]["health_interval"] = "5s"
    raw["status"]["listen"] = "127.0.0.1:1"
    raw["storage"] = {"url": "postgresql://supplier:s3cret@127.0.0.1:1/supplier"}
    raw["hubs"][0]["retry_interval"] = "1s"  # a hub's setting: applied, not named
    path = tmp_path / "reloaded.yaml"
    for _ in range(2):  # said again at every reload until the restart
        logs = await reload(running, raw, path)
        named = {key: (value, was) for key, value, was in logged(logs, RESTART)}
        assert named == {
            "modems.ports": ((str(tmp_path / "elsewhere*"),), started.modems.ports),
            "modems.health_interval": (5.0, 0.2),
            "status.listen": (("127.0.0.1", 1), started.status.listen),
            "storage.path": ("/var/lib/supplier/supplier.db", started.storage.path),
            "storage.url": ("(changed; not shown)", "(not shown)"),
        }
        assert "s3cret" not in repr(logs)
        assert [line["event"] for line in logs].count("configuration reloaded") == 1
    # What runs is what the daemon says it runs; the hub's change applied.
    assert daemon.config.modems == started.modems and daemon.config.storage == started.storage
    assert daemon.config.status == started.status
    assert daemon.config.hubs[0].retry_interval == 1.0
