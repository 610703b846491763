"""One hub's requests, one by one in cost: GET_NUMBER with an exceptionPhoneSet, GET_SERVICES.

Three processes on loopback, as in bench/hub_load.py (whose helpers start
them): the virtual modem bank (`supplier emulate`), the daemon (`supplier
run`, SQLite store, measured with psutil) and this script, the hub.

GET_NUMBER (russia, any operator, a random service; each SUCCESS followed
by FINISH 4) is asked with an exceptionPhoneSet of 0, 100 and 10,000
prefixes. Every set but the empty one bars the same SIMs: the full numbers
of a quarter of the bank's Russian SIMs (those are never sold, so they stay
the least recently used and every request passes them over), the rest is
prefixes that match no SIM, 5 to 11 digits long, all in a random order. The set goes as a list of
integers (as OnlineSim sends it); 10,000 numbers are ~120 KB of JSON, so the
daemon's `server.max_body` is raised to 1 MiB here. Every number handed out
is checked against the set.

GET_SERVICES is asked while nothing changes (the hubs' usual poll).

Latency is from just before the request is written to its whole answer read
(the body is encoded once, before); the daemon's CPU per request is its CPU
time over the phase divided by the requests (a GET_NUMBER's FINISH included).

    python bench/hub_requests.py                 # --modems 512 --clients 4 --requests 400
    python bench/hub_requests.py --encode 20000  # GET_SERVICES' answer alone, in this process

`--encode N`: what a GET_SERVICES costs the daemon to make its answer's bytes,
without HTTP: an Inventory on an in-memory SQLite store fed the bank's SIMs
(512) as the pool would, N answers for each hub profile, gzip (the hubs
accept it), in microseconds per answer. Works on older trees too (where
`get_services` returns a dict the handler then encodes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hub_load import (  # noqa: E402
    KEY,
    SERVICES,
    Hub,
    clean_up,
    drain_log,
    free_port,
    pct,
    start_daemon,
    start_emulator,
    wait_log,
    write_config,
)
from hubclient import Client  # noqa: E402

from modems.emulator.bank import make_sim  # noqa: E402
from modems.events import NetworkInfo, SimIdentity  # noqa: E402
from modems.pool import raise_open_file_limit  # noqa: E402
from supplier import protocol  # noqa: E402
from supplier.config import HubConfig  # noqa: E402
from supplier.inventory import Inventory  # noqa: E402
from supplier.store import Store  # noqa: E402

SIZES = (0, 100, 10_000)


def prefix_sets(count: int) -> dict[int, list[int]]:
    """Per size, the exceptionPhoneSet: every one but the empty one bars the same SIMs."""
    numbers = [make_sim(i).number or "" for i in range(count)]
    russian = [n for n in numbers if n.startswith("79")]
    barred = {str(n) for n in russian[: max(1, len(russian) // 4)]}
    rnd = random.Random(7)
    padding: list[int] = []
    while len(padding) < max(SIZES):
        # 798…: the bank's Russian numbers are 7915, 7926, 7903, 7950 and 7701.
        digits = "798" + "".join(rnd.choice("0123456789") for _ in range(rnd.randint(2, 8)))
        padding.append(int(digits))
    sets = {}
    for size in SIZES:
        listed = [int(n) for n in sorted(barred)][:size] + padding[: max(0, size - len(barred))]
        rnd.shuffle(listed)  # a hub's set comes in no particular order
        sets[size] = listed
    return sets


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} | {pct(values, 99):.2f} | {max(values):.2f}"


async def closed_loop(
    url: str, clients: int, total: int, body: bytes, check: set[str] | None = None
) -> tuple[list[float], float, dict[str, int]]:
    """`total` requests of `body` from `clients` at once; a SUCCESS with an activation is
    followed by its FINISH 4. Latencies in ms, the elapsed seconds, answers by status."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    remaining = total

    async def client(http: Client) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            _, answer = await http.post(url, body)
            latencies.append((time.perf_counter() - started) * 1000)
            status = answer["status"]
            if status == "SUCCESS" and "activationId" in answer:
                number = str(answer["number"])
                if check is not None and any(number.startswith(p) for p in check):
                    status = "SUCCESS under a barred prefix"
                finish = {"key": KEY, "action": "FINISH_ACTIVATION",
                          "activationId": answer["activationId"], "status": 4}  # fmt: skip
                await http.post(url, finish)
            statuses[status] = statuses.get(status, 0) + 1

    async with Client(limit=clients) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed, statuses


def cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def run(count: int, clients: int, requests: int) -> list[str]:
    work = tempfile.mkdtemp(prefix=f"bench-requests-{count}-")
    emulator, _ = await start_emulator(count, os.path.join(work, "bank"))
    hub = Hub()
    await hub.start()
    port, status_port = free_port(), free_port()
    config = write_config(work, port, status_port, hub.url, server=", max_body: 1048576")
    daemon = await start_daemon(config)
    url = f"http://127.0.0.1:{port}/"
    rows: list[str] = []
    try:
        await wait_log(daemon, "SIM in inventory", count, timeout=600)
        logs = asyncio.create_task(drain_log(daemon))
        me = psutil.Process(daemon.pid)
        for service, (size, prefixes) in zip(SERVICES, prefix_sets(count).items(), strict=False):
            # A service of its own per set: each number may be offered for one 4 times.
            body = {"key": KEY, "action": "GET_NUMBER", "country": "russia", "operator": "any",
                    "service": service, "sum": 10, "currency": 643}  # fmt: skip
            if prefixes:
                body["exceptionPhoneSet"] = prefixes
            encoded = json.dumps(body).encode()
            cpu0 = cpu(me)
            latencies, elapsed, statuses = await closed_loop(
                url, clients, requests, encoded, {str(p) for p in prefixes}
            )
            spent = cpu(me) - cpu0
            rows.append(
                f"| {count} | GET_NUMBER, {size} prefixes ({len(encoded) / 1024:.1f} KiB) "
                f"| {summary(latencies)} | {len(latencies) / elapsed:.0f} "
                f"| {spent / len(latencies) * 1000:.3f} "
                f"| {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))} |"
            )
        services = json.dumps({"key": KEY, "action": "GET_SERVICES"}).encode()
        cpu0 = cpu(me)
        latencies, elapsed, statuses = await closed_loop(url, clients, requests * 5, services)
        spent = cpu(me) - cpu0
        rows.append(
            f"| {count} | GET_SERVICES | {summary(latencies)} | {len(latencies) / elapsed:.0f} "
            f"| {spent / len(latencies) * 1000:.3f} "
            f"| {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))} |"
        )
        logs.cancel()
    finally:
        await clean_up((daemon, emulator), hub, work)
    return rows


async def encode_cost(count: int, answers: int) -> str:
    """Microseconds per GET_SERVICES answer made into the bytes the daemon sends."""
    store = await Store.open(":memory:")
    inventory = Inventory(store, services=SERVICES, release_after=1200.0)
    for i in range(count):
        sim = make_sim(i)
        identity = SimIdentity(sim.iccid, sim.imsi, sim.number, sim.imsi[:3], sim.imsi[3:5])
        await inventory.sim_ready(f"/dev/b{i:03d}", identity, NetworkInfo(1, sim.imsi[:5], 20))
    hubs = [
        HubConfig(name=name, key=KEY, push_url="http://127.0.0.1:9/", profile=name)
        for name in ("smshub", "onlinesim")
    ]
    service = protocol.ProtocolService(inventory, hubs)
    out = []
    for hub in hubs:
        size = 0
        started = time.perf_counter()
        for _ in range(answers):
            reply: Any = await service.get_services(hub, {})
            if isinstance(reply, dict):  # an older tree: the handler encoded every answer
                sent = protocol._gzip(json.dumps(reply).encode())
            else:
                sent = reply.gzipped
            size = len(sent)
        took = (time.perf_counter() - started) / answers * 1e6
        out.append(f"{hub.profile} {took:.1f} µs ({size} bytes gzip)")
    await store.close()
    return f"GET_SERVICES answer, {count} SIMs, {answers} times: " + "; ".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modems", type=int, action="append")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--requests",
        type=int,
        default=400,
        help="GET_NUMBERs per set; GET_SERVICES 5 times as many",
    )
    parser.add_argument("--encode", type=int, help="only GET_SERVICES' answer, this many times")
    args = parser.parse_args()
    if args.encode:
        for count in args.modems or [512]:
            print(asyncio.run(encode_cost(count, args.encode)))
        return 0
    raise_open_file_limit()
    machine = f"{platform.platform()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.clients} concurrent clients; latencies in ms")
    print()
    print(
        "| modems | request | p50 | p99 | max | rps "
        "| daemon CPU ms per request (a GET_NUMBER's FINISH included) | answers |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for count in args.modems or [512]:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            rows = runner.run(run(count, args.clients, args.requests))
        print("\n".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
