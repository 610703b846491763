"""The bank grid on the status route: JSON, operator actions, Prometheus, the page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web

from supplier.rotation import ModuleStatus
from supplier.status import Sessions, create_status_app

from .hubkit import Clock
from .test_banks_rotation import Bench, Factory, bench  # noqa: F401 - the fixture
from .test_status_security import serve

TOKEN = "status-token-for-banks-0001"


def status_url(running: Bench) -> str:
    assert running.daemon.running.status_listening is not None
    return f"http://127.0.0.1:{running.daemon.running.status_listening[1]}"


async def get(running: Bench, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
        session.get(status_url(running) + path) as response,
    ):
        body = await response.json() if "json" in response.content_type else await response.text()
        return response.status, body


async def post(running: Bench, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
        session.post(status_url(running) + path, json=body) as response,
    ):
        return response.status, dict(await response.json())


async def banks_with_sessions(make: Factory, token: str) -> tuple[Bench, Clock, web.AppRunner, str]:
    """One bank of two slots, and a status app (runner, URL) whose sessions run on `clock`.

    Sessions last an hour: `clock.advance(3601)` ends the one a test logged in with.
    """
    running = await make(
        1,
        2,
        rotation={"dwell": "1h", "settle": "2s", "grace": "100ms"},
        config={"status": {"listen": "127.0.0.1:0", "token": token}},
    )
    clock = Clock(1000.0)
    app = create_status_app(
        running.daemon.running.view,
        running.daemon.metrics,
        token,
        sessions=Sessions(ttl=3600, clock=clock),
    )
    runner, url = await serve(app)
    return running, clock, runner, url


async def test_grid_actions_and_metrics(bench: Factory) -> None:  # noqa: F811
    running = await bench(
        1,
        3,
        empty_slots=frozenset({(1, 3)}),
        rotation={"dwell": "1h", "settle": "2s", "grace": "100ms"},
        config={"status": {"listen": "127.0.0.1:0", "token": TOKEN}},
    )
    rotation = running.rotation
    module = rotation.module("pool1", 1)
    await running.until(lambda: module.status is ModuleStatus.IN and running.sellable(1))

    # Switch now, to slot 2: the module moves, its SIM is learned; the grid shows it "in".
    status, answer = await post(running, "/api/banks/pool1/modules/1/switch", {"slot": 2})
    assert (status, answer) == (200, {"status": "SUCCESS"})
    await running.until(lambda: module.row.slot == 2 and running.sellable(1))
    status, grid = await get(running, "/api/banks")
    assert status == 200
    (bank,) = grid["banks"]
    (row,) = bank["modules"]
    states = {cell["slot"]: cell["state"] for cell in row["slots"]}
    assert states[2] == "in"
    assert row["slots"][1]["iccid"] == running.bank.sims[(1, 2)].iccid  # type: ignore[union-attr]
    assert bank["switches"]["ok"] >= 1

    # Switch to the empty slot: marked empty; hold the module; take slot 1 out.
    await post(running, "/api/banks/pool1/modules/1/switch", {"slot": 3})
    await running.until(
        lambda: rotation.slot_state(module, rotation.slots[("pool1", 1, 3)]) == "empty"
    )
    assert (await post(running, "/api/banks/pool1/modules/1/hold", {"held": True}))[0] == 200
    await running.until(lambda: module.status is ModuleStatus.HELD)
    assert (await post(running, "/api/banks/pool1/modules/1/slots/1/rotation", {"enabled": False}))[
        0
    ] == 200
    assert rotation.slots[("pool1", 1, 1)].in_rotation is False

    # Bad input: clear errors, nothing changes.
    assert (await post(running, "/api/banks/pool1/modules/9/hold", {"held": True}))[0] == 404
    status, answer = await post(running, "/api/banks/pool1/modules/1/switch", {"slot": 99})
    assert status == 400 and "expected 1-3" in answer["error"]
    status, answer = await post(running, "/api/banks/pool1/modules/1/hold", {"held": "yes"})
    assert status == 400 and answer["status"] == "ERROR"

    status, text = await get(running, "/metrics")
    assert 'supplier_bank_switches_total{bank="pool1",result="ok"}' in text
    assert 'supplier_bank_slots{bank="pool1",state="empty"} 1.0' in text
    status, page = await get(running, "/banks")
    assert status == 200 and 'src="/banks.js"' in page and "<script>" not in page
    status, script = await get(running, "/banks.js")
    assert status == 200 and "/api/banks" in script


async def test_actions_need_the_token(bench: Factory) -> None:  # noqa: F811
    running = await bench(1, 2, rotation={"dwell": "1h", "settle": "2s", "grace": "100ms"})
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            status_url(running) + "/api/banks/pool1/modules/1/hold", json={"held": True}
        ) as response,
    ):
        assert response.status == 403
    assert running.rotation.module("pool1", 1).row.held is False


async def test_an_expired_or_missing_session_is_treated_as_on_the_other_pages(
    bench: Factory,  # noqa: F811
) -> None:
    """/banks and /api/banks answer as / and /api/sims do; its scripts are served as index.js."""
    running, clock, runner, url = await banks_with_sessions(bench, TOKEN)

    async def answers(client: aiohttp.ClientSession, path: str) -> tuple[int, str, str]:
        async with client.get(url + path, allow_redirects=False) as response:
            body = await response.text()
            kind = response.content_type
            if response.status == 401:
                assert json.loads(body)["status"] == "ERROR"
            return response.status, response.headers.get("Location", ""), kind

    def as_other_pages(answered: dict[str, tuple[int, str, str]]) -> None:
        # A page: to the login form, which comes back here; its data: 401 JSON.
        for page in ("/", "/banks"):
            status, location, _ = answered[page]
            assert (status, location.partition("?")[0]) == (303, "/login"), page
            assert parse_qs(urlsplit(location).query)["next"] == [page], page
        for data in ("/api/sims", "/api/banks"):
            assert answered[data] == (401, "", "application/json"), data

    paths = ("/", "/banks", "/api/sims", "/api/banks")
    scripts = ("/index.js", "/banks.js", "/session.js")
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            # No session at all; the scripts (no data in them) come without one, as index.js.
            as_other_pages({path: await answers(browser, path) for path in paths})
            for script in scripts:
                assert await answers(browser, script) == (200, "", "text/javascript"), script
            # Logged in: everything answers.
            async with browser.post(
                f"{url}/login", data={"token": TOKEN, "next": "/banks"}, allow_redirects=False
            ) as response:
                assert (response.status, response.headers["Location"]) == (303, "/banks")
            for path in paths:
                assert (await answers(browser, path))[0] == 200, path
            # The session runs out: the same answers as with none.
            clock.advance(3601)
            as_other_pages({path: await answers(browser, path) for path in paths})
            # ?next= keeps the grid's query: the login form brings the operator back to it.
            async with browser.get(url + "/banks?refresh=1", allow_redirects=False) as response:
                location = urlsplit(response.headers["Location"])
                assert parse_qs(location.query)["next"] == ["/banks?refresh=1"]
    finally:
        await runner.cleanup()


def test_every_page_takes_an_expired_session_to_the_login_form_with_one_helper() -> None:
    """session.js is loaded before each page's script, and no script keeps its own copy."""
    folder = Path(__file__).resolve().parents[1] / "supplier" / "static"
    for page, script in (
        ("index.html", "index.js"),
        ("sim.html", "sim.js"),
        ("banks.html", "banks.js"),
    ):
        html = (folder / page).read_text()
        assert html.index('src="/session.js"') < html.index(f'src="/{script}"'), page
    helper = (folder / "session.js").read_text()
    assert "/login?next=" in helper and "401" in helper
    for script in ("index.js", "sim.js", "banks.js", "ussd.js"):
        text = (folder / script).read_text()
        assert "/login" not in text and "fetch(" not in text, script
