"""`supplier demo`: the whole path on one machine with no modems and no hub.

A virtual bank of emulated modems, the real daemon on top of it (through
the real serial stack, store and HTTP server), and a small built-in hub that
does what SMSHub does: polls GET_SERVICES, takes a number with GET_NUMBER,
receives the SMS by PUSH_SMS and FINISHes the activation. The demo plays the
mobile network: once a number is taken it sends an SMS to that SIM. Each
step is printed as it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from modems.emulator import VirtualModemBank
from modems.events import PoolEvent, SimLost, SimReady

from .config import parse_config
from .daemon import Daemon
from .errors import SupplierError
from .store import FinishStatus

__all__ = ["DemoHub", "run_demo"]

# What each service's SMS looks like ({code} is a fresh code each time).
DEMO_TEXTS = {
    "vk": ("VK", "VK: {code} — код подтверждения. Никому не говорите код!"),
    "ok": ("OK.RU", "OK login code: {code}. Do not give it to anyone."),
    "wa": ("WhatsApp", "Your WhatsApp code: {code}. Don't share this code with others 🔐"),
    "tg": ("Telegram", "Telegram code: {code}. You can also tap on this link to log in."),
    "go": (
        "Google",
        "G-{code} is your Google verification code. Don't share it with anyone: Google will "
        "never call or message you to ask for it. If you didn't ask for a code, someone may "
        "be trying to get into your account.",
    ),
    "fb": ("Facebook", "{code} is your Facebook confirmation code"),
    "ig": ("Instagram", "Use {code} to verify your Instagram account."),
    "tw": ("X", "Your X verification code is {code}."),
}
GENERIC_TEXT = ("+79001234567", "Your {service} code is {code}. Valid for 5 minutes.")
SHOWN = 80  # characters of an SMS text shown on one demo line


def demo_sms(service: str) -> tuple[str, str]:
    """The sender and text of an SMS for `service`, as that service would send it."""
    sender, text = DEMO_TEXTS.get(service, GENERIC_TEXT)
    return sender, text.format(code=f"{random.randrange(10_000, 1_000_000)}", service=service)


def shorten(text: str, width: int = SHOWN) -> str:
    """One line of at most `width` characters; a cut text ends with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


def plural(count: int, one: str, many: str | None = None) -> str:
    """`1 offer`, `2 offers`, `1 country`, `3 countries`."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


class DemoHub:
    """A tiny SMS-activation hub: the client side of the protocol and a PUSH_SMS endpoint."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.pushes: dict[str, asyncio.Future[dict[str, Any]]] = {}  # by phone number
        self.received: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.push_url = ""
        self.agent_url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/push", self._on_push)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.push_url = f"http://127.0.0.1:{port}/push"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _on_push(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"status": "ERROR", "error": "not JSON"})
        if not isinstance(body, dict) or body.get("key") != self.key:
            return web.json_response({"status": "ERROR", "error": "wrong key"})
        self.received.append(body)
        waiter = self.pushes.get(str(body.get("phone")))
        if waiter is not None and not waiter.done():
            waiter.set_result(body)
        return web.json_response({"status": "SUCCESS"})

    def expect(self, number: str) -> asyncio.Future[dict[str, Any]]:
        """The next PUSH_SMS for this number (the protocol's push names the phone)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pushes[number] = future
        return future

    async def call(self, action: str, **fields: Any) -> dict[str, Any]:
        assert self._session is not None
        body = {"action": action, "key": self.key, **fields}
        async with self._session.post(self.agent_url, json=body) as response:
            answer = await response.json(content_type=None)
        if not isinstance(answer, dict):
            raise SupplierError(f"{action}: the daemon answered {answer!r}")
        return answer


def _offers(answer: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(country, service, count) for everything GET_SERVICES offers."""
    found: dict[tuple[str, str], int] = {}
    for entry in answer.get("countryList", []):
        for services in entry["operatorMap"].values():
            for service, count in services.items():
                key = (entry["country"], service)
                found[key] = found.get(key, 0) + int(count)
    return [(country, service, n) for (country, service), n in sorted(found.items()) if n > 0]


