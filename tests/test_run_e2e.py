"""`supplier run` as a real process on the virtual modem bank: the hub's whole path, and kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modems.emulator import VirtualModemBank

from .hubkit import FakeHub

ROOT = Path(__file__).resolve().parents[1]
KEY = "e2e-key-0000001"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """`supplier run` in a subprocess; its JSON log lines are read as they come."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self.lines.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "supplier",
            "--log-level",
            "info",
            "run",
            "--config",
            str(self.config),
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            try:
                self.lines.append(json.loads(line))
            except json.JSONDecodeError:
                self.lines.append({"event": line.decode(errors="replace").strip()})
            self._changed.set()

    def count(self, event: str, **fields: Any) -> int:
        return sum(
            1
            for line in self.lines
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
        )

    async def until(self, event: str, n: int = 1, timeout: float = 30.0, **fields: Any) -> None:
        async with asyncio.timeout(timeout):
            while self.count(event, **fields) < n:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise AssertionError(f"daemon exited {self.proc.returncode}: {self.lines[-5:]}")
                self._changed.clear()
                await self._changed.wait()

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 20)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return code


@pytest.fixture
async def setup(
    tmp_path: Path, make_bank
) -> AsyncIterator[tuple[VirtualModemBank, FakeHub, Process, str]]:  # type: ignore[no-untyped-def]
    bank = await make_bank(4)
    hub = FakeHub()
    await hub.start()
    port = free_port()
    config = tmp_path / "supplier.yaml"
    config.write_text(
        f"""
server: {{listen: "127.0.0.1:{port}", path: "/agent"}}
status: {{listen: "127.0.0.1:0"}}
hubs:
  - {{name: smshub, key: "{KEY}", push_url: "{hub.url}", retry_interval: 300ms, push_timeout: 2s}}
modems: {{ports: ["{bank.pattern}"], health_interval: 1s}}
services: [vk, tg, wa]
storage: {{path: "{tmp_path / "db" / "supplier.db"}"}}
activation: {{release_after: 20m}}
"""
    )
    process = Process(config)
    yield bank, hub, process, f"http://127.0.0.1:{port}/agent"
    if process.proc is not None and process.proc.returncode is None:
        await process.stop(signal.SIGKILL)
    await hub.stop()


async def call(url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"key": KEY, **body}) as response,
    ):
        assert response.status == 200
        return dict(await response.json())


async def test_get_services_get_number_sms_finish_over_http(setup) -> None:  # type: ignore[no-untyped-def]
    bank, hub, process, url = setup
    await process.start()
    await process.until("SIM in inventory", 4)
    services = await call(url, {"action": "GET_SERVICES"})
    russia = {c["country"]: c["operatorMap"] for c in services["countryList"]}["russia"]
    assert russia == {
        op: {"vk": 1, "tg": 1, "wa": 1} for op in ("mts", "megafon", "beeline", "tele2")
    }
    answer = await call(
        url,
        {
            "action": "GET_NUMBER",
            "country": "russia",
            "operator": "beeline",
            "service": "tg",
            "sum": 3.5,
            "currency": 643,
        },
    )
    assert answer["status"] == "SUCCESS"
    modem = bank[2]
    assert modem.sim is not None and answer["number"] == int(modem.sim.number or 0)
    modem.deliver("Telegram code: 51924", "Telegram")
    await hub.wait_for(1)
    assert (
        hub.received[0]["phone"] == answer["number"]
        and hub.received[0]["text"] == "Telegram code: 51924"
    )
    assert await call(
        url, {"action": "FINISH_ACTIVATION", "activationId": answer["activationId"], "status": 3}
    ) == {"status": "SUCCESS"}
    after = await call(url, {"action": "GET_SERVICES"})
    beeline = {c["country"]: c["operatorMap"] for c in after["countryList"]}["russia"]["beeline"]
    assert beeline == {"vk": 1, "tg": 0, "wa": 1}
    assert await process.stop() == 0
    assert process.count("daemon stopped") == 1


async def test_kill_9_mid_backlog_loses_nothing_and_repeats_nothing_delivered(
    setup, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bank, hub, process, url = setup
    mode = {"ok": False}
    hub.answers = []

    def answer() -> web.StreamResponse:
        if mode["ok"]:
            return web.json_response({"status": "SUCCESS"})
        return web.json_response({"status": "ERROR"}, status=503)

    hub.answers = [answer] * 10_000
    await process.start()
    await process.until("SIM in inventory", 4)
    held = await call(
        url,
        {"action": "GET_NUMBER", "country": "russia", "operator": "mts", "service": "vk", "sum": 1},
    )
    for i in range(20):
        bank[0].deliver(f"code {i:04d}")
    await process.until("SMS stored", 20)
    await hub.wait_for(20)  # every one tried at least once, none delivered
    mode["ok"] = True
    async with asyncio.timeout(20):
        while sum(1 for _ in _successes(hub)) < 5:
            await hub.wait_for(len(hub.received) + 1)
    await process.stop(signal.SIGKILL)

    db = sqlite3.connect(tmp_path / "db" / "supplier.db")
    delivered_before = {
        row[0] for row in db.execute("SELECT sms_id FROM deliveries WHERE done IS NOT NULL")
    }
    texts = sorted(row[0] for row in db.execute("SELECT text FROM sms"))
    db.close()
    assert texts == [f"code {i:04d}" for i in range(20)]  # all 20 durable before the kill
    seen_before = len(hub.received)

    await process.start()
    async with asyncio.timeout(30):
        while len({p["smsId"] for p in _successes(hub)}) < 20:
            await hub.wait_for(len(hub.received) + 1)
    after = hub.received[seen_before:]
    assert not [p for p in after if p["smsId"] in delivered_before]  # never again after SUCCESS
    assert {p["smsId"] for p in _successes(hub)} == {p["smsId"] for p in hub.received}
    # The activation made before the kill is still known and still holds its SIM.
    assert await call(
        url, {"action": "FINISH_ACTIVATION", "activationId": held["activationId"], "status": 4}
    ) == {"status": "SUCCESS"}
    assert await process.stop() == 0
    db = sqlite3.connect(tmp_path / "db" / "supplier.db")
    assert db.execute("SELECT COUNT(*) FROM deliveries WHERE done IS NULL").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM sms").fetchone()[0] == 20
    db.close()


def _successes(hub: FakeHub) -> list[dict[str, Any]]:
    """The pushes the hub answered SUCCESS (those received while it was in ok mode)."""
    return [p for p, ok in zip(hub.received, hub.succeeded, strict=True) if ok]
