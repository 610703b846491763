"""The modem pool against the virtual modem bank, through real ptys and the real serial code."""

from __future__ import annotations

import dataclasses
from collections import Counter

from modems.emulator import PROFILES, make_sim
from modems.events import ModemState, ModemStateChanged, SimLost, SimReady, SmsReceived
from modems.pdu import SmsDeliver
from modems.reassembly import Part, Reassembler

from .conftest import FAST, Recorder


def state_of(recorder: Recorder, port: str) -> ModemState | None:
    states = [e.state for e in recorder.of(ModemStateChanged) if e.port == port]  # type: ignore[attr-defined]
    return states[-1] if states else None


def ready_events(recorder: Recorder, port: str) -> list[SimReady]:
    return [e for e in recorder.of(SimReady) if e.port == port]  # type: ignore[misc]


async def test_sixteen_modems_across_profiles_come_up_with_their_identities(
    make_bank, pool_of
) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(16)
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 16, timeout=30)
    assert {vm.profile.name for vm in bank} == set(PROFILES)
    for event in recorder.of(SimReady):
        assert isinstance(event, SimReady)
        vm = bank.by_link(event.port)
        assert vm is not None and vm.sim is not None
        assert event.sim.iccid == vm.sim.iccid
        assert event.sim.imsi == vm.sim.imsi
        assert event.sim.number == vm.sim.number
        assert (event.sim.home_mcc, event.sim.home_mnc) == (vm.sim.imsi[:3], vm.sim.imsi[3:5])
        assert event.device.manufacturer == vm.profile.manufacturer
        assert event.network.registration == 1
        assert event.network.operator == vm.sim.operator
        assert event.network.rssi == vm.rssi
    for modem in pool:
        assert modem.state is ModemState.READY
        assert modem.indications is not None
    sierra = [m for m in pool if "MC8090" in (m.device.model or "")]
    assert sierra and all(m.indications == "2,1,2,1,0" for m in sierra)  # the CNMI fallback
    huawei = [m for m in pool if m.device.manufacturer == "huawei"]
    assert huawei and all(m.storage == "ME" for m in huawei)


async def test_sms_reaches_the_callback_once_and_is_deleted_only_after(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(16)
    recorder = Recorder()
    still_stored: list[bool] = []

    async def check(event: SmsReceived) -> None:
        vm = bank.by_link(event.port)
        assert vm is not None
        still_stored.append(vm.has_pdu(event.pdu) and event.pdu not in vm.deleted)

    recorder.before_accept = check
    pool, _ = await pool_of(bank, recorder=recorder)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 16, timeout=30)
    texts = {}
    for i, vm in enumerate(bank):
        text = ["VK: 33708 — ваш код", "Code 5€ [x]", "Telegram code 12345 😀", "plain"][i % 4]
        texts[vm.link] = f"{text} #{i}"
        vm.deliver(texts[vm.link], sender="VK" if i % 2 else "+79001234567")
    await recorder.wait_for(lambda: len(recorder.sms()) >= 16, timeout=20)
    for vm in bank:
        await vm.wait_until(lambda vm=vm: not vm.stored(), timeout=5)
    counts = Counter(e.pdu for e in recorder.sms())
    assert set(counts.values()) == {1}
    assert all(still_stored) and len(still_stored) == 16
    for event in recorder.sms():
        assert isinstance(event.message, SmsDeliver)
        assert event.message.text == texts[event.port]
        assert event.error is None


async def test_sms_stays_on_the_sim_until_the_owner_accepts_it(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(1)
    recorder = Recorder()
    attempts: list[str] = []

    async def flaky(event: SmsReceived) -> None:
        attempts.append(event.pdu)
        if len(attempts) < 3:
            raise OSError("database is locked")

    recorder.before_accept = flaky
    pool, _ = await pool_of(bank, recorder=recorder)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 1, timeout=10)
    [pdu] = bank[0].deliver("keep me")
    await recorder.wait_for(lambda: len(recorder.sms()) == 1, timeout=10)
    await bank[0].wait_until(lambda: not bank[0].stored(), timeout=5)
    assert attempts == [pdu, pdu, pdu]
    assert bank[0].deleted == [pdu]


async def test_messages_stored_while_down_are_swept_at_start(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(4)
    stored = {vm.link: vm.deliver(f"arrived while down {vm.link[-3:]}") for vm in bank}
    assert all(vm.stored() for vm in bank)
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.sms()) == 4, timeout=20)
    assert {e.port: [e.pdu] for e in recorder.sms()} == stored
    for vm in bank:
        await vm.wait_until(lambda vm=vm: not vm.stored(), timeout=5)


async def test_full_storage_is_emptied_and_held_messages_then_arrive(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(1, profiles=("generic",))
    vm = bank[0]
    filled = vm.fill_storage()
    assert filled == vm.profile.capacity
    held = vm.deliver("sent while the SIM was full")
    assert vm.network_queue == held
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.sms()) == filled + 1, timeout=30)
    texts = [e.message.text for e in recorder.sms() if isinstance(e.message, SmsDeliver)]
    assert texts[-1] == "sent while the SIM was full"
    assert len(set(texts)) == filled + 1


