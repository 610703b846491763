"""The daemon under hub load, on a virtual modem bank: protocol latency and SMS delivery.

Three processes, all on loopback: the virtual modem bank (`supplier emulate`),
the daemon (`supplier run`, measured with psutil), and this script, which
plays the hubs: 50 concurrent clients for GET_SERVICES and GET_NUMBER, and a
PUSH_SMS endpoint that stamps every push with CLOCK_MONOTONIC. The emulator
stamps every `+CMTI` with the same clock, so `+CMTI` → hub is measured
end to end across the processes.

    python bench/hub_load.py                       # 64, 256 and 512 modems, every phase
    python bench/hub_load.py --modems 512 --clients 50 --requests 5000 --sms 2000 \
        --spread 60 --burst 2000
    python bench/hub_load.py --modems 512 --phase open-loop    # a couple of minutes

The open-loop phase starts requests on a fixed schedule (`--rate` per second:
GET_SERVICES, GET_NUMBER, GET_SERVICES, FINISH 4, repeating), whatever the
answers take, and times each from its scheduled start (no coordinated
omission). The same client first runs the same schedule against a do-nothing
aiohttp server in its own process (the floor), then against the daemon: the
ratio of the two p99s is what the daemon adds, whatever else the machine is
doing. The daemon's `supplier_event_loop_lag_seconds` is read after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import uvloop
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hubclient import Client, HttpError  # noqa: E402

from modems.pool import raise_open_file_limit  # noqa: E402

KEY = "bench-key-000001"
SERVICES = ["vk", "ok", "wa", "tg", "go", "fb", "ig", "tw"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> str:
    if not values:
        return "- | - | -"
    return f"{statistics.median(values):.2f} | {pct(values, 99):.2f} | {max(values):.2f}"


class Hub:
    """The PUSH_SMS endpoint: answers SUCCESS, remembers when each text arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.count = 0
        self.changed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/push", self.push)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/push"

    async def push(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        body = json.loads(await request.read())
        self.count += 1
        self.arrived.setdefault(body["text"], now)
        self.changed.set()
        return web.json_response({"status": "SUCCESS"})

    async def wait(self, texts: set[str], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not texts <= self.arrived.keys():
                self.changed.clear()
                await self.changed.wait()


async def start_emulator(
    count: int, directory: str, first_sim: int = 0
) -> tuple[subprocess.Popen[str], str]:
    # Popen, not asyncio's: the pipes are read from threads and psutil measures the pid;
    # starting a process blocks for well under a millisecond, before any load runs.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "supplier", "emulate", "--modems", str(count), "--dir", directory,
         "--control", "127.0.0.1:0", "--first-sim", str(first_sim)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    while True:
        line = await asyncio.to_thread(proc.stdout.readline)
        if not line:
            raise RuntimeError("emulator exited")
        if line.startswith("control API: "):
            return proc, line.split("//")[1].split("/")[0]


async def start_daemon(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: ASYNC220 (as start_emulator)
        [sys.executable, "-m", "supplier", "--log-level", "info", "run", "--config", str(config)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


async def wait_log(proc: subprocess.Popen[str], event: str, count: int, timeout: float) -> None:
    assert proc.stderr is not None
    seen = 0
    async with asyncio.timeout(timeout):
        while seen < count:
            line = await asyncio.to_thread(proc.stderr.readline)
            if not line:
                raise RuntimeError("daemon exited")
            if f'"event": "{event}"' in line:
                seen += 1


async def drain_log(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    while await asyncio.to_thread(proc.stderr.readline):
        pass


def round_robin(url: str | Sequence[str]) -> Callable[[], str]:
    """The next URL for each request: one daemon, or several taken in turn (a load balancer)."""
    urls = itertools.cycle([url] if isinstance(url, str) else url)
    return lambda: next(urls)


async def load(
    url: str | Sequence[str], clients: int, total: int, body: Any
) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    target = round_robin(url)
    statuses: dict[str, int] = {}
    remaining = total

    async def client(http: Client) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            payload = body() if callable(body) else body
            started = time.perf_counter()
            _, answer = await http.post(target(), payload)
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[answer["status"]] = statuses.get(answer["status"], 0) + 1
            if answer["status"] == "SUCCESS" and "activationId" in answer:
                finish = {
                    "key": KEY,
                    "action": "FINISH_ACTIVATION",
                    "activationId": answer["activationId"],
                    "status": 4,
                }
                await http.post(target(), finish)

    async with Client(limit=clients) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed, statuses.get("SUCCESS", 0)


FLOOR_SERVER = """
import asyncio, sys
import uvloop
from aiohttp import web

async def answer(request):
    await request.read()
    return web.json_response({"status": "SUCCESS", "activationId": 1, "number": "79000000000"})

async def serve():
    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    await asyncio.Event().wait()

# The same stack as the daemon's: aiohttp on uvloop.
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
    runner.run(serve())
"""

GET_NUMBER_SECONDS = "supplier_get_number_seconds"
OPEN_LOOP_ACTIONS = ("GET_SERVICES", "GET_NUMBER", "GET_SERVICES", "FINISH_ACTIVATION")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_floor() -> tuple[subprocess.Popen[str], str]:
    """A do-nothing aiohttp server in its own process: what any HTTP answer costs here."""
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 (as start_emulator)
        [sys.executable, "-c", FLOOR_SERVER, str(port)], cwd=ROOT, text=True
    )
    url = f"http://127.0.0.1:{port}/"
    async with asyncio.timeout(30), Client() as http:
        while True:
            try:
                await http.post(url, {})
                return proc, url
            except OSError:
                await asyncio.sleep(0.1)


async def open_loop(
    url: str | Sequence[str], rate: float, duration: float
) -> dict[str, list[float]]:
    """Requests started on a fixed schedule; ms from each one's scheduled start to its answer."""
    target = round_robin(url)
    latencies: dict[str, list[float]] = {action: [] for action in OPEN_LOOP_ACTIONS}
    errors: list[str] = []
    last_activation: list[int] = []
    tasks: set[asyncio.Task[None]] = set()

    def body(action: str) -> dict[str, Any]:
        if action == "GET_NUMBER":
            return {"key": KEY, "action": action, "country": "russia", "operator": "any",
                    "service": random.choice(SERVICES[:-1]),
                    "sum": 10, "currency": 643}  # fmt: skip
        if action == "FINISH_ACTIVATION":
            # The newest activation this load opened (FINISH is idempotent, so a
            # repeat costs the same path as a first one).
            activation = last_activation[-1] if last_activation else 1
            return {"key": KEY, "action": action, "activationId": activation, "status": 4}
        return {"key": KEY, "action": action}

    async def one(http: Client, action: str, due: float) -> None:
        try:
            _, answer = await http.post(target(), body(action))
        except (OSError, HttpError) as exc:
            errors.append(f"{action}: {exc}")
            return
        latencies[action].append((time.perf_counter() - due) * 1000)
        if action == "GET_NUMBER" and answer.get("status") == "SUCCESS":
            last_activation.append(int(answer["activationId"]))

    async with Client(limit=200) as http:
        start = time.perf_counter() + 0.1
        total = int(rate * duration)
        for k in range(total):
            due = start + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(http, OPEN_LOOP_ACTIONS[k % 4], due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return latencies


async def loop_lag(
    session: aiohttp.ClientSession, status: str, metric: str = "supplier_event_loop_lag_seconds"
) -> dict[str, float]:
    """One of the daemon's histograms (the loop lag unless told), as bucket → count."""
    async with session.get(f"http://{status}/metrics") as response:
        text = await response.text()
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{metric}_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{metric}_count"):
            buckets["count"] = float(line.rsplit(" ", 1)[1])
    return buckets


def within(before: dict[str, float], after: dict[str, float], limit: str) -> str:
    """The share of a histogram's observations in the run that were at most `limit`."""
    total = after.get("count", 0.0) - before.get("count", 0.0)
    if not total:
        return "-"
    return f"{(after.get(limit, 0.0) - before.get(limit, 0.0)) / total * 100:.0f} %"


def lag_over(before: dict[str, float], after: dict[str, float], limit: str) -> str:
    """How many lag samples of the run were over `limit` seconds (a bucket bound), of how many."""
    if "count" not in after:
        return "-"
    total = after["count"] - before.get("count", 0.0)
    within = after.get(limit, 0.0) - before.get(limit, 0.0)
    return f"{total - within:.0f}/{total:.0f}"


def open_loop_table(floor: dict[str, list[float]], daemon: dict[str, list[float]]) -> list[str]:
    everything = [v for values in floor.values() for v in values]
    floor_p50, floor_p99 = statistics.median(everything), pct(everything, 99)
    rows = [
        "| action | floor p50 | floor p99 | p50 | p99 | max | p99 / floor p99 | p50 − floor p50 |",  # noqa: RUF001 (printed as it ever was)
        "|---|---|---|---|---|---|---|---|",
    ]
    for action in ("GET_SERVICES", "GET_NUMBER", "FINISH_ACTIVATION"):
        values = daemon[action]
        p50, p99 = statistics.median(values), pct(values, 99)
        rows.append(
            f"| {action} | {floor_p50:.2f} | {floor_p99:.2f} | {p50:.2f} | {p99:.2f} | "
            f"{max(values):.2f} | {p99 / floor_p99:.1f}× | {p50 - floor_p50:+.2f} |"  # noqa: RUF001
        )
    return rows


async def run(
    count: int,
    clients: int,
    requests: int,
    sms: int,
    burst: int,
    spread: float,
    *,
    phase: str = "all",
    rate: float = 200.0,
    duration: float = 30.0,
    profile: str | None = None,
    idle: float = 10.0,
    idle_profile: str | None = None,
) -> dict[str, str]:
    work = tempfile.mkdtemp(prefix=f"bench-hub-{count}-")
    emulator, control = await start_emulator(count, os.path.join(work, "bank"))
    hub = Hub()
    await hub.start()
    port, status_port = free_port(), free_port()
    daemon = await start_daemon(write_config(work, port, status_port, hub.url))
    out: dict[str, str] = {"modems": str(count)}
    url = f"http://127.0.0.1:{port}/"
    floor: subprocess.Popen[str] | None = None
    try:
        started = time.monotonic()
        await wait_log(daemon, "SIM in inventory", count, timeout=600)
        out["come_up"] = f"{time.monotonic() - started:.1f}"
        logs = asyncio.create_task(drain_log(daemon))
        me = psutil.Process(daemon.pid)

        cpu0 = me.cpu_times()
        spy = py_spy(daemon.pid, idle_profile, idle) if idle_profile else None
        await asyncio.sleep(idle)
        cpu1 = me.cpu_times()
        if spy is not None:
            await stop_py_spy(spy)
        out["idle_cpu"] = f"{(cpu1.user + cpu1.system - cpu0.user - cpu0.system) / idle * 100:.1f}"
        out["idle_rss"] = f"{me.memory_info().rss / 2**20:.0f}"

        if phase in ("all", "open-loop"):
            floor, floor_url = await start_floor()
            floor_latencies = await open_loop(floor_url, rate, duration)
            floor.terminate()
            floor.wait(timeout=20)
            floor = None
            async with aiohttp.ClientSession() as session:
                lag0 = await loop_lag(session, f"127.0.0.1:{status_port}")
                own0 = await loop_lag(session, f"127.0.0.1:{status_port}", GET_NUMBER_SECONDS)
                cpu0 = me.cpu_times()
                # What holds the daemon's event loop while it serves the open loop.
                spy = py_spy(daemon.pid, profile, duration) if profile else None
                daemon_latencies = await open_loop(url, rate, duration)
                cpu1 = me.cpu_times()
                if spy is not None:
                    await stop_py_spy(spy)
                lag1 = await loop_lag(session, f"127.0.0.1:{status_port}")
                own1 = await loop_lag(session, f"127.0.0.1:{status_port}", GET_NUMBER_SECONDS)
            out["open_loop"] = "\n".join(open_loop_table(floor_latencies, daemon_latencies))
            out["open_loop_cpu"] = (
                f"{(cpu1.user + cpu1.system - cpu0.user - cpu0.system) / duration * 100:.0f}"
            )
            out["open_loop_lag"] = (
                f"{lag_over(lag0, lag1, '0.005')} over 5 ms, "
                f"{lag_over(lag0, lag1, '0.025')} over 25 ms"
            )
            # The daemon's own time for a GET_NUMBER (its handler, the commit included):
            # how much of the client's latency is inside the handler.
            out["open_loop_own"] = ", ".join(
                f"≤ {float(le) * 1000:g} ms {within(own0, own1, le)}" for le in ("0.001", "0.0025")
            )
            if phase == "open-loop":
                logs.cancel()
                return out

        def number_body() -> dict[str, Any]:
            return {"key": KEY, "action": "GET_NUMBER", "country": "russia", "operator": "any",
                    "service": random.choice(SERVICES[:-1]),
                    "sum": 10, "currency": 643}  # fmt: skip

        if phase == "closed-loop":
            # The same closed loop against the do-nothing server (which answers every
            # GET_NUMBER with an activation, so each is followed by its FINISH too):
            # what this client and machine reach when the server costs nothing.
            floor, floor_url = await start_floor()
            floor_process = psutil.Process(floor.pid)
            floor_cpu0 = floor_process.cpu_times()
            floor_numbers, elapsed, _ = await load(floor_url, clients, requests, number_body)
            floor_cpu1 = floor_process.cpu_times()
            floor_cpu = sum(floor_cpu1[:2]) - sum(floor_cpu0[:2])
            out["floor_numbers_cpu_ms"] = f"{floor_cpu / max(1, len(floor_numbers)) * 1000:.3f}"
            floor.terminate()
            floor.wait(timeout=20)
            floor = None
            out["floor_numbers"] = summary(floor_numbers)
            out["floor_numbers_rps"] = f"{len(floor_numbers) / elapsed:.0f}"

        if phase == "sms":
            requests = 0  # straight to the SMS: activations on every SIM, spread, burst
        services, elapsed, _ = await load(
            url, clients, requests, {"key": KEY, "action": "GET_SERVICES"}
        )
        out["services"] = summary(services)
        out["services_rps"] = f"{len(services) / elapsed:.0f}"

        # The GET_NUMBER + FINISH load is what --profile records in this phase.
        spy = py_spy(daemon.pid, profile, 3600) if profile and phase == "closed-loop" else None
        cpu0, threads0, switches0 = me.cpu_times(), thread_times(me), loop_switches(me)
        ours0 = psutil.Process().cpu_times()
        numbers, elapsed, won = await load(url, clients, requests, number_body)
        cpu1, threads1, switches1 = me.cpu_times(), thread_times(me), loop_switches(me)
        ours1 = psutil.Process().cpu_times()
        # The load generator's own share: the daemon cannot go faster than it asks.
        out["client_cpu"] = f"{(sum(ours1[:2]) - sum(ours0[:2])) / elapsed * 100:.0f}"
        # Why the loop's thread is not busy all the time: it waited (for the GIL, or for
        # work: voluntary) or was preempted by another thread or process (involuntary).
        out["numbers_switches"] = " / ".join(
            f"{(after - before) / max(1, len(numbers)):.2f}"
            for before, after in zip(switches0, switches1, strict=True)
        )
        # The event loop's thread (the process's first) against all the others (the
        # store's writer): which one is saturated.
        loop_cpu = threads1.get(daemon.pid, 0.0) - threads0.get(daemon.pid, 0.0)
        others = sum(threads1.values()) - sum(threads0.values()) - loop_cpu
        out["numbers_threads"] = f"{loop_cpu / elapsed * 100:.0f} / {others / elapsed * 100:.0f}"
        if spy is not None:
            await stop_py_spy(spy)
        cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system
        out["numbers_cpu"] = f"{cpu / elapsed * 100:.0f}"
        # The daemon's CPU per GET_NUMBER and its FINISH: what one costs, whatever
        # share of the cores the daemon got (the rate depends on that too).
        out["numbers_cpu_ms"] = f"{cpu / max(1, len(numbers)) * 1000:.3f}"
        out["numbers"] = summary(numbers)
        out["numbers_rps"] = f"{len(numbers) / elapsed:.0f}"
        out["numbers_won"] = str(won)
        if phase == "closed-loop":
            logs.cancel()
            return out

        # Every SIM gets an open activation for the one service the load above left
        # alone, so every SMS below has a hub to go to.
        async with aiohttp.ClientSession() as session:
            for country in ("russia", "ukraine", "kazakhstan", "nigeria"):
                while True:
                    body = {
                        "key": KEY,
                        "action": "GET_NUMBER",
                        "country": country,
                        "operator": "any",
                        "service": SERVICES[-1],
                        "sum": 1,
                    }
                    async with session.post(url, json=body) as response:
                        if (await response.json())["status"] != "SUCCESS":
                            break

            async def deliver(items: list[dict[str, Any]]) -> list[str]:
                async with session.post(f"http://{control}/sms", json=items) as response:
                    return [pdus[0] for pdus in (await response.json())["pdus"]]

            # +CMTI → hub, `sms` SMS spread over `spread` seconds.
            texts: dict[str, str] = {}
            moments = sorted(random.uniform(0, spread) for _ in range(sms))
            spread_cpu0 = me.cpu_times()
            t0 = time.monotonic()
            for k, moment in enumerate(moments):
                await asyncio.sleep(max(0.0, t0 + moment - time.monotonic()))
                text = f"spread {k} code {random.randrange(10**6):06d}"
                [pdu] = await deliver([{"modem": random.randrange(count), "text": text}])
                texts[pdu] = text
            await hub.wait(set(texts.values()), timeout=120)
            stamps = await cmti_times(session, control, count)
            latencies = [(hub.arrived[texts[p]] - stamps[p]) * 1000 for p in texts if p in stamps]
            out["spread"] = summary(latencies)
            spread_cpu1 = me.cpu_times()
            took = time.monotonic() - t0
            spread_cpu = spread_cpu1.user + spread_cpu1.system
            spread_cpu -= spread_cpu0.user + spread_cpu0.system
            out["spread_cpu"] = f"{spread_cpu / took * 100:.0f}"
            out["spread_lost"] = str(len(set(texts.values()) - hub.arrived.keys()))

            # A burst of `burst` SMS across all modems at once.
            before = hub.count
            cpu0 = me.cpu_times()
            started = time.monotonic()
            items = [{"modem": i % count, "text": f"burst {i} code {i:06d}"} for i in range(burst)]
            await deliver(items)
            expected = {item["text"] for item in items}
            await hub.wait(expected, timeout=600)
            drain = time.monotonic() - started
            cpu1 = me.cpu_times()
            out["burst_drain"] = f"{drain:.1f}"
            out["burst_lost"] = str(len(expected - hub.arrived.keys()))
            out["burst_dup"] = str(hub.count - before - burst)
            out["burst_cpu"] = (
                f"{(cpu1.user + cpu1.system - cpu0.user - cpu0.system) / drain * 100:.0f}"
            )
            out["peak_rss"] = f"{me.memory_info().rss / 2**20:.0f}"
        logs.cancel()
    finally:
        if floor is not None:
            floor.kill()
        await clean_up((daemon, emulator), hub, work)
    return out


def write_config(work: str, port: int, status_port: int, hub_url: str, server: str = "") -> Path:
    """The daemon's config for a bank under `work`; `server`: more keys of `server:`."""
    config = Path(work) / "supplier.yaml"
    config.write_text(
        f"""
server: {{listen: "127.0.0.1:{port}"{server}}}
status: {{listen: "127.0.0.1:{status_port}"}}
hubs: [{{name: bench, key: "{KEY}", push_url: "{hub_url}"}}]
modems: {{ports: ["{work}/bank/modem*"]}}
services: {json.dumps(SERVICES)}
storage: {{path: "{work}/supplier.db"}}
"""
    )
    return config


async def clean_up(procs: Sequence[subprocess.Popen[str]], hub: Hub, work: str) -> None:
    """Stop the processes (killed if not gone in 20 s), the hub's endpoint; remove `work`."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    if hub.runner is not None:
        await hub.runner.cleanup()
    shutil.rmtree(work, ignore_errors=True)


def loop_switches(process: psutil.Process) -> tuple[int, int]:
    """The event loop's thread's context switches so far: (voluntary, involuntary)."""
    status = Path(f"/proc/{process.pid}/task/{process.pid}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return int(fields["voluntary_ctxt_switches"]), int(fields["nonvoluntary_ctxt_switches"])


def thread_times(process: psutil.Process) -> dict[int, float]:
    """CPU seconds (user + system) of each of a process's threads, by thread id."""
    return {t.id: t.user_time + t.system_time for t in process.threads()}


def py_spy(pid: int, output: str, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy recording the daemon's collapsed stacks, every thread, idle frames left out."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
         "--duration", str(int(seconds)), "--rate", "200", "--format", "raw",
         "--output", output, "--nonblocking", "--threads"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    """Stop it now (SIGINT: it writes what it has) and wait for the file."""
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    await asyncio.to_thread(spy.wait, 60)


async def cmti_times(session: aiohttp.ClientSession, control: str, count: int) -> dict[str, float]:
    stamps: dict[str, float] = {}
    for index in range(count):
        async with session.get(f"http://{control}/modems/{index}/cmti") as response:
            stamps.update({pdu: at for at, _, pdu in await response.json()})
    return stamps


def on_uvloop(main: Coroutine[Any, Any, dict[str, str]]) -> dict[str, str]:
    """The load generator on uvloop, like the daemon: its own cost per request is what caps
    the rates this machine can measure."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modems", type=int, action="append")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--sms", type=int, default=2000, help="SMS spread over --spread seconds")
    parser.add_argument("--spread", type=float, default=60.0)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument(
        "--phase",
        choices=["all", "open-loop", "closed-loop", "sms"],
        default="all",
        help="open-loop: only idle CPU and the open-loop load against its floor; "
        "closed-loop: only idle CPU and the closed-loop GET_SERVICES and GET_NUMBER; "
        "sms: only idle CPU, the spread SMS and the burst",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="open-loop seconds")
    parser.add_argument(
        "--idle", type=float, default=10.0, help="seconds of idle CPU measured after come-up"
    )
    parser.add_argument(
        "--profile",
        help="py-spy's collapsed stacks of the daemon (--threads) to a file: under the open "
        "loop (open-loop phase) or the GET_NUMBER + FINISH load (closed-loop phase)",
    )
    parser.add_argument(
        "--idle-profile", help="py-spy's collapsed stacks of the idle daemon (the --idle seconds)"
    )
    args = parser.parse_args()
    raise_open_file_limit()
    machine = f"{platform.platform()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.phase == "closed-loop":
        print(
            "| modems | idle CPU % | GET_SERVICES p50 / p99 / max ms | rps "
            "| GET_NUMBER | rps | won | daemon CPU % under GET_NUMBER (loop / other threads) "
            "| loop's switches per GET_NUMBER (waited / preempted) | load generator CPU % "
            "| daemon CPU ms per GET_NUMBER "
            "| floor GET_NUMBER p50 / p99 / max ms | floor rps | floor CPU ms per GET_NUMBER |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for count in args.modems or [512]:
            r = on_uvloop(
                run(count, args.clients, args.requests, args.sms, args.burst, args.spread,
                    phase="closed-loop", idle=args.idle, profile=args.profile,
                    idle_profile=args.idle_profile)
            )  # fmt: skip
            print(
                f"| {count} | {r['idle_cpu']} | {r['services']} | {r['services_rps']} | "
                f"{r['numbers']} | {r['numbers_rps']} | {r['numbers_won']} | "
                f"{r['numbers_cpu']} ({r['numbers_threads']}) | {r['numbers_switches']} | "
                f"{r['client_cpu']} | "
                f"{r['numbers_cpu_ms']} | "
                f"{r['floor_numbers']} | {r['floor_numbers_rps']} | {r['floor_numbers_cpu_ms']} |",
                flush=True,
            )
        return 0
    if args.phase == "open-loop":
        for count in args.modems or [512]:
            r = on_uvloop(
                run(count, args.clients, args.requests, args.sms, args.burst, args.spread,
                    phase="open-loop", rate=args.rate, duration=args.duration,
                    profile=args.profile, idle=args.idle, idle_profile=args.idle_profile)
            )  # fmt: skip
            open_loop_report(r, args.rate, args.duration)
        return 0
    print(
        f"{args.clients} concurrent hub clients, {args.requests} requests per action; "
        "latencies in ms (p50 | p99 | max)"
    )
    print()
    print(
        "| modems | come-up s | idle CPU % | idle RSS MB | GET_SERVICES | rps | GET_NUMBER | rps "
        f"| +CMTI→hub ({args.sms} over {args.spread:.0f} s) | lost | CPU % | burst: SMS "
        "| drain s | lost | doubled | CPU % | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    reports = []
    for count in args.modems or [64, 256, 512]:
        r = on_uvloop(
            run(count, args.clients, args.requests, args.sms, args.burst, args.spread,
                rate=args.rate, duration=args.duration, idle=args.idle, phase=args.phase)
        )  # fmt: skip
        reports.append(r)
        print(
            f"| {r['modems']} | {r['come_up']} | {r['idle_cpu']} | {r['idle_rss']} | "
            f"{r['services']} | "
            f"{r['services_rps']} | {r['numbers']} | {r['numbers_rps']} | {r['spread']} | "
            f"{r['spread_lost']} | {r['spread_cpu']} | {args.burst} | "
            f"{r['burst_drain']} | {r['burst_lost']} | {r['burst_dup']} | {r['burst_cpu']} | "
            f"{r['peak_rss']} |",
            flush=True,
        )
    for r in reports:
        if "open_loop" in r:
            open_loop_report(r, args.rate, args.duration)
    return 0


def open_loop_report(r: dict[str, str], rate: float, duration: float) -> None:
    print()
    print(
        f"open loop, {r['modems']} modems: {rate:.0f} requests/s for {duration:.0f} s "
        "(GET_SERVICES, GET_NUMBER, GET_SERVICES, FINISH 4), ms from the scheduled start; "
        f"idle CPU {r['idle_cpu']} % of a core; daemon CPU under this load {r['open_loop_cpu']} %; "
        f"daemon loop lag samples {r['open_loop_lag']}; the daemon's own GET_NUMBER time "
        f"(handler and commit): {r['open_loop_own']}"
    )
    print(r["open_loop"], flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
