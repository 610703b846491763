"""Number discovery by USSD in the daemon: a bank of SIMs that do not know their numbers
becomes sellable with nobody typing one; learned once per SIM; never over a manual or
config number; an operator's SMS answer is not pushed; conflicts held back; polite pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modems.at import line_name
from modems.emulator import VirtualModemBank, make_sim
from modems.emulator.ussd_commands import NUMBER_SERVICES, NumberService
from modems.events import SimReady
from modems.ussd import parse_cusd
from supplier.balances import parse_balance
from supplier.config import ConfigError, NetworkOverride, load_config, parse_config
from supplier.daemon import Daemon
from supplier.upkeep import NUMBER_USSD, number_in

from .conftest import BankFactory, shared_dir
from .hubkit import FakeHub, Running, make_config
from .pg import Stores

FAST_USSD = {
    "spread": "200ms",
    "pace": "50ms",
    "interval": "500ms",
    "retry": "500ms",
    "timeout": "2s",
    "sms_window": "30s",
}


def test_number_in_answers() -> None:
    cases = {
        ("Ваш номер +7 (916) 123-45-67.", "russia"): "79161234567",
        ("Vash nomer 89161234567", "russia"): "79161234567",
        ("Vash nomer 8-916-123-45-67", "russia"): "79161234567",
        ("Vash nomer 9161234567", "russia"): "79161234567",
        ("Vash nomer: 0501234567", "ukraine"): "380501234567",
        ("Your number is +380 (50) 123-45-67", "ukraine"): "380501234567",
        ("Vash nomer +77011234567", "kazakhstan"): "77011234567",
        ("Vash nomer 7011234567", "kazakhstan"): "77011234567",
        ("Your number is 08031234567", "nigeria"): "2348031234567",
        ("Your number is 2348031234567.", "nigeria"): "2348031234567",
        ("Balance 107.93 rub, valid until 21.05.2016", "russia"): None,
        ("Zapros prinyat. Ozhidaite SMS.", "russia"): None,
        ("Call 0800 555 for help", "russia"): None,  # not a Russian mobile number's shape
        ("Your number +4915783647410", None): "4915783647410",
        ("Your number 015783647410", None): None,  # no country: only international forms
    }
    for (text, country), expected in cases.items():
        assert number_in(text, country) == expected, text


def test_defaults_table_covers_the_emulated_networks() -> None:
    # The emulator's networks answer the codes the built-in table sends.
    for mccmnc, service in NUMBER_SERVICES.items():
        assert NUMBER_USSD[mccmnc] == service.code, mccmnc


BankRun = Callable[..., Awaitable[Running]]


@pytest.fixture
async def bank_without_numbers(
    tmp_path: Path, make_bank: BankFactory, stores: Stores
) -> AsyncIterator[BankRun]:
    daemons: list[tuple[Daemon, FakeHub]] = []

    async def factory(
        count: int = 8,
        prepare: Callable[[VirtualModemBank], None] | None = None,
        bank: VirtualModemBank | None = None,
        **extra: Any,
    ) -> Running:
        if bank is None:
            bank = await make_bank(count)
            for vm in bank:
                assert vm.sim is not None
                vm.sim.number = None  # neither AT+CNUM nor the phonebook knows it
            if prepare is not None:
                prepare(bank)
        hub = FakeHub()
        await hub.start()
        extra.setdefault("ussd", FAST_USSD)
        url = (await stores.storage()).url  # PostgreSQL where the test runs on both backends
        daemon = Daemon(make_config(tmp_path, bank, {"alpha": hub}, storage_url=url, **extra))
        await daemon.start()
        daemons.append((daemon, hub))
        running = Running(daemon, bank, {"alpha": hub})
        assert daemon.running.upkeep is not None
        daemon.running.upkeep.subscribe(running._changed.set)  # learned numbers wake `until`
        await running.ready(len(bank))
        return running

    yield factory
    for daemon, hub in daemons:
        await daemon.stop()
        await hub.stop()


def _sellable(r: Running) -> set[str]:
    inventory = r.daemon.running.inventory
    assert inventory is not None
    return {s.iccid for s in inventory.sims.values() if inventory.present(s)}


async def _until_sellable(r: Running, count: int, timeout: float = 20.0) -> None:
    await r.until(lambda: len(_sellable(r)) >= count, timeout)


async def _status(r: Running, path: str) -> Any:
    assert r.daemon.running.status_listening is not None
    url = f"http://127.0.0.1:{r.daemon.running.status_listening[1]}{path}"
    token = r.daemon.config.status.token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        assert response.status == 200
        body = await response.json()
        return body["sims"] if path == "/api/sims" else body


async def test_a_bank_without_numbers_becomes_sellable(bank_without_numbers: BankRun) -> None:
    r = await bank_without_numbers(8)  # every network, every vendor profile
    # No SIM said its number: every one was learned from its network.
    assert all(e.sim.number is None for e in r.events if isinstance(e, SimReady))
    inventory = r.daemon.running.inventory
    assert inventory is not None
    await r.daemon.running.view.sims()  # the page works while numbers are unknown
    await _until_sellable(r, 8)
    for vm in r.bank:
        assert vm.sim is not None and vm.sim.network_number is not None
        assert inventory.sims[vm.sim.iccid].number == vm.sim.network_number
        assert vm.ussd.open_menu is None  # Tele2's menu was closed
    tele2 = next(vm for vm in r.bank if vm.sim is not None and vm.sim.operator == "25020")
    assert tele2.ussd.closes >= 1
    # Beeline answered by SMS: taken as the answer, stored for no hub, pushed nowhere.
    beeline = next(vm for vm in r.bank if vm.sim is not None and vm.sim.operator == "25099")
    assert beeline.sim is not None
    await beeline.wait_until(lambda: not beeline.stored(), timeout=5)  # read and deleted
    assert r.daemon.running.store is not None
    assert await r.daemon.running.store.sms_of(beeline.sim.iccid) == []
    assert r.hubs["alpha"].received == []
    # Sold like any other: the number the network gave, to a hub over HTTP.
    answer = await r.number("alpha", "beeline")
    assert str(answer["number"]) == beeline.sim.network_number
    sims = {row["iccid"]: row for row in await _status(r, "/api/sims")}
    assert all(sims[vm.sim.iccid]["number_note"] is None for vm in r.bank if vm.sim)


@pytest.mark.backends
async def test_learned_once_per_sim(bank_without_numbers: BankRun, stores: Stores) -> None:
    r = await bank_without_numbers(2)
    await _until_sellable(r, 2)
    asked = [list(vm.ussd.requests) for vm in r.bank]
    await r.daemon.stop()
    store = await stores.open()  # the daemon's own store
    try:
        learned = await store.learned_numbers()
    finally:
        await store.close()
    assert {learned[vm.sim.iccid] for vm in r.bank if vm.sim} == {
        vm.sim.network_number for vm in r.bank if vm.sim
    }
    again = await bank_without_numbers(bank=r.bank)
    await _until_sellable(again, 2, 5)
    assert [list(vm.ussd.requests) for vm in r.bank] == asked  # not asked a second time


async def test_manual_and_config_numbers_win(bank_without_numbers: BankRun) -> None:
    configured = "79990000001"
    iccid = make_sim(0).iccid
    r = await bank_without_numbers(2, sims={iccid: {"number": configured}})
    await _until_sellable(r, 2)
    inventory = r.daemon.running.inventory
    assert inventory is not None
    assert inventory.sims[iccid].number == configured
    assert r.bank[0].ussd.requests == []  # a SIM whose number is known is never asked
    # The operator's number wins over a learned one, and a learned one never displaces it.
    other = r.bank[1].sim
    assert other is not None and other.network_number is not None
    assert inventory.sims[other.iccid].number == other.network_number
    await inventory.set_number(other.iccid, "79260008888")
    assert inventory.sims[other.iccid].number == "79260008888"
    inventory.learned_number(other.iccid, other.network_number)
    assert inventory.sims[other.iccid].number == "79260008888"


async def test_no_code_for_the_network_is_shown(bank_without_numbers: BankRun) -> None:
    def prepare(bank: VirtualModemBank) -> None:
        sim = bank[0].sim
        assert sim is not None
        sim.imsi = "25077" + sim.imsi[5:]

    r = await bank_without_numbers(2, prepare=prepare)
    await _until_sellable(r, 1)
    sim = r.bank[0].sim
    assert sim is not None
    rows = {row["iccid"]: row for row in await _status(r, "/api/sims")}
    assert rows[sim.iccid]["state"] == "no_number"
    assert rows[sim.iccid]["number_note"] == "number unknown: no USSD code for 250-77"
    assert r.bank[0].ussd.requests == []
    # A code in the config (SIGHUP) and it is asked and sold.
    config = r.daemon.config.model_copy(
        update={"networks": {"25077": NetworkOverride(number_ussd="*155#")}}
    )
    sim.ussd = NumberService("*155#", "Vash nomer {plus}")
    await r.daemon.reload(config)
    await _until_sellable(r, 2)


async def test_silence_backs_off_and_never_delays_the_rest(bank_without_numbers: BankRun) -> None:
    def prepare(bank: VirtualModemBank) -> None:
        sim = bank[0].sim
        assert sim is not None
        sim.ussd = NumberService(NUMBER_SERVICES[sim.operator].code, "", how="never")

    r = await bank_without_numbers(
        2, prepare=prepare, ussd={**FAST_USSD, "timeout": "1s", "interval": "300ms"}
    )
    silent = r.bank[0]
    await silent.wait_until(lambda: len(silent.ussd.requests) >= 3, timeout=15)
    times = silent.ussd.request_times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[1] - gaps[0] > 0.3, gaps  # the back-off doubles (0.5 s, then 1 s, + jitter)
    assert silent.ussd.closes >= 2  # each silent dialogue was ended
    assert len(_sellable(r)) == 1  # the other SIM was not held up
    assert silent.sim is not None and r.daemon.running.upkeep is not None
    iccid, upkeep = silent.sim.iccid, r.daemon.running.upkeep
    await r.until(lambda: "no answer to" in (upkeep.note(iccid) or ""))
    rows = {row["iccid"]: row for row in await _status(r, "/api/sims")}
    assert "no answer to *111*0887#; next try in" in rows[iccid]["number_note"]


async def test_requests_are_spread_never_a_burst(bank_without_numbers: BankRun) -> None:
    r = await bank_without_numbers(
        8,
        ussd={**FAST_USSD, "pace": "150ms", "spread": "100ms", "retry": "60s", "interval": "60s"},
    )
    await _until_sellable(r, 8)
    assert all(len(vm.ussd.requests) == 1 for vm in r.bank)  # each asked once
    assert r.daemon.running.upkeep is not None
    starts = sorted(r.daemon.running.upkeep.last_request.values())  # on the daemon's clock
    assert len(starts) == 8
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.149, gaps  # ussd.pace: one request started per 150 ms


async def test_two_sims_claiming_one_number(bank_without_numbers: BankRun) -> None:
    def prepare(bank: VirtualModemBank) -> None:
        first, second = bank[0].sim, bank[1].sim
        assert first is not None and second is not None
        second.network_number = first.network_number  # the operator says the same number

    r = await bank_without_numbers(3, prepare=prepare)
    inventory = r.daemon.running.inventory
    assert inventory is not None
    first, second = (vm.sim for vm in r.bank[:2])
    assert first is not None and second is not None
    await r.until(
        lambda: (
            inventory.sims[first.iccid].number is not None
            and inventory.sims[second.iccid].number is not None
        )
    )
    await _until_sellable(r, 1)
    third = r.bank[2].sim
    assert third is not None and _sellable(r) == {third.iccid}
    rows = {row["iccid"]: row for row in await _status(r, "/api/sims")}
    for iccid, other in ((first.iccid, second.iccid), (second.iccid, first.iccid)):
        assert rows[iccid]["state"] == "number_conflict"
        assert other in rows[iccid]["number_note"]
    # Resolved by the operator: the other SIM's number set by hand.
    await inventory.set_number(second.iccid, "79260009999")
    assert _sellable(r) == {vm.sim.iccid for vm in r.bank if vm.sim}


async def test_unanswered_ussd_leaves_cmti_to_hub_latency_unchanged(run) -> None:  # type: ignore[no-untyped-def]
    r = await run(1)
    vm = r.bank[0]
    assert vm.sim is not None and r.daemon.running.pool is not None
    vm.sim.ussd = NumberService("*111#", "never", how="never")
    modem = r.daemon.running.pool.get(vm.link)
    assert modem is not None
    await r.number("alpha", "mts")
    hub = r.hubs["alpha"]

    async def latency() -> float:
        before = len(hub.received)
        vm.deliver(f"Your code: {before}", "VK")
        cmti = vm.cmti_log[-1][0]
        await hub.wait_for(before + 1, timeout=5)
        return hub.times[-1] - cmti  # both on the loop's monotonic clock

    quiet = sorted([await latency() for _ in range(3)])
    pending = asyncio.create_task(modem.ussd.request("*111#", timeout=5))
    await vm.wait_until(lambda: vm.ussd.requests == ["*111#"], timeout=5)
    during = sorted([await latency() for _ in range(3)])
    assert not pending.done()  # all three SMS went through while the answer was awaited
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending
    assert during[1] < max(0.25, quiet[1] * 5), (quiet, during)


# -- balances ------------------------------------------------------------------------

TOKEN = "status-token-ussd"


async def _post(r: Running, path: str, body: Any, token: str | None = TOKEN) -> tuple[int, Any]:
    assert r.daemon.running.status_listening is not None
    url = f"http://127.0.0.1:{r.daemon.running.status_listening[1]}{path}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


async def _get(r: Running, path: str) -> str:
    assert r.daemon.running.status_listening is not None
    url = f"http://127.0.0.1:{r.daemon.running.status_listening[1]}{path}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        assert response.status == 200
        return await response.text()


def test_balance_texts() -> None:
    cases = {
        "Balans: 100.50 rub.": ("100.50", "RUB"),
        "Ваш баланс -12,40 р. Пополните счет": ("-12.40", "RUB"),
        "Balance: $5.20": ("5.20", "USD"),
        "Your balance is 350": ("350", None),
        "Для справки о балансе наберите *105#. Услуга бесплатна.": None,
    }
    for text, expected in cases.items():
        found = parse_balance(text)
        got = (str(found.amount), found.currency) if found is not None else None
        assert got == expected, text


def test_balances_in_the_recorded_answers() -> None:
    folder = shared_dir("data", "real-modem-replies", "at-ussd")
    expected = {
        "02-E160.dump": ("5.78", "EUR"),
        "03-unknown.dump": ("3.00", "EUR"),
        "Uissue358-Quectel_M35.dump": ("7777", "HUF"),  # not the 0Ft allowance before it
        "issue377-HE910-D.dump": ("107.93", "LYD"),
        "issue109-E3276.dump": None,  # "dial *105# for your balance": no amount
        "issue178-dell.dump": None,
    }
    for name, want in expected.items():
        args = next(
            named[1]
            for line in (folder / name).read_text(encoding="latin-1").splitlines()
            if (named := line_name(line.strip())) is not None and named[0] == "+CUSD"
        )
        found = parse_balance(parse_cusd(args).text)
        assert ((str(found.amount), found.currency) if found else None) == want, name


async def test_balances_read_stored_shown_and_after_a_sale(bank_without_numbers: BankRun) -> None:
    def prepare(bank: VirtualModemBank) -> None:
        for vm, balance in zip(bank, ("12.50", "250.00"), strict=True):
            assert vm.sim is not None
            vm.sim.balance = balance
            vm.sim.number = vm.sim.network_number  # numbers known: only balances asked

    r = await bank_without_numbers(
        2,
        prepare=prepare,
        networks={
            "25001": {"balance_ussd": "*100#"},
            "25002": {"balance_ussd": "*100#"},
        },
        ussd={**FAST_USSD, "low_balance": 50, "interval": "1500ms"},
        status={"listen": "127.0.0.1:0", "token": TOKEN},
    )
    upkeep = r.daemon.running.upkeep
    assert upkeep is not None
    iccids = [vm.sim.iccid for vm in r.bank if vm.sim]
    await r.until(lambda: all(i in upkeep.balances for i in iccids))
    assert [vm.ussd.requests for vm in r.bank] == [["*100#"], ["*100#"]]
    low, high = iccids
    rows = {row["iccid"]: row for row in await _status(r, "/api/sims")}
    assert rows[low]["balance"]["amount"] == "12.50" and rows[low]["balance"]["currency"] == "RUB"
    assert rows[low]["balance"]["low"] is True and rows[high]["balance"]["low"] is False
    assert abs(rows[low]["balance"]["read"] - r.daemon.clock()) < 60
    metrics = await _get(r, "/metrics")
    assert f'supplier_sim_balance{{currency="RUB",iccid="{low}"}} 12.5' in metrics
    assert r.daemon.running.store is not None
    stored = await r.daemon.running.store.balances()
    assert stored[high].amount == "250.00"
    # A sale (FINISH 3) reads the balance again, once the polite interval has passed.
    r.bank[0].sim.balance = "7.50"  # type: ignore[union-attr]
    answer = await r.number("alpha", "mts")
    await r.call(
        "alpha",
        {"action": "FINISH_ACTIVATION", "activationId": answer["activationId"], "status": 3},
    )
    await r.until(lambda: upkeep.balances[low].amount == "7.50")
    assert r.bank[0].ussd.requests == ["*100#", "*100#"]
    gap = r.bank[0].ussd.request_times[1] - r.bank[0].ussd.request_times[0]
    assert gap >= 1.4  # ussd.interval: one request per SIM per 1.5 s here


# -- the operator's console ------------------------------------------------------------


async def test_console_over_http(bank_without_numbers: BankRun) -> None:
    def prepare(bank: VirtualModemBank) -> None:
        for vm in bank:
            assert vm.sim is not None
            vm.sim.number = vm.sim.network_number

    r = await bank_without_numbers(
        4, prepare=prepare, status={"listen": "127.0.0.1:0", "token": TOKEN}
    )
    tele2 = r.bank[3]
    assert tele2.sim is not None and tele2.sim.operator == "25020"
    path = f"/api/sims/{tele2.sim.iccid}/ussd"
    code, body = await _post(r, path, {"code": "*100#"})
    assert code == 200 and body["text"] == "Balans: 100.00 rub." and body["menu"] is False
    code, body = await _post(r, path, {"code": "*201#"})
    assert code == 200 and body["menu"] is True and "+79500000003" in body["text"]
    code, body = await _post(r, path, {"reply": "1"})
    assert code == 200 and body["ussd_status"] == 2 and body["menu"] is False
    await _post(r, path, {"code": "*201#"})
    code, body = await _post(r, path, {"close": True})
    assert code == 200 and body["closed"] is True and tele2.ussd.open_menu is None
    # Token only; bad input is a clear error; an unknown SIM is 404.
    assert (await _post(r, path, {"code": "*100#"}, token=None))[0] == 401
    for bad in ({"code": "*100#; AT+CMGD=1"}, {}, {"code": "*100#", "reply": "1"}, {"code": 5}):
        code, body = await _post(r, path, bad)
        assert code == 400 and body["status"] == "ERROR", bad
    code, body = await _post(r, "/api/sims/8970000000000000000/ussd", {"code": "*100#"})
    assert code == 404


async def test_console_from_the_command_line(bank_without_numbers: BankRun, tmp_path: Path) -> None:
    def prepare(bank: VirtualModemBank) -> None:
        for vm in bank:
            assert vm.sim is not None
            vm.sim.number = vm.sim.network_number

    r = await bank_without_numbers(
        1, prepare=prepare, status={"listen": "127.0.0.1:0", "token": TOKEN}
    )
    assert r.daemon.running.status_listening is not None and r.bank[0].sim is not None
    config = tmp_path / "cli.yaml"
    config.write_text(
        "hubs: [{name: alpha, key: alpha-key-0001, push_url: 'http://127.0.0.1:9/push'}]\n"
        f"status: {{listen: '127.0.0.1:{r.daemon.running.status_listening[1]}', token: {TOKEN}}}\n"
        f"storage: {{path: '{tmp_path / 'other.db'}'}}\n"
    )
    iccid = r.bank[0].sim.iccid
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supplier", "ussd", "--config", str(config), iccid, "*100#",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err
    assert out.decode().strip() == "Balans: 100.00 rub."
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supplier", "ussd", "--config", str(config), "8970", "*100#",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1 and err.decode().count("\n") == 1
    assert "no SIM with ICCID 8970" in err.decode()


def test_config_keys_are_checked() -> None:

    base = {"hubs": [{"name": "a", "key": "k" * 12, "push_url": "http://127.0.0.1:1/"}]}
    config = parse_config({**base, "networks": {"25077": {"number_ussd": "*100*1#"}}})
    assert config.networks["25077"].number_ussd == "*100*1#"
    assert config.networks["25077"].country is None
    for networks, words in (
        ({"25077": {"number_ussd": "100"}}, ("networks.25077.number_ussd", "'100'", "USSD code")),
        ({"25077": {"balance_ussd": "*1#; AT"}}, ("networks.25077.balance_ussd", "USSD code")),
        ({"25077": {"country": "russia"}}, ("networks.25077", "both country and operator")),
    ):
        with pytest.raises(ConfigError) as caught:
            parse_config({**base, "networks": networks})
        for word in words:
            assert word in str(caught.value), (word, str(caught.value))
    with pytest.raises(ConfigError, match=r"ussd\.low_balance"):
        parse_config({**base, "ussd": {"low_balance": "lots"}})
    example = load_config(Path(__file__).resolve().parents[1] / "config.example.yaml")
    assert example.ussd.timeout == 30.0 and example.ussd.interval == 300.0


async def test_a_hub_sms_is_never_taken_as_the_number_answer(bank_without_numbers: BankRun) -> None:
    # The network said "wait for an SMS"; before one came, an operator typed the number
    # and a hub bought it. The service's SMS names a help line (8-800-…), a number of the
    # country's plan: it is the hub's, never the upkeep's answer (nor a learned number).
    def prepare(bank: VirtualModemBank) -> None:
        sim = bank[0].sim
        assert sim is not None
        sim.ussd = NumberService(
            NUMBER_SERVICES[sim.operator].code,
            "Zapros prinyat. Ozhidaite SMS.",
            how="sms",
            sms_sender="MTS",
            sms_text="Vash nomer {national}",
            sms_delay=3600.0,  # the operator's SMS never comes in this test
        )

    r = await bank_without_numbers(
        1,
        prepare=prepare,
        ussd={**FAST_USSD, "retry": "60s", "interval": "60s", "sms_window": "300s"},
        status={"listen": "127.0.0.1:0", "token": TOKEN},
    )
    vm, upkeep = r.bank[0], r.daemon.running.upkeep
    assert vm.sim is not None
    iccid = vm.sim.iccid
    await r.until(lambda: "waiting for an SMS" in (upkeep.note(iccid) or ""))
    code, body = await _post(r, f"/api/sims/{iccid}/number", {"number": "79161112233"})
    assert code == 200, body
    answer = await r.number("alpha", "mts")
    assert str(answer["number"]) == "79161112233"
    vm.deliver("VK: kod 4821. Podderzhka 8-800-555-35-35", "VK")
    hub = r.hubs["alpha"]
    await hub.wait_for(1, timeout=10)
    assert "kod 4821" in hub.received[0]["text"]
    assert r.daemon.running.inventory.sims[iccid].learned_number is None