async def test_unplug_and_replug(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(4)
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 4, timeout=20)
    vm = bank[1]
    vm.unplug()
    await recorder.wait_for(lambda: vm.link not in recorder.ready_ports(), timeout=10)
    assert any(isinstance(e, SimLost) and e.port == vm.link for e in recorder.events)
    vm.replug()
    await recorder.wait_for(lambda: len(ready_events(recorder, vm.link)) == 2, timeout=15)
    vm.deliver("after replug")
    await recorder.wait_for(lambda: any(e.port == vm.link for e in recorder.sms()), timeout=10)
    assert len(pool) == 4
    assert set(recorder.ready_ports()) == set(bank.paths)


async def test_hung_modem_is_reset_and_recovers(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(3)
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 3, timeout=20)
    vm = bank[0]
    vm.hang()
    await recorder.wait_for(lambda: state_of(recorder, vm.link) is ModemState.RESETTING, timeout=15)
    assert vm.link not in recorder.ready_ports()
    modem = pool.get(vm.link)
    assert modem is not None and modem.resets >= 1 and modem.timeouts >= FAST.hang_after
    await vm.wait_until(lambda: "AT+CFUN=1,1" in vm.commands, timeout=5)
    vm.unhang()
    await recorder.wait_for(lambda: len(ready_events(recorder, vm.link)) == 2, timeout=20)
    vm.deliver("after the hang")
    await recorder.wait_for(lambda: any(e.port == vm.link for e in recorder.sms()), timeout=10)
    assert all(state_of(recorder, other.link) is ModemState.READY for other in bank.modems[1:])


async def test_sim_removed_and_another_inserted(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    # generic announces removal with +CPIN, huawei with ^SIMST, wavecom says nothing.
    bank = await make_bank(3, profiles=("generic", "huawei", "wavecom"))
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 3, timeout=20)
    for offset, vm in enumerate(bank):
        old = vm.remove_sim()
        assert old is not None
        await recorder.wait_for(
            lambda vm=vm: state_of(recorder, vm.link) is ModemState.NO_SIM, timeout=10
        )
        lost = [e for e in recorder.of(SimLost) if e.port == vm.link]  # type: ignore[attr-defined]
        assert [e.iccid for e in lost] == [old.iccid]  # type: ignore[attr-defined]
        new = make_sim(100 + offset)
        vm.insert_sim(new)
        await recorder.wait_for(lambda vm=vm: len(ready_events(recorder, vm.link)) == 2, timeout=10)
        assert ready_events(recorder, vm.link)[-1].sim.iccid == new.iccid


async def test_garbage_from_the_modem_does_not_break_it(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(1)
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 1, timeout=10)
    vm = bank[0]
    for _ in range(5):
        vm.garbage()
    vm.garbage(b"\x00\xff" * 5000)  # no line end for 10 kB: the reader's cap
    vm.deliver("still here")
    await recorder.wait_for(lambda: len(recorder.sms()) == 1, timeout=10)
    modem = pool.get(vm.link)
    assert modem is not None and modem.state is ModemState.READY


async def test_multipart_parts_out_of_order_reassemble(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(1, profiles=("huawei",))
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 1, timeout=10)
    text = "Ваш код для входа: 482913. Никому его не сообщайте! 🔐 " * 3
    bank[0].deliver(text, sender="Telegram", order=[2, 0, 1])
    await recorder.wait_for(lambda: len(recorder.sms()) == 3, timeout=10)
    reassembler = Reassembler()
    done = None
    for event in recorder.sms():
        assert isinstance(event.message, SmsDeliver)
        done = (
            reassembler.add(Part.from_deliver(event.iccid, event.message, event.received_at))
            or done
        )
    assert done is not None and done.text == text
    assert [e.index for e in recorder.sms()] == [0, 1, 2]  # Huawei numbers storage from 0


