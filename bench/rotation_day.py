"""A simulated day on SIM banks: (number, service) pairs sold with rotation and without.

One process: an emulated pool board (`modules` x `slots`, control pty and
module ptys), the daemon on it (`Daemon`, the real serial path), and hubs
played by this script: GET_NUMBER by service at a realistic mix, an SMS to
every number handed out, FINISH (mostly 3 = sold, some 1 and 4) once its SMS
was pushed. Time is compressed: a day lasts `--day` real seconds, and every
rotation and activation timing is scaled by the same factor (dwell 30 min,
grace 60 s, release_after 20 min); the emulator's switch takes
`--switch-delay` + `--ready-delay` real seconds, the modem layer's own
timings are real. Prints, for each mode: pairs sold, GET_NUMBERs answered
NO_NUMBERS, switches per (simulated) hour, the share of module-time spent
switching, and SMS sent / pushed / lost / doubled.

    .venv/bin/python bench/rotation_day.py                     # 64 x 8, a day in 120 s, both modes
    .venv/bin/python bench/rotation_day.py --modules 8 --slots 4 --day 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modems.emulator.simbank import SimBank  # noqa: E402
from modems.pool import raise_open_file_limit  # noqa: E402
from supplier.config import parse_config  # noqa: E402
from supplier.daemon import Daemon  # noqa: E402

KEY = "bench-key-000001"
# What hubs ask for, roughly (share of GET_NUMBER by service).
MIX = {
    "vk": 0.30,
    "tg": 0.22,
    "wa": 0.18,
    "ok": 0.10,
    "go": 0.08,
    "fb": 0.05,
    "ig": 0.04,
    "tw": 0.03,
}
COUNTRIES = {"russia": 0.55, "ukraine": 0.2, "kazakhstan": 0.12, "nigeria": 0.13}
DAY = 86400.0


class Hub:
    def __init__(self) -> None:
        self.pushed: Counter[str] = Counter()
        self.event = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.pushed[str(body.get("text"))] += 1
        self.event.set()
        return web.json_response({"status": "SUCCESS"})


async def run_mode(args: argparse.Namespace, rotate: bool, workdir: str) -> dict[str, Any]:
    scale = DAY / args.day  # simulated seconds per real second
    bank = SimBank(
        os.path.join(workdir, "pool"),
        args.modules,
        args.slots,
        switch_delay=args.switch_delay,
        ready_delay=args.ready_delay,
    )
    await bank.start()
    hub = Hub()
    app = web.Application()
    app.router.add_post("/push", hub.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    push_url = f"http://127.0.0.1:{runner.addresses[0][1]}/push"
    config = parse_config(
        {
            "server": {"listen": "127.0.0.1:0"},
            "status": {"listen": "127.0.0.1:0"},
            "hubs": [{"name": "hub", "key": KEY, "push_url": push_url, "retry_interval": "500ms"}],
            "modems": {"ports": [os.path.join(workdir, "none*")], "rescan_interval": "1s"},
            "services": list(MIX),
            "storage": {"path": os.path.join(workdir, "supplier.db")},
            "activation": {"release_after": 1200 / scale},
            "banks": [
                {
                    "name": "pool",
                    "control": bank.control.link,
                    "slots": args.slots,
                    "modules": bank.module_paths,
                    "reset_after_switch": False,
                }
            ],
            "rotation": {
                # Without rotation: a dwell longer than the run, so no module ever moves.
                "dwell": 1800 / scale if rotate else 10 * DAY,
                "settle": args.settle,
                "grace": 60 / scale,
                "retry_after": 600 / scale,
            },
        }
    )
    daemon = Daemon(config)
    await daemon.start()
    assert daemon.running.listening is not None
    assert daemon.running.rotation is not None
    url = f"http://127.0.0.1:{daemon.running.listening[1]}/"
    rng = random.Random(14)
    sold: set[tuple[str, str]] = set()
    sent: list[str] = []
    no_numbers = 0
    answered = 0
    pending: set[asyncio.Task[None]] = set()
    switching_time = 0.0

    # Module-time spent switching: from the switch command to the new SIM ready.
    started_switch: dict[int, float] = {}

    def on_change() -> None:
        nonlocal switching_time
        now = time.monotonic()
        rotation = daemon.running.rotation
        for number, module in rotation.modules.items() if rotation else []:
            switching = module.status.value == "switching"
            if switching and number[1] not in started_switch:
                started_switch[number[1]] = now
            elif not switching and number[1] in started_switch:
                switching_time += now - started_switch.pop(number[1])

    daemon.running.rotation.subscribe(on_change)

    async with aiohttp.ClientSession() as session:

        async def call(body: dict[str, Any]) -> dict[str, Any]:
            async with session.post(url, json={"key": KEY, **body}) as response:
                return dict(await response.json())

        async def activation(answer: dict[str, Any], service: str) -> None:
            number = str(answer["number"])
            text = f"code {len(sent):06d}"
            sent.append(text)
            await asyncio.sleep(rng.uniform(5, 60) / scale)  # the user asks for the code
            bank.send_sms(number, text)
            try:
                async with asyncio.timeout(300 / scale + 5):
                    while hub.pushed[text] == 0:
                        hub.event.clear()
                        await hub.event.wait()
            except TimeoutError:
                pass  # counted as lost below if it never comes
            roll = rng.random()
            status = 3 if roll < 0.75 else 1 if roll < 0.85 else 4
            await call(
                {
                    "action": "FINISH_ACTIVATION",
                    "activationId": answer["activationId"],
                    "status": status,
                }
            )
            if status == 3:
                sold.add((number, service))

        start = time.monotonic()
        interval = 1.0 / args.rate
        while time.monotonic() - start < args.day:
            service = rng.choices(list(MIX), weights=list(MIX.values()))[0]
            country = rng.choices(list(COUNTRIES), weights=list(COUNTRIES.values()))[0]
            answer = await call(
                {
                    "action": "GET_NUMBER",
                    "country": country,
                    "operator": "any",
                    "service": service,
                    "sum": 5,
                }
            )
            if answer.get("status") == "SUCCESS":
                answered += 1
                task = asyncio.create_task(activation(answer, service))
                pending.add(task)
                task.add_done_callback(pending.discard)
            else:
                no_numbers += 1
            await asyncio.sleep(interval)
        elapsed = time.monotonic() - start
        if pending:
            await asyncio.wait(pending, timeout=30)
        # Late pushes: give the pusher a moment (event-driven, bounded).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while any(hub.pushed[text] == 0 for text in sent):
                    hub.event.clear()
                    await hub.event.wait()
    switches = sum(daemon.running.rotation.switches.values())
    outcomes = dict(daemon.running.rotation.switches)
    await daemon.stop()
    await runner.cleanup()
    bank.stop()
    lost = sum(1 for text in sent if hub.pushed[text] == 0)
    doubled = sum(1 for text in sent if hub.pushed[text] > 1)
    hours = elapsed * scale / 3600
    return {
        "mode": "rotation" if rotate else "static",
        "pairs_sold": len(sold),
        "answered": answered,
        "no_numbers": no_numbers,
        "switches": switches,
        "outcomes": {f"{b}/{o}": n for (b, o), n in outcomes.items()},
        "switches_per_hour": switches / hours,
        "switching_share": switching_time / (elapsed * args.modules),
        "sms_sent": len(sent),
        "lost": lost,
        "doubled": doubled,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=64)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument(
        "--day", type=float, default=120.0, help="real seconds for one simulated day"
    )
    parser.add_argument("--rate", type=float, default=25.0, help="GET_NUMBER per real second")
    parser.add_argument("--settle", type=float, default=3.0, help="real seconds")
    parser.add_argument("--switch-delay", type=float, default=0.05)
    parser.add_argument("--ready-delay", type=float, default=0.05)
    parser.add_argument("--mode", choices=("both", "rotation", "static"), default="both")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    raise_open_file_limit()
    modes = {"both": (False, True), "rotation": (True,), "static": (False,)}[args.mode]
    print(
        f"{args.modules} modules x {args.slots} slots; a day in {args.day:.0f} s "
        f"(x{DAY / args.day:.0f}); {args.rate:g} GET_NUMBER/s ({args.rate * args.day:.0f} a day); "
        f"{platform.python_version()} on {os.cpu_count()} cores"
    )
    for rotate in modes:
        with tempfile.TemporaryDirectory(prefix="rotation-day-") as workdir:
            result = await run_mode(args, rotate, workdir)
        print(
            f"{result['mode']:8}: {result['pairs_sold']} (number, service) pairs sold; "
            f"{result['answered']} numbers handed out, {result['no_numbers']} NO_NUMBERS; "
            f"{result['switches']} switches ({result['switches_per_hour']:.1f}/h, "
            f"{result['outcomes']}); "
            f"module-time switching {100 * result['switching_share']:.1f} %; "
            f"SMS {result['sms_sent']} sent, {result['lost']} lost, {result['doubled']} doubled"
        )


if __name__ == "__main__":
    asyncio.run(main())
