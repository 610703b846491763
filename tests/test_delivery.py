"""SMS delivery: from an SMS injected into an emulated modem to PUSH_SMS on a test hub."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from modems.events import SimLost, SmsReceived
from modems.pdu import decode_pdu, encode_deliver_parts
from supplier.backend import StoreBackend
from supplier.inbox import Inbox
from supplier.inventory import Inventory

from .hubkit import (
    KEYS,
    Clock,
    RunFactory,
    Running,
    error_status,
    garbage,
    hanging,
    http_500,
    success,
)
from .hubkit import sim_ready as hub_sim_ready
from .pg import Stores
from .test_push_faults import captured_logs, set_writable

pytestmark = pytest.mark.backends  # every test here on SQLite and on PostgreSQL


async def test_sms_reaches_the_hub_with_the_right_types_and_text(run: RunFactory) -> None:
    r = await run(4)
    hub = r.hubs["alpha"]
    answer = await r.number("alpha", "megafon")  # the SIM in modem 1 (Huawei profile)
    modem = r.bank[1]
    assert modem.sim is not None and answer["number"] == int(modem.sim.number or 0)
    texts = [
        ("VK", "VK: 33708 - your code [5€]"),
        ("+79001234567", "Код подтверждения: 4821. Никому не сообщайте"),
        ("Telegram", "Telegram code 51924 😀🔐"),
        ("WhatsApp", "Ваш код WhatsApp: 482-913. " * 6),  # UCS-2, 3 parts
    ]
    for sender, text in texts:
        modem.deliver(text, sender)
    await hub.wait_for(4)
    assert len(encode_deliver_parts("x", texts[3][1])) == 3
    by_text = {push["text"]: push for push in hub.received}
    for sender, text in texts:
        push = by_text[text]
        assert push["action"] == "PUSH_SMS"
        assert push["key"] == KEYS["alpha"]
        assert push["phoneFrom"] == sender
        assert push["phone"] == answer["number"] and type(push["phone"]) is int
        assert type(push["smsId"]) is int
    assert len({p["smsId"] for p in hub.received}) == 4
    for headers in hub.headers:
        assert headers["Content-Encoding"] == "gzip"
        assert headers["User-Agent"].startswith("supplier/")


async def test_retried_until_success_and_never_after(run: RunFactory) -> None:
    r = await run(2)
    hub = r.hubs["alpha"]
    hub.answers = [error_status, http_500, garbage, hanging(2.0), success]
    await r.number("alpha", "mts")
    r.bank[0].deliver("code 1111")
    await hub.wait_for(5, timeout=20)
    first = hub.received[0]["smsId"]
    assert [p["smsId"] for p in hub.received] == [first] * 5
    gaps = [b - a for a, b in zip(hub.times, hub.times[1:], strict=False)]
    assert all(gap >= 0.25 for gap in gaps), gaps  # retry_interval is 300 ms here
    # Another SMS goes through; the first one is not sent again.
    r.bank[0].deliver("code 2222")
    await hub.wait_for(6)
    assert hub.received[5]["text"] == "code 2222"
    assert daemon_store(r) is not None
    deliveries = await daemon_store(r).deliveries_for(first)
    assert [(d.outcome, d.attempts) for d in deliveries] == [("SUCCESS", 5)]
    assert [p["smsId"] for p in hub.received].count(first) == 5


def daemon_store(r: Running) -> StoreBackend:
    assert r.daemon.running.store is not None
    return r.daemon.running.store


async def test_a_resold_number_s_sms_reach_only_its_newest_buyer(run: RunFactory) -> None:
    r = await run(1, hubs=("alpha", "beta"), activation={"release_after": "1s"})
    first = await r.number("alpha", "mts")
    r.bank[0].deliver("alpha's code")
    await r.hubs["alpha"].wait_for(1)
    # release_after passes without a FINISH: the SIM is back on sale, and until it is
    # sold again its SMS still go to alpha (a slow service). The clock is moved.
    assert r.daemon.running.inventory is not None
    real_clock = r.daemon.running.inventory.clock
    r.daemon.running.inventory.clock = lambda: real_clock() + 2.0
    r.bank[0].deliver("late for alpha")
    await r.hubs["alpha"].wait_for(2)
    # Sold again, to another hub: from now on only the newest buyer gets the SMS.
    second = await r.number("beta", "mts", service="wa")
    assert second["number"] == first["number"]
    r.bank[0].deliver("beta's code")
    await r.hubs["beta"].wait_for(1)
    assert (
        await r.call(
            "beta",
            {"action": "FINISH_ACTIVATION", "activationId": second["activationId"], "status": 3},
        )
    )["status"] == "SUCCESS"
    r.bank[0].deliver("after beta finished")  # the newest is finished: nobody, not alpha
    await r.until(lambda: r.sms_count() >= 4)
    stored = {s.text: s for s in await daemon_store(r).recent_sms()}
    assert await daemon_store(r).deliveries_for(stored["after beta finished"].id) == []
    assert [p["text"] for p in r.hubs["alpha"].received] == ["alpha's code", "late for alpha"]
    assert [p["text"] for p in r.hubs["beta"].received] == ["beta's code"]


async def test_an_unsold_number_s_sms_reach_its_buyer_for_a_day(run: RunFactory) -> None:
    r = await run(1, activation={"release_after": "1s"})
    await r.number("alpha", "mts")
    assert r.daemon.running.inventory is not None
    real_clock = r.daemon.running.inventory.clock
    r.daemon.running.inventory.clock = lambda: real_clock() + 86000.0  # release_after long past
    r.bank[0].deliver("still alpha's")
    await r.hubs["alpha"].wait_for(1)
    r.daemon.running.inventory.clock = lambda: real_clock() + 86500.0  # past the 24 h horizon
    r.bank[0].deliver("nobody's")
    await r.until(lambda: r.sms_count() >= 2)
    stored = {s.text: s for s in await daemon_store(r).recent_sms()}
    assert await daemon_store(r).deliveries_for(stored["nobody's"].id) == []
    assert [p["text"] for p in r.hubs["alpha"].received] == ["still alpha's"]


async def test_sms_on_an_idle_number_is_kept_and_not_pushed(run: RunFactory) -> None:
    r = await run(2)
    r.bank[1].deliver("nobody asked for this")
    answer = await r.number("alpha", "mts")
    await r.until(lambda: r.sms_count() >= 1)
    r.bank[0].deliver("this one was asked for")
    await r.hubs["alpha"].wait_for(1)
    assert [p["text"] for p in r.hubs["alpha"].received] == ["this one was asked for"]
    assert r.hubs["alpha"].received[0]["phone"] == answer["number"]
    stored = await daemon_store(r).recent_sms()
    idle = [s for s in stored if s.text == "nobody asked for this"]
    assert len(idle) == 1 and await daemon_store(r).deliveries_for(idle[0].id) == []


async def test_finished_activation_gets_no_more_sms(run: RunFactory) -> None:
    r = await run(1)
    answer = await r.number("alpha", "mts")
    assert (
        await r.call(
            "alpha",
            {"action": "FINISH_ACTIVATION", "activationId": answer["activationId"], "status": 3},
        )
    )["status"] == "SUCCESS"
    r.bank[0].deliver("after the finish")
    await r.until(lambda: r.sms_count() >= 1)
    [sms] = await daemon_store(r).recent_sms()
    assert sms.text == "after the finish"
    assert await daemon_store(r).deliveries_for(sms.id) == []


async def test_a_sim_claiming_a_sold_number_never_feeds_its_buyer(run: RunFactory) -> None:
    # SIM 0 is sold; SIM 1 then comes up reporting SIM 0's number (a stale own-number
    # entry). Both are held back from sale, and what arrives on SIM 1 is not SIM 0's
    # buyer's: one SIM's messages must never reach another number's customer.
    r = await run(2)
    answer = await r.number("alpha", "mts")
    first, second = r.bank[0].sim, r.bank[1].sim
    assert first is not None and second is not None
    inventory = r.daemon.running.inventory
    second.number = first.number
    before = len(r.events)
    assert r.daemon.running.pool.reset(r.bank[1].link)
    await r.until(
        lambda: inventory.conflicting(second.iccid) == first.iccid and len(r.events) > before
    )
    r.bank[1].deliver("a code for whoever had SIM 1 before", "Bank")
    await r.until(lambda: r.sms_count() >= 1)
    r.bank[0].deliver("the buyer's code")
    await r.hubs["alpha"].wait_for(1)
    texts = [p["text"] for p in r.hubs["alpha"].received]
    assert texts == ["the buyer's code"], texts
    assert r.hubs["alpha"].received[0]["phone"] == answer["number"]


async def test_a_sim_that_came_up_while_the_store_failed_is_sold_once_it_works(
    run: RunFactory,
) -> None:
    """Its SimReady is reported again (a back-off, never at once) until the store takes it."""
    reported = "SIM ready not taken; reporting it again"
    with captured_logs() as logs:  # before the modems bind their loggers
        r = await run(1)
        inventory, store = r.daemon.running.inventory, r.daemon.running.store
        sim = r.bank[0].sim
        assert sim is not None
        await set_writable(store, False)
        vm = r.bank[0]
        start = len(vm.commands)
        assert r.daemon.running.pool.reset(vm.link)

        def swept_after_reset() -> bool:
            after = vm.commands[start:]
            resets = [i for i, c in enumerate(after) if c.upper().startswith("AT+CFUN=1,1")]
            return bool(resets) and any(c.upper().startswith("AT+CMGL") for c in after[resets[0] :])

        await vm.wait_until(swept_after_reset, timeout=10)  # its SimReady was handled (and failed)
        assert not inventory.present(inventory.sims[sim.iccid])  # the write failed
        count = lambda: sum(e["event"] == reported for e in logs)  # noqa: E731
        already = count()
        assert already >= 1
        times: list[float] = []  # when each later refused report was seen (two of them)
        async with asyncio.timeout(15):
            while len(times) < 2:
                logs.changed.clear()
                await logs.changed.wait()
                times += [time.monotonic()] * (count() - already - len(times))
        await set_writable(store, True)
        await r.until(lambda: inventory.present(inventory.sims[sim.iccid]), timeout=10)
        await r.number("alpha", "mts")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and min(gaps) >= 0.5, gaps  # never a hot loop
    delays = [e["retry_in"] for e in logs if e["event"] == reported]
    assert all(b > a for a, b in itertools.pairwise(delays[:4])), delays  # a back-off
    levels = [e["log_level"] for e in logs if e["event"] == reported]
    assert levels[0] == "error" and set(levels[1:]) == {"debug"}  # one line for the episode
    [back] = [e for e in logs if e["event"] == "SIM ready taken again"]
    assert back["refused_reports"] == len(levels)
    assert not [e for e in logs if e["event"] == "event handler failed"]


# -- the inbox on its own: duplicates, pending parts across a restart, the timeout ------


def received(iccid: str, pdu: str, index: int = 1, at: float = 1_800_000_000.0) -> SmsReceived:
    return SmsReceived("/dev/x", iccid, "SM", index, pdu, decode_pdu(pdu), None, at)


async def _inbox(
    stores: Stores, name: str, clock: Clock, queued: list[Any]
) -> tuple[StoreBackend, Inbox]:
    store = await stores.open(name)
    inventory = Inventory(store, services=["vk"], release_after=600, clock=clock)
    await inventory.load()
    inbox = Inbox(store, inventory, reassembly_timeout=60, on_queued=queued.extend, clock=clock)
    await inbox.load()
    return store, inbox


async def test_a_message_read_twice_is_stored_once(stores: Stores) -> None:
    clock, queued = Clock(), []
    store, inbox = await _inbox(stores, "a", clock, queued)
    [pdu] = encode_deliver_parts("VK", "code 1")
    await inbox.accept(received("8970010000000000004", pdu, index=3))
    await inbox.accept(received("8970010000000000004", pdu, index=3))
    await inbox.accept(received("8970010000000000004", pdu.lower(), index=7))
    assert [s.text for s in await store.recent_sms()] == ["code 1"]
    assert inbox.duplicates == 2
    await store.close()


async def test_pending_parts_survive_a_restart(stores: Stores) -> None:
    clock, queued = Clock(), []
    text = "Длинное сообщение 😀 " * 8
    pdus = encode_deliver_parts("Bank", text, reference=77, reference_bits=16)
    assert len(pdus) == 3
    store, inbox = await _inbox(stores, "b", clock, queued)
    await inbox.accept(received("8970010000000000004", pdus[2], 1))
    await inbox.accept(received("8970010000000000004", pdus[0], 2))
    assert await store.recent_sms() == []
    await store.close()
    store, inbox = await _inbox(stores, "b", clock, queued)  # the daemon restarted
    await inbox.accept(received("8970010000000000004", pdus[0], 2))  # read again: a duplicate
    await inbox.accept(received("8970010000000000004", pdus[1], 3))
    [sms] = await store.recent_sms()
    assert sms.text == text and sms.complete
    assert await store.pending_parts() == []
    await store.close()


async def test_missing_part_is_given_up_on_after_the_timeout(stores: Stores) -> None:
    clock, queued = Clock(), []
    pdus = encode_deliver_parts("Bank", "x" * 400, reference=5)
    store, inbox = await _inbox(stores, "c", clock, queued)
    await inbox.accept(received("8970010000000000004", pdus[0], 1, at=clock.now))
    await inbox.accept(received("8970010000000000004", pdus[2], 2, at=clock.now))
    assert await inbox.expire() == 0
    clock.advance(61)
    assert await inbox.expire() == 1
    [sms] = await store.recent_sms()
    assert not sms.complete and sms.text == "x" * 153 + "x" * (400 - 306)
    assert await store.pending_parts() == []
    await store.close()


async def test_a_slow_hub_does_not_hold_up_another(run: RunFactory) -> None:
    r = await run(2, hubs=("alpha", "beta"))
    r.hubs["alpha"].answers = [hanging(3.0)] * 5  # answers nothing within its push_timeout
    await r.number("alpha", "mts")  # the SIM in modem 0
    await r.number("beta", "megafon")  # the SIM in modem 1
    r.bank[0].deliver("for the slow hub")
    await r.hubs["alpha"].wait_for(1)  # its push is now hanging
    r.bank[1].deliver("for the quick hub")
    await r.hubs["beta"].wait_for(1, timeout=2)
    assert r.hubs["beta"].received[0]["text"] == "for the quick hub"
    assert not any(r.hubs["alpha"].succeeded)


def test_onlinesim_answers() -> None:
    from supplier.pusher import judge

    assert judge("onlinesim", 200, b'{"status": "SUCCESS"}') == (
        "SUCCESS",
        "HTTP 200, status 'SUCCESS'",
    )
    for final in ("NO_OPERATION", "BAD_SERVICE", "IGNORED", "SERVICE_BAN"):
        assert judge("onlinesim", 200, f'{{"status": "{final}"}}'.encode())[0] == final
    assert judge("onlinesim", 500, b'{"status": "SUCCESS"}')[0] is None  # OnlineSim: HTTP 200 only
    assert judge("onlinesim", 200, b'{"status": "ERROR"}')[0] is None
    assert judge("smshub", 200, b'{"status": "SUCCESS"}')[0] == "SUCCESS"
    assert judge("smshub", 200, b'{"status": "NO_OPERATION"}')[0] is None  # retried for SMSHub
    assert judge("smshub", 200, b"<html>")[0] is None
    assert judge("smshub", 200, b"\xff\xfe")[0] is None
    assert judge("smshub", 200, b'["SUCCESS"]')[0] is None


async def test_a_sim_moved_to_another_modem_stays_on_sale_when_its_old_modem_reports_it_gone(
    run: RunFactory,
) -> None:
    # An operator moves SIM 0 into modem 1; modem 1 reports it ready before modem 0's
    # health check notices the SIM is gone. That late SimLost is about modem 0's slot,
    # not the SIM now in modem 1: it stays sellable.
    r = await run(2)
    sim = r.bank[0].sim
    assert sim is not None
    inventory = r.daemon.running.inventory
    moved = hub_sim_ready(0, port=r.bank[1].link)
    await r.daemon.on_pool_event(moved)
    assert inventory.sims[sim.iccid].port == r.bank[1].link
    assert inventory.present(inventory.sims[sim.iccid])
    await r.daemon.on_pool_event(SimLost(r.bank[0].link, sim.iccid, "SIM removed"))
    assert inventory.present(inventory.sims[sim.iccid])
    assert (await r.number("alpha", "mts"))["number"] == int(sim.number or 0)
