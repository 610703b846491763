"""`supplier run` as a real process on the virtual modem bank: the hub's whole path, and kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modems.emulator import VirtualModemBank
from modems.pdu import SmsDeliver, decode_pdu

from .hubkit import FakeHub

ROOT = Path(__file__).resolve().parents[1]
KEY = "e2e-key-0000001"


def free_port() -> int:
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

    async def start(self, env: dict[str, str] | None = None) -> None:
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
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
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


def _texts_on_sims(bank: VirtualModemBank) -> set[str]:
    """The texts not yet taken by the daemon: stored on the emulated SIMs, or held by
    the network because a SIM's storage was full (delivered once it has room)."""
    found = set()
    for modem in bank:
        pdus = [slot.pdu for slot in modem.stored().values()] + modem.network_queue
        for pdu in pdus:
            message = decode_pdu(pdu)
            assert isinstance(message, SmsDeliver)
            found.add(message.text)
    return found


async def test_sigterm_mid_traffic_exits_cleanly_and_loses_nothing(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bank, hub, process, url = setup
    await process.start()
    await process.until("SIM in inventory", 4)
    for operator in ("mts", "megafon"):  # these two get the SMS; the others are sold meanwhile
        answer = await call(
            url,
            {"action": "GET_NUMBER", "country": "russia", "operator": operator, "service": "vk"},
        )
        assert answer["status"] == "SUCCESS"
    sent: list[str] = []
    answered: list[int] = []
    stopping = asyncio.Event()

    async def sms_traffic() -> None:
        for i in range(400):
            if process.proc is None or process.proc.returncode is not None:
                return
            text = f"traffic {i:04d}"
            bank[i % 2].deliver(text)
            sent.append(text)
            if i == 40:
                stopping.set()
            await asyncio.sleep(0.005)  # pacing of the traffic, not a wait for a result

    async def hub_traffic() -> None:
        turn = 0
        while process.proc is not None and process.proc.returncode is None:
            turn += 1
            try:
                answer = await call(
                    url,
                    {
                        "action": "GET_NUMBER",
                        "country": "russia",
                        "operator": "any",
                        "service": ("vk", "tg", "wa")[turn % 3],
                    },
                )
            except (aiohttp.ClientError, AssertionError):
                return  # the server stopped taking requests
            if answer["status"] == "SUCCESS":
                answered.append(int(answer["activationId"]))
                await call(
                    url,
                    {
                        "action": "FINISH_ACTIVATION",
                        "activationId": answer["activationId"],
                        "status": 4,
                    },
                )

    tasks = [asyncio.create_task(sms_traffic()), asyncio.create_task(hub_traffic())]
    await asyncio.wait_for(stopping.wait(), 20)
    started = asyncio.get_running_loop().time()
    code = await process.stop(signal.SIGTERM)
    took = asyncio.get_running_loop().time() - started
    await asyncio.gather(*tasks, return_exceptions=True)
    assert code == 0
    assert took < 10, f"took {took:.1f} s to stop"
    assert process.count("daemon stopped") == 1
    assert answered, "no GET_NUMBER was answered while the traffic ran"

    db = sqlite3.connect(tmp_path / "db" / "supplier.db")
    stored = {row[0] for row in db.execute("SELECT text FROM sms")}
    known = {row[0] for row in db.execute("SELECT id FROM activations")}
    db.close()
    assert set(answered) <= known  # every activation a hub was given is durable
    # Every SMS sent is either durable in the store or still on its SIM.
    assert set(sent) <= stored | _texts_on_sims(bank)

    # After a restart every one of them reaches the hub, each exactly once.
    await process.start()
    async with asyncio.timeout(30):
        while {p["text"] for p in _successes(hub)} < set(sent):
            await hub.wait_for(len(hub.received) + 1)
    ids = [p["smsId"] for p in _successes(hub)]
    assert len(ids) == len(set(ids)) == len(sent)
    assert await process.stop() == 0


async def test_sighup_reloads_hubs_and_services_and_keeps_activations(
    setup, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bank, hub, process, url = setup
    await process.start()
    await process.until("SIM in inventory", 4)
    held = await call(
        url, {"action": "GET_NUMBER", "country": "russia", "operator": "mts", "service": "vk"}
    )
    assert held["status"] == "SUCCESS"
    config = process.config
    text = config.read_text()
    new_key = "second-hub-key-02"
    config.write_text(
        text.replace("services: [vk, tg, wa]", "services: [vk, tg, wa, go]").replace(
            "modems:",
            f'  - {{name: second, key: "{new_key}", push_url: "{hub.url}"}}\nmodems:',
        )
    )
    assert process.proc is not None
    process.proc.send_signal(signal.SIGHUP)
    await process.until("configuration reloaded")
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"key": new_key, "action": "GET_SERVICES"}) as response,
    ):
        services = await response.json()
    assert services["status"] == "SUCCESS"
    russia = {c["country"]: c["operatorMap"] for c in services["countryList"]}["russia"]
    assert russia["megafon"]["go"] == 1
    assert russia["mts"]["vk"] == 0  # still held by the activation from before the reload

    # The activation from before the reload still gets its SMS and can be finished.
    bank[0].deliver("code after reload")
    await hub.wait_for(1)
    assert hub.received[0]["text"] == "code after reload"
    assert hub.received[0]["key"] == KEY

    # A broken file is refused and the daemon goes on with what it had.
    config.write_text("hubs: [")
    process.proc.send_signal(signal.SIGHUP)
    await process.until("reload refused; keeping the old settings")
    assert await call(
        url, {"action": "FINISH_ACTIVATION", "activationId": held["activationId"], "status": 3}
    ) == {"status": "SUCCESS"}
    assert await process.stop() == 0


async def test_sd_notify_ready_watchdog_status_and_stopping(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bank, hub, process, url = setup
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    messages: list[list[str]] = []

    async def receive(until: Callable[[], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not until():
                data = await loop.sock_recv(sock, 4096)
                messages.append(data.decode().split("\n"))

    def sent(line: str) -> int:
        return sum(1 for message in messages for item in message if item == line)

    try:
        await process.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
        await receive(lambda: sent("READY=1") >= 1)
        ready = next(m for m in messages if "READY=1" in m)
        status = next(item for item in ready if item.startswith("STATUS="))
        assert "modems" in status and "SIMs ready" in status
        # READY=1 comes once the server listens: a hub request is answered at once.
        assert (await call(url, {"action": "GET_SERVICES"}))["status"] == "SUCCESS"
        await receive(lambda: sent("WATCHDOG=1") >= 3)  # every 0.2 s, from the event loop
        assert process.proc is not None
        process.proc.send_signal(signal.SIGHUP)
        await receive(lambda: sent("RELOADING=1") >= 1 and sent("READY=1") >= 2)
        process.proc.send_signal(signal.SIGTERM)
        await receive(lambda: sent("STOPPING=1") >= 1)
        assert await process.stop() == 0
    finally:
        sock.close()


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run installs systemd")
        pytest.skip("no systemd-analyze here")
    unit = (ROOT / "systemd" / "supplier.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit
    # verify checks that ExecStart's program exists: point it at this install's.
    supplier = shutil.which("supplier") or str(Path(sys.executable).parent / "supplier")
    copy = tmp_path / "supplier.service"
    copy.write_text(unit.replace("/opt/supplier/bin/supplier", supplier))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "supplier.service" not in result.stderr, result.stderr  # no warnings about it