async def test_pin_is_entered_once_and_a_wrong_one_is_never_retried(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(2, profiles=("generic",))
    for index, vm in enumerate(bank):
        vm.sim = dataclasses.replace(make_sim(index), pin="1234" if index == 0 else "9999")
        vm.replug()  # power-cycle with the locked SIM
    pool, recorder = await pool_of(bank, dataclasses.replace(FAST, pin="1234"))
    await recorder.wait_for(
        lambda: (
            bank[0].link in recorder.ready_ports()
            and state_of(recorder, bank[1].link) is ModemState.SIM_LOCKED
        ),
        timeout=15,
    )
    tries = [c for c in bank[1].commands if c.upper().startswith("AT+CPIN=")]
    assert tries == ['AT+CPIN="1234"']
    modem = pool.get(bank[1].link)
    assert modem is not None and modem.detail == "wrong PIN"


async def test_a_port_that_is_not_a_modem_is_skipped(make_bank, pool_of, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import tty

    bank = await make_bank(2)
    master, slave = os.openpty()  # a tty nobody answers on: like a dongle's diagnostics port
    tty.setraw(slave)
    link = os.path.join(bank.directory, "modem999")
    os.symlink(os.ttyname(slave), link)
    try:
        pool, recorder = await pool_of(bank)
        await recorder.wait_for(
            lambda: (
                len(recorder.ready_ports()) == 2
                and state_of(recorder, link) is ModemState.NOT_MODEM
            ),
            timeout=15,
        )
    finally:
        os.close(master)
        os.close(slave)


async def test_an_owner_whose_handler_raises_does_not_stop_the_modem(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    """A bug in the owner's event handler is logged; the modem goes on (it used to die
    in the log call itself: `event=` clashed with structlog's own argument)."""
    import structlog

    class Faulty(Recorder):
        async def __call__(self, event):  # type: ignore[no-untyped-def]
            await super().__call__(event)
            if isinstance(event, ModemStateChanged):
                raise RuntimeError("owner's bug")

    bank = await make_bank(1)
    recorder = Faulty()
    with structlog.testing.capture_logs() as logs:
        pool, _ = await pool_of(bank, recorder=recorder)
        await recorder.wait_for(lambda: len(recorder.ready_ports()) == 1)
    [modem] = list(pool)
    assert modem.state is ModemState.READY
    failures = [line for line in logs if line["event"] == "event handler failed"]
    assert failures and failures[0]["kind"] == "ModemStateChanged"
    assert "owner's bug" in failures[0]["error"]


async def test_a_sim_removed_while_its_report_waits_is_never_reported(make_bank, pool_of) -> None:  # type: ignore[no-untyped-def]
    """A SimReady the owner refused is reported again after a back-off; if the SIM
    goes meanwhile, that SIM is never reported again, and the next one is."""

    class Refusing(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.refuse = True
            self.attempts: list[str] = []  # the ICCID of every SimReady offered

        async def __call__(self, event):  # type: ignore[no-untyped-def]
            if isinstance(event, SimReady):
                self.attempts.append(event.sim.iccid)
                if self.refuse:
                    self._changed.set()
                    raise RuntimeError("the owner's store is down")
            await super().__call__(event)

    bank = await make_bank(1, profiles=("generic",))
    vm = bank[0]
    first = vm.sim
    assert first is not None
    recorder = Refusing()
    settings = dataclasses.replace(FAST, ready_retry_initial=0.05, ready_retry_max=0.1)
    pool, _ = await pool_of(bank, settings, recorder)
    await recorder.wait_for(lambda: len(recorder.attempts) >= 2)  # refused, then again
    vm.remove_sim()
    await recorder.wait_for(lambda: state_of(recorder, vm.link) is ModemState.NO_SIM)
    offered = len(recorder.attempts)
    # Five health checks without a SIM: ten and more retry periods of the back-off.
    mark = len(vm.commands)
    await vm.wait_until(lambda: vm.commands[mark:].count("AT+CPIN?") >= 5, timeout=10)
    assert len(recorder.attempts) == offered, recorder.attempts
    assert set(recorder.attempts) == {first.iccid}
    recorder.refuse = False
    second = make_sim(4242)
    vm.insert_sim(second)
    await recorder.wait_for(lambda: vm.link in recorder.ready_ports(), timeout=10)
    assert recorder.attempts[offered:] == [second.iccid]  # taken at the first offer
    [ready] = recorder.of(SimReady)
    assert ready.sim.iccid == second.iccid  # type: ignore[attr-defined]


async def test_reports_refused_are_made_again_as_soon_as_the_owner_takes_one(
    make_bank, pool_of
) -> None:  # type: ignore[no-untyped-def]
    """The owner refused every SimReady (its store was down) and the back-off is long;
    the first report it takes (a modem plugged in meanwhile) has the others made at once."""

    class Refusing(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.refuse = True
            self.refused: Counter[str] = Counter()

        async def __call__(self, event):  # type: ignore[no-untyped-def]
            if isinstance(event, SimReady) and self.refuse:
                self.refused[event.port] += 1
                self._changed.set()
                raise RuntimeError("the owner's store is down")
            await super().__call__(event)

    bank = await make_bank(4, profiles=("generic",))
    late = bank[3]
    late.unplug()  # comes in once the owner takes reports again
    recorder = Refusing()
    # The next report after a refusal: 24-36 s away, far longer than this test waits.
    settings = dataclasses.replace(FAST, ready_retry_initial=30.0, ready_retry_max=60.0)
    pool, _ = await pool_of(bank, settings, recorder)
    waiting = {vm.link for vm in bank[:3]}
    await recorder.wait_for(lambda: set(recorder.refused) == waiting, timeout=20)
    assert all(modem.report_waiting for modem in pool)
    recorder.refuse = False
    late.replug()
    await recorder.wait_for(lambda: recorder.ready_ports() == waiting | {late.link}, timeout=10)
    assert max(recorder.refused.values()) == 1  # each refused once, then taken: no back-off
    assert not any(modem.report_waiting for modem in pool)
