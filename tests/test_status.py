"""The status route over real HTTP: JSON, metrics, the token, operator actions."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from modems.events import SimLost, SimReady
from supplier.daemon import Daemon
from supplier.errors import SupplierError

from .hubkit import RunFactory, Running, error_status

TOKEN = "status-token-123"


def status_url(r: Running, path: str) -> str:
    assert r.daemon.running.status_listening is not None
    return f"http://127.0.0.1:{r.daemon.running.status_listening[1]}{path}"


async def get(
    r: Running, path: str, *, token: str | None = None, status: int = 200
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(status_url(r, path), headers=headers, allow_redirects=False) as response,
    ):
        assert response.status == status, await response.text()
        return dict(await response.json())


async def post(
    r: Running, path: str, body: Any, *, token: str | None = TOKEN, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            status_url(r, path),
            headers=headers,
            **({"json": body} if body is not None else {}),
            **kwargs,
        ) as response,
    ):
        return response.status, dict(await response.json(content_type=None))


def row(sims: dict[str, Any], iccid: str) -> dict[str, Any]:
    return next(s for s in sims["sims"] if s["iccid"] == iccid)


def first_sim(r: Running) -> tuple[str, str]:
    modem = r.bank[0]
    assert modem.sim is not None and modem.sim.number is not None
    return modem.sim.iccid, modem.sim.number


@pytest.mark.backends  # what the page reads from the store, on both
async def test_json_routes_show_the_inventory_without_texts_when_no_token(
    run: RunFactory,
) -> None:
    r = await run(modems=4)
    status = await get(r, "/api/status")
    assert status["totals"]["modems"] == 4
    assert status["totals"]["ready"] == 4
    assert status["totals"]["open_activations"] == 0
    assert status["undelivered"] == {"alpha": {"count": 0, "oldest": 0}}
    assert status["operator"] is False

    answer = await r.number("alpha", "any")
    iccid = next(s.sim.iccid for s in r.bank if s.sim and s.sim.number == str(answer["number"]))
    modem = r.bank.by_iccid(iccid)
    assert modem is not None
    modem.deliver("Your code: 4321", "VK")
    await r.hubs["alpha"].wait_for(1)

    sims = await get(r, "/api/sims")
    assert len(sims["sims"]) == 4
    mine = row(sims, iccid)
    assert mine["state"] == "active"
    assert mine["activation"]["hub"] == "alpha" and mine["activation"]["service"] == "vk"
    assert mine["number"] == str(answer["number"])
    assert mine["bars"] is not None and mine["registration"] == "home"
    assert mine["last_sms"] is not None
    assert mine["history"]["vk"]["offers"] == 1
    others = [s for s in sims["sims"] if s["iccid"] != iccid]
    assert {s["state"] for s in others} == {"ready"}

    detail = await get(r, f"/api/sims/{iccid}")
    assert detail["texts_shown"] is False
    assert [m["text"] for m in detail["sms"]] == [None]  # texts only behind the token
    assert detail["sms"][0]["deliveries"][0]["outcome"] == "SUCCESS"
    assert detail["activations"][0]["id"] == answer["activationId"]
    await get(r, "/api/sims/899999", status=404)

    # Without a token there are no operator actions at all.
    code, body = await post(r, f"/api/sims/{iccid}/sale", {"enabled": False}, token=None)
    assert code == 403 and body["status"] == "ERROR"


async def test_the_token_guards_every_route(run: RunFactory) -> None:
    r = await run(modems=2, status={"listen": "127.0.0.1:0", "token": TOKEN})
    for path in ("/api/status", "/api/sims", "/metrics"):
        await get(r, path, status=401)
        await get(r, path, token="wrong-token-000", status=401)
    assert (await get(r, "/api/status", token=TOKEN))["operator"] is True

    # unsafe=True: aiohttp's jar otherwise ignores cookies from IP addresses (browsers do not).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(status_url(r, "/"), allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"].startswith("/login")
        async with session.post(
            status_url(r, "/login"), data={"token": "nope", "next": "/"}, allow_redirects=False
        ) as response:
            assert response.status == 401
            assert "not the status token" in await response.text()
        assert not session.cookie_jar.filter_cookies(status_url(r, "/"))
        async with session.post(
            status_url(r, "/login"),
            data={"token": TOKEN, "next": "//evil.example/"},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/"  # never off-site
            cookie = response.cookies["supplier_session"]
            assert TOKEN not in cookie.value
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        async with session.get(status_url(r, "/api/sims")) as response:
            assert response.status == 200  # the cookie is enough
        async with session.get(status_url(r, "/")) as response:
            assert response.status == 200
            assert "SIM inventory" in await response.text()
        iccid = r.bank[0].sim.iccid  # type: ignore[union-attr]
        r.bank[0].deliver("secret code 999", "Bank")
        await r.until(lambda: r.sms_count() >= 1)
        async with session.get(status_url(r, f"/api/sims/{iccid}")) as response:
            detail = await response.json()
            assert detail["texts_shown"] is True
            assert [m["text"] for m in detail["sms"]] == ["secret code 999"]
        async with session.post(status_url(r, "/logout"), allow_redirects=False) as response:
            assert response.status == 303
        async with session.get(status_url(r, "/api/sims")) as response:
            assert response.status == 401


@pytest.mark.backends  # what the page reads from the store, on both
async def test_operator_actions(run: RunFactory) -> None:
    r = await run(modems=2, status={"listen": "127.0.0.1:0", "token": TOKEN})
    iccid, number = first_sim(r)
    inventory = r.daemon.running.inventory
    assert inventory is not None

    code, body = await post(r, f"/api/sims/{iccid}/sale", {"enabled": False})
    assert (code, body) == (200, {"status": "SUCCESS", "enabled": False})
    sims = await get(r, "/api/sims", token=TOKEN)
    assert row(sims, iccid)["state"] == "disabled"
    assert not inventory.present(inventory.sims[iccid])
    code, body = await post(r, f"/api/sims/{iccid}/sale", {"enabled": True})
    assert code == 200 and inventory.present(inventory.sims[iccid])

    code, body = await post(r, f"/api/sims/{iccid}/number", {"number": "+7 999 1234567"})
    assert code == 400 and "number" in body["error"]
    code, body = await post(r, f"/api/sims/{iccid}/number", {"number": "+79991234567"})
    assert (code, body["number"]) == (200, "79991234567")
    assert row(await get(r, "/api/sims", token=TOKEN), iccid)["number"] == "79991234567"
    store = r.daemon.running.store
    assert store is not None
    assert {s.iccid: s.number_manual for s in await store.load_sims()}[iccid] == "79991234567"
    code, body = await post(r, f"/api/sims/{iccid}/number", {"number": None})
    assert (code, body["number"]) == (200, number)  # back to what the SIM says

    code, body = await post(r, "/api/sims/8970000/sale", {"enabled": True})
    assert code == 404
    code, body = await post(r, f"/api/sims/{iccid}/sale", {"enabled": "no"})
    assert code == 400 and "enabled" in body["error"]
    code, body = await post(r, f"/api/sims/{iccid}/sale", None, data=b"enabled=0")
    assert code == 415
    code, body = await post(
        r, f"/api/sims/{iccid}/sale", {"enabled": False}, headers={"Origin": "http://evil.example"}
    )
    assert code == 403 and inventory.sims[iccid].enabled

    # Reset: the modem goes through a reset and its SIM comes back.
    port = r.bank[0].link
    before = len([e for e in r.events if isinstance(e, SimReady) and e.port == port])
    code, body = await post(r, "/api/modems/reset", {"port": port})
    assert code == 200
    await r.until(
        lambda: len([e for e in r.events if isinstance(e, SimReady) and e.port == port]) > before
    )
    assert any(isinstance(e, SimLost) and e.port == port for e in r.events)
    code, body = await post(r, "/api/modems/reset", {"port": "/dev/nothing"})
    assert code == 404


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics:\n{text}")


async def test_metrics(run: RunFactory) -> None:
    r = await run(modems=3)
    hub = r.hubs["alpha"]
    hub.answers = [error_status]  # the first push is refused: a backlog of one
    pusher = r.daemon.running.pusher
    assert pusher is not None and pusher.on_result is not None
    refused, accepted, record = asyncio.Event(), asyncio.Event(), pusher.on_result

    def on_result(hub_name: str, result: str) -> None:
        record(hub_name, result)  # the metrics' own hook first
        (accepted if result == "SUCCESS" else refused).set()

    pusher.on_result = on_result
    answer = await r.number("alpha", "any")
    await r.call("alpha", {"action": "GET_SERVICES"})
    await r.call("alpha", {"action": "FINISH_ACTIVATION", "activationId": 999, "status": 3})
    modem = next(m for m in r.bank if m.sim and m.sim.number == str(answer["number"]))
    modem.deliver("code 1", "VK")
    await asyncio.wait_for(refused.wait(), 10)
    async with aiohttp.ClientSession() as session:
        async with session.get(status_url(r, "/metrics")) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
        line = 'supplier_hub_requests_total{action="GET_NUMBER",hub="alpha",result="SUCCESS"}'
        assert metric(text, line) == 1
        fail = 'supplier_hub_requests_total{action="FINISH_ACTIVATION",hub="alpha",result="ERROR"}'
        assert metric(text, fail) == 1
        assert metric(text, "supplier_get_number_seconds_count") == 1
        assert metric(text, "supplier_sms_received_total") == 1
        assert metric(text, "supplier_sms_parts_received_total") == 1
        assert metric(text, 'supplier_pushes_total{hub="alpha",result="retry"}') == 1
        assert metric(text, 'supplier_push_backlog{hub="alpha"}') == 1
        assert metric(text, 'supplier_push_oldest_undelivered_seconds{hub="alpha"}') >= 0
        assert metric(text, 'supplier_modems{state="ready"}') == 3
        ready = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("supplier_sims{") and 'state="ready"' in line
        )
        active = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("supplier_sims{") and 'state="active"' in line
        )
        assert (ready, active) == (2, 1)
        assert f'supplier_modem_resets_total{{port="{r.bank[0].link}"}} 0.0' in text
        await asyncio.wait_for(accepted.wait(), 10)  # the retry succeeds
        async with session.get(status_url(r, "/metrics")) as response:
            text = await response.text()
        assert metric(text, 'supplier_pushes_total{hub="alpha",result="SUCCESS"}') == 1
        assert metric(text, 'supplier_push_backlog{hub="alpha"}') == 0
        # The SIMs carry their country: an operator slug exists in several countries.
        assert 'supplier_sims{country="russia",operator=' in text

        # A long message in three parts is one message received, three parts read.
        modem.deliver("x" * 400, "VK")
        await r.until(lambda: r.sms_count() >= 4)
        await r.hubs["alpha"].wait_for(2)
        async with session.get(status_url(r, "/metrics")) as response:
            text = await response.text()
        assert metric(text, "supplier_sms_received_total") == 2
        assert metric(text, "supplier_sms_parts_received_total") == 4


@pytest.mark.backends  # what the page reads from the store, on both
async def test_earnings_and_an_unplugged_sim(run: RunFactory) -> None:
    r = await run(modems=3)
    answer = await r.number("alpha", "any")
    await r.call(
        "alpha",
        {
            "action": "GET_NUMBER",
            "country": "russia",
            "operator": "any",
            "service": "tg",
            "sum": "7.25",
            "currency": 840,
        },
    )
    await r.call(
        "alpha",
        {"action": "FINISH_ACTIVATION", "activationId": answer["activationId"], "status": 3},
    )
    # A sum of 10 is money, not `1E+1` (Decimal.normalize() of 10).
    ten = await r.call(
        "alpha",
        {
            "action": "GET_NUMBER",
            "country": "russia",
            "operator": "any",
            "service": "wa",
            "sum": 10,
            "currency": 643,
        },
    )
    await r.call(
        "alpha", {"action": "FINISH_ACTIVATION", "activationId": ten["activationId"], "status": 3}
    )
    status = await get(r, "/api/status")
    assert status["earnings"] == [
        {"hub": "alpha", "currency": "?", "today": "5.00", "days7": "5.00", "days30": "5.00"},
        {"hub": "alpha", "currency": "RUB", "today": "10.00", "days7": "10.00", "days30": "10.00"},
    ]
    iccid = next(m.sim.iccid for m in r.bank if m.sim and m.sim.number == str(ten["number"]))
    detail = await get(r, f"/api/sims/{iccid}")
    assert [a["sum"] for a in detail["activations"]] == ["10.00"]
    iccid = next(m.sim.iccid for m in r.bank if m.sim and m.sim.number == str(answer["number"]))
    mine = row(await get(r, "/api/sims"), iccid)
    assert mine["earnings"] == {"?": "5.00"} and mine["earned_7d"] is True
    assert mine["history"]["vk"] == {"offers": 1, "sold": 1, "cancelled": 0, "returned": 0}

    gone = r.bank[2]
    assert gone.sim is not None
    gone.unplug()
    await r.until(
        lambda: any(isinstance(e, SimLost) and e.iccid == gone.sim.iccid for e in r.events)
    )  # type: ignore[union-attr]
    sims = await get(r, "/api/sims")
    assert row(sims, gone.sim.iccid)["state"] == "gone"
    assert (await get(r, "/api/status"))["totals"]["gone"] == 1


@pytest.mark.parametrize("bad", ["/api/sims/%00", "/api/sims/" + "9" * 5000])
async def test_odd_paths_get_a_json_answer(run: RunFactory, bad: str) -> None:
    r = await run(modems=1)
    async with (
        aiohttp.ClientSession() as session,
        session.get(status_url(r, bad)) as response,
    ):
        assert response.status in (404, 400)


def test_money_is_shown_as_money() -> None:
    from decimal import Decimal

    from supplier.status import money

    assert money(Decimal("1E+1")) == "10.00"  # what Decimal("10").normalize() gives
    assert money(Decimal("7.2500")) == "7.25"
    assert money(Decimal("0.5")) == "0.50"
    assert money(Decimal("0.0125")) == "0.0125"  # dollars come with 4 decimals
    assert money(Decimal("0.00001")) == "0.0000"
    assert money(Decimal(0)) == "0.00"


def test_status_view_needs_a_started_daemon() -> None:
    from supplier.config import parse_config

    config = parse_config(
        {"hubs": [{"name": "a", "key": "key-aaaa-1", "push_url": "http://127.0.0.1:1/"}]}
    )
    daemon = Daemon(config)
    with pytest.raises(SupplierError, match="the daemon is not running"):
        daemon.running.view.summary()  # the view exists only once the daemon has started
    assert daemon.status_line() == "starting"
