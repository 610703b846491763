"""Modem layer at SIM-bank scale: come-up time, +CMTI → callback latency, idle cost.

The virtual modem bank runs in its own process (`supplier emulate`), so only
the pool's own work is measured here; the pool talks to it through the real
ptys and the real serial code. The emulator stamps each `+CMTI` line with
CLOCK_MONOTONIC just before writing it; this process stamps the callback with
the same clock, so the two compare directly.

    python bench/modem_latency.py                 # 64 and 512 modems
    python bench/modem_latency.py --modems 64 --sms 200 --idle 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import logging  # noqa: E402

import structlog  # noqa: E402

from modems.events import PoolEvent, SimReady, SmsReceived  # noqa: E402
from modems.modem import ModemSettings  # noqa: E402
from modems.pool import ModemPool, raise_open_file_limit  # noqa: E402

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def http(method: str, url: str, body: dict[str, object] | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:  # loopback only
        return json.loads(response.read())


async def run(
    count: int, sms_count: int, spread: float, idle: float, port: int
) -> dict[str, object]:
    directory = tempfile.mkdtemp(prefix=f"bench-bank-{count}-")
    control = f"127.0.0.1:{port}"
    # Popen, not asyncio's: psutil measures the pid; starting blocks well under a ms.
    emulator = subprocess.Popen(  # noqa: ASYNC220
        [
            sys.executable,
            "-m",
            "supplier",
            "emulate",
            "--modems",
            str(count),
            "--dir",
            directory,
            "--control",
            control,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert emulator.stdout is not None
        line = await asyncio.to_thread(emulator.stdout.readline)  # the bank prints once it is up
        if "virtual modems" not in line:
            raise RuntimeError(f"emulator did not start: {line!r}")
        base = f"http://{control}/modems"
        ready: dict[str, float] = {}
        received: dict[str, float] = {}
        all_ready = asyncio.Event()
        done = asyncio.Event()

        async def handler(event: PoolEvent) -> None:
            now = time.monotonic()
            if isinstance(event, SimReady):
                ready.setdefault(event.port, now)
                if len(ready) == count:
                    all_ready.set()
            elif isinstance(event, SmsReceived):
                received.setdefault(event.pdu, now)
                if len(received) >= sms_count:
                    done.set()

        me = psutil.Process()
        started = time.monotonic()
        pool = ModemPool([os.path.join(directory, "modem*")], handler, ModemSettings())
        await pool.start()
        try:
            await asyncio.wait_for(all_ready.wait(), timeout=300)
            come_up = time.monotonic() - started

            # Idle: nothing but health checks and the odd ^RSSI.
            cpu0 = me.cpu_times()
            wall0 = time.monotonic()
            await asyncio.sleep(idle)
            cpu1 = me.cpu_times()
            idle_cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (
                time.monotonic() - wall0
            )
            rss_idle = me.memory_info().rss

            # SMS at random moments over `spread` seconds, to random modems.
            moments = sorted(random.uniform(0, spread) for _ in range(sms_count))
            t0 = time.monotonic()
            for k, moment in enumerate(moments):
                delay = t0 + moment - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                target = random.randrange(count)
                await asyncio.to_thread(
                    http,
                    "POST",
                    f"{base}/{target}/sms",
                    {"text": f"bench {k}: code {random.randrange(10**6):06d}", "sender": "VK"},
                )
            await asyncio.wait_for(done.wait(), timeout=120)
            stamps: dict[str, float] = {}
            for index in range(count):
                cmti = http("GET", f"{base}/{index}/cmti")
                stamps.update({pdu: at for at, _, pdu in cmti})  # type: ignore[union-attr]
            latencies = [
                (received[pdu] - at) * 1000 for pdu, at in stamps.items() if pdu in received
            ]
            lost = len(stamps) - len(latencies)
        finally:
            await pool.stop()
        return {
            "modems": count,
            "come_up_s": round(come_up, 2),
            "sms": len(latencies),
            "lost": lost,
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "max_ms": round(max(latencies), 2),
            "idle_cpu_pct_of_one_core": round(idle_cpu * 100, 2),
            "idle_rss_mb": round(rss_idle / 2**20, 1),
        }
    finally:
        emulator.terminate()
        try:
            emulator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emulator.kill()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--modems", type=int, action="append", help="bank sizes (default 64 and 512)"
    )
    parser.add_argument("--sms", type=int, default=300, help="SMS per run")
    parser.add_argument(
        "--spread", type=float, default=15.0, help="seconds the SMS are spread over"
    )
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    parser.add_argument("--port", type=int, default=18790, help="emulator control port (loopback)")
    args = parser.parse_args()
    raise_open_file_limit()
    machine = f"{platform.platform()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}")
    header = (
        "| modems | come-up s | SMS | lost | +CMTI→callback p50 ms | p99 ms | max ms "
        "| idle CPU % of a core | idle RSS MB |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for count in args.modems or [64, 512]:
        result = asyncio.run(run(count, args.sms, args.spread, args.idle, args.port))
        print(
            f"| {result['modems']} | {result['come_up_s']} | {result['sms']} | {result['lost']} | "
            f"{result['p50_ms']} | {result['p99_ms']} | {result['max_ms']} | "
            f"{result['idle_cpu_pct_of_one_core']} | {result['idle_rss_mb']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