async def run_demo(
    *,
    modems: int,
    status_listen: tuple[str, int],
    interval: float,
    duration: float | None,
    stop: asyncio.Event,
    say: Callable[[str], None],
) -> int:
    directory = tempfile.mkdtemp(prefix="supplier-demo-")
    bank = VirtualModemBank(modems, os.path.join(directory, "ports"))
    key = secrets.token_urlsafe(18)
    token = secrets.token_urlsafe(9)
    hub = DemoHub(key)
    daemon: Daemon | None = None
    started = time.monotonic()
    try:
        await bank.start()
        await hub.start()
        config = parse_config(
            {
                "server": {"listen": "127.0.0.1:0"},
                "hubs": [
                    {"name": "demohub", "key": key, "push_url": hub.push_url, "retry_interval": 2}
                ],
                "modems": {"ports": [bank.pattern], "health_interval": 5},
                "storage": {"path": os.path.join(directory, "supplier.db")},
                "status": {"listen": f"{status_listen[0]}:{status_listen[1]}", "token": token},
                "activation": {"release_after": "2m"},
            },
            "demo",
        )
        daemon = Daemon(config)

        def on_event(event: PoolEvent) -> None:
            if isinstance(event, SimReady):
                number = f"+{event.sim.number}" if event.sim.number else "(no number)"
                say(
                    f"modem   {os.path.basename(event.port)}: {event.device.manufacturer} "
                    f"{event.device.model}, SIM {event.sim.iccid}, {number}, "
                    f"signal {event.network.rssi}"
                )
            elif isinstance(event, SimLost) and event.reason != "stopped":
                say(f"modem   {os.path.basename(event.port)}: SIM lost ({event.reason})")

        daemon.subscribe(on_event)
        try:
            await daemon.start()
        except OSError:
            if status_listen[1] == 0:
                raise
            # The status port is taken (another daemon?): any free port will do for a demo.
            await daemon.stop()
            config = config.model_copy(
                update={"status": config.status.model_copy(update={"listen": ("127.0.0.1", 0)})}
            )
            daemon = Daemon(config)
            daemon.subscribe(on_event)
            await daemon.start()
        hub.agent_url = f"http://127.0.0.1:{daemon.running.listening[1]}/"
        status_host, status_port = daemon.running.status_listening
        say(f"daemon  answers hubs at {hub.agent_url}; {modems} virtual modems in {bank.directory}")
        say(f"status  page at http://{status_host}:{status_port}/  (token: {token})")
        deadline = None if duration is None else started + duration
        served = 0
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            served += await _one_round(hub, bank, say)
            remaining = interval if deadline is None else min(interval, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, remaining))
        say(f"demo    done: {plural(served, 'activation')} served, {len(hub.received)} SMS pushed")
    finally:
        if daemon is not None:
            await daemon.stop()
        await hub.stop()
        bank.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


async def _one_round(hub: DemoHub, bank: VirtualModemBank, say: Callable[[str], None]) -> int:
    """GET_SERVICES, GET_NUMBER, an SMS, its PUSH_SMS, FINISH: 1 if it all happened."""
    offers = _offers(await hub.call("GET_SERVICES"))
    if not offers:
        say("hub     GET_SERVICES: nothing on sale yet (modems still coming up)")
        return 0
    countries = sorted({country for country, _, _ in offers})
    say(
        f"hub     GET_SERVICES: {plural(sum(n for _, _, n in offers), 'offer')} in "
        f"{plural(len(countries), 'country', 'countries')} ({', '.join(countries)})"
    )
    country, service, _ = random.choice(offers)
    answer = await hub.call(
        "GET_NUMBER", country=country, operator="any", service=service, sum=12.5, currency=643
    )
    if answer.get("status") != "SUCCESS":
        say(f"hub     GET_NUMBER {service} in {country}: {answer.get('status')}")
        return 0
    number, activation = str(answer["number"]), int(answer["activationId"])
    say(f"hub     GET_NUMBER {service} in {country}: +{number}, activation {activation}")
    modem = next((m for m in bank if m.sim is not None and m.sim.number == number), None)
    if modem is None:
        say(f"network no emulated SIM has +{number}")
        return 0
    sender, text = demo_sms(service)
    pushed = hub.expect(number)
    sent = time.monotonic()
    modem.deliver(text, sender)
    say(f"network SMS from {sender} to +{number} ({plural(len(text), 'character')})")
    try:
        body = await asyncio.wait_for(pushed, 30)
    except TimeoutError:
        say(f"hub     no PUSH_SMS for +{number} within 30 s")
        return 0
    finally:
        hub.pushes.pop(number, None)
    took = (time.monotonic() - sent) * 1000
    say(
        f"hub     PUSH_SMS for +{number} (sms {body.get('smsId')}) after {took:.0f} ms: "
        f"“{shorten(str(body['text']))}”"
    )
    finish = await hub.call("FINISH_ACTIVATION", activationId=activation, status=FinishStatus.SOLD)
    say(f"hub     FINISH_ACTIVATION {activation} status 3 (sold): {finish.get('status')}")
    return 1
