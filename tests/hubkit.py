"""Test helpers for the daemon side: a settable clock, SIMs as pool events, a fake hub."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from modems.emulator import VirtualModemBank, make_sim
from modems.events import DeviceInfo, NetworkInfo, PoolEvent, SimIdentity, SimReady, SmsReceived
from supplier.config import Config, parse_config
from supplier.daemon import Daemon


class Clock:
    """A clock the tests move by hand (activation expiry without waiting)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sim_ready(
    slot: int, *, port: str | None = None, number: bool = True, registered: bool = True
) -> SimReady:
    """The pool's SimReady for the emulator's SIM in `slot` (same ICCID/IMSI/number scheme)."""
    sim = make_sim(slot, with_number=number)
    return SimReady(
        port=port or f"/dev/virtual/{slot:03d}",
        device=DeviceInfo("test", "test", "1", f"35{slot:013d}"),
        sim=SimIdentity(sim.iccid, sim.imsi, sim.number, sim.imsi[:3], sim.imsi[3:5]),
        network=NetworkInfo(1 if registered else 0, sim.operator, 20),
    )


def prefix_set(barred: Iterable[str], size: int = 10_000) -> list[str]:
    """A hub's exceptionPhoneSet of `size` prefixes: `barred` among prefixes of every length
    from 1 to 15 that match no Russian (+7) number, in a random order."""
    rnd = random.Random(size)
    listed = list(barred)
    while len(listed) < size:
        length = 1 + len(listed) % 15
        head = "798" if length > 4 and rnd.random() < 0.5 else rnd.choice("12345689")
        listed.append((head + "".join(rnd.choices("0123456789", k=15)))[:length])
    rnd.shuffle(listed)
    return listed


@dataclass
class FakeHub:
    """A hub's push endpoint on loopback: records every PUSH_SMS, answers as scripted."""

    answers: list[Callable[[], web.StreamResponse]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    succeeded: list[bool] = field(default_factory=list)  # did each answer say SUCCESS
    url: str = ""
    _event: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/push", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/push"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()  # aiohttp has inflated the gzip body already
        self.headers.append(dict(request.headers))
        self.received.append(json.loads(raw))
        self.times.append(asyncio.get_running_loop().time())
        response = self.answers.pop(0)() if self.answers else success()
        body = getattr(response, "body", b"") or b""
        self.succeeded.append(response.status == 200 and b'"SUCCESS"' in bytes(body))
        self._event.set()
        return response

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._event.clear()
                await self._event.wait()


def success() -> web.StreamResponse:
    return web.json_response({"status": "SUCCESS"})


def error_status() -> web.StreamResponse:
    return web.json_response({"status": "ERROR", "error": "busy"})


def http_500() -> web.StreamResponse:
    return web.Response(status=500, text="Internal Server Error")


def garbage() -> web.StreamResponse:
    return web.Response(body=gzip.compress(b"\x00not json"), content_type="text/html")


def hanging(seconds: float) -> Callable[[], web.StreamResponse]:
    class _Slow(web.StreamResponse):
        async def prepare(self, request: web.BaseRequest) -> Any:
            await asyncio.sleep(seconds)  # longer than the pusher's timeout
            return await super().prepare(request)

    return lambda: _Slow(status=200)


KEYS = {"alpha": "alpha-key-0001", "beta": "beta-key-0002"}


class Running:
    """A daemon in this process on a virtual bank, with fake hubs, driven over HTTP."""

    def __init__(self, daemon: Daemon, bank: VirtualModemBank, hubs: dict[str, FakeHub]) -> None:
        self.daemon = daemon
        self.bank = bank
        self.hubs = hubs
        self.events: list[PoolEvent] = []
        self._changed = asyncio.Event()
        daemon.subscribe(self._seen)
        assert daemon.running.listening is not None
        self.url = f"http://127.0.0.1:{daemon.running.listening[1]}/"

    def _seen(self, event: PoolEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def ready(self, count: int) -> None:
        await self.until(
            lambda: len({e.port for e in self.events if isinstance(e, SimReady)}) >= count
        )
        hosts = self.daemon.running.hosts
        if hosts is not None:  # several hosts (PostgreSQL): published and counted too
            await hosts.caught_up()

    def sms_count(self) -> int:
        return sum(1 for e in self.events if isinstance(e, SmsReceived))

    async def call(self, hub: str, body: dict[str, Any]) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url, json={"key": KEYS[hub], **body}) as response,
        ):
            assert response.status == 200
            return dict(await response.json())

    async def number(self, hub: str, operator: str, service: str = "vk") -> dict[str, Any]:
        answer = await self.call(
            hub,
            {
                "action": "GET_NUMBER",
                "country": "russia",
                "operator": operator,
                "service": service,
                "sum": 5,
            },
        )
        assert answer["status"] == "SUCCESS", answer
        return answer


RunFactory = Callable[..., Awaitable[Running]]


def make_config(
    tmp_path: Path,
    bank: VirtualModemBank,
    hubs: dict[str, FakeHub],
    *,
    storage_url: str | None = None,
    **extra: Any,
) -> Config:
    """A daemon's config for the tests; `storage_url`: on PostgreSQL, else a SQLite file."""
    storage = {"url": storage_url} if storage_url else {"path": str(tmp_path / "supplier.db")}
    return parse_config(
        {
            "server": {"listen": "127.0.0.1:0"},
            "status": {"listen": "127.0.0.1:0"},
            "hubs": [
                {
                    "name": name,
                    "key": KEYS[name],
                    "push_url": hub.url,
                    "retry_interval": "300ms",
                    "push_timeout": "500ms",
                }
                for name, hub in hubs.items()
            ],
            "modems": {
                "ports": [bank.pattern],
                "health_interval": "200ms",
                "command_timeout": "1s",
                "rescan_interval": "100ms",
            },
            "services": ["vk", "tg", "wa"],
            "storage": storage,
            **extra,
        }
    )
