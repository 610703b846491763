"""The bank grid on the status route: JSON, operator actions, Prometheus, the page."""

from __future__ import annotations

from typing import Any

import aiohttp

from supplier.rotation import ModuleStatus

from .test_banks_rotation import Bench, Factory, bench  # noqa: F401 - the fixture

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
