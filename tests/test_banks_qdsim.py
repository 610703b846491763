"""SIM switching by a module command (Quectel `AT+QDSIM=<n>`), through the whole
daemon: modules that hold two SIMs each, no pool board. The rotation sends the
command in the module's own turn, confirms the switch by the new ICCID, learns
and sells every SIM, and SMS reach the hub. Emulated modules on ptys."""

from __future__ import annotations

import pytest

from supplier.rotation import SlotState

from .test_banks_rotation import Bench, Factory, bench  # noqa: F401 (the fixture)

QDSIM = {"control": None, "switch": "AT+QDSIM={index}"}


@pytest.mark.backends
async def test_modules_switch_their_own_sims_with_qdsim(bench: Factory) -> None:  # noqa: F811
    running: Bench = await bench(
        2,
        2,
        module_switch=True,
        bank_options=QDSIM,
        rotation={"dwell": "300ms", "settle": "3s", "grace": "100ms", "retry_after": "1h"},
    )
    rotation = running.rotation

    def every_slot_known() -> bool:
        return all(
            rotation.slots[("pool1", module, slot)].state == SlotState.KNOWN
            for module in (1, 2)
            for slot in (1, 2)
        )

    await running.until(every_slot_known, timeout=30.0)
    # Each module heard its own command, with the slot counted from 0; the board nothing.
    for module, modem in running.bank.modules.items():
        assert "AT+QDSIM=1" in modem.commands, (module, modem.commands[-20:])
    assert running.bank.control.commands == []
    assert rotation.switches[("pool1", "ok")] >= 2
    for (_, module, slot), row in rotation.slots.items():
        sim = running.bank.sims[(module, slot)]
        assert sim is not None and row.iccid == sim.iccid and row.number == sim.number

    # The second holder's SIM, kept in by the operator, is sold and gets its SMS.
    second = running.bank.sims[(1, 2)]
    assert second is not None
    await rotation.hold("pool1", 1, True)
    rotation.switch_now("pool1", 1, 2)
    await running.until(lambda: running.sim_in(1) == second.iccid and running.sellable(1))
    inventory = running.daemon.running.inventory
    assert inventory is not None
    sim = inventory.sims[second.iccid]
    answer = await running.call(
        {"action": "GET_NUMBER", "country": sim.country, "operator": sim.operator, "service": "vk"}
    )
    assert answer["status"] == "SUCCESS", answer
    if str(answer["number"]) != second.number:  # module 2 holds a SIM of that operator too
        answer = await running.call(
            {
                "action": "GET_NUMBER",
                "country": sim.country,
                "operator": sim.operator,
                "service": "vk",
            }
        )
        assert answer["status"] == "SUCCESS", answer
    assert str(answer["number"]) == second.number
    assert running.bank.send_sms(second.number, "Your code 5150")
    await running.hub.wait_for(1)
    assert running.hub.received[0]["text"] == "Your code 5150"
    assert running.bank.current[1] == 2  # held: it stayed in
