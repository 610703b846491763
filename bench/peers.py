"""Side by side with the peers: gammu-smsd and smstools3 against the same emulated modem.

For each daemon in turn (gammu-smsd with its default polling and tuned as low
as it goes, smstools the same, then ours), one emulated modem (same vendor
profile, same SIM) gets the same sequence of SMS — GSM-7, UCS-2 and a 3-part
message, twice — at random moments. Per SMS the time is measured from the
moment its (last part's) `+CMTI` line is written on the pty to the hand-over:
the peer's hook running (gammu `RunOnReceive`, smstools `eventhandler`, both
a shell script stamping `date +%s.%N`), or our test hub receiving PUSH_SMS.
smstools does not enable `+CMTI` (it polls `AT+CPMS?`); for it the moment is
when the message is stored, which is when the line would be written.
Each daemon must hand over every message exactly once, multipart joined.

    python bench/peers.py                  # installs the peers with apt-get if missing
    python bench/peers.py --rounds 3 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import logging  # noqa: E402

import aiohttp  # noqa: E402
import psutil  # noqa: E402
import structlog  # noqa: E402
from aiohttp import web  # noqa: E402

from modems.emulator import VirtualModemBank  # noqa: E402
from modems.emulator.device import VirtualModem  # noqa: E402

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

TOKEN_RE = re.compile(rb"m\d\d")
KEY = "peers-bench-key-01"
# Wall clock minus monotonic: hooks stamp wall time, the emulator monotonic time.
OFFSET = time.time() - time.monotonic()


def messages(rounds: int) -> list[tuple[str, str]]:
    out = []
    for r in range(rounds):
        n = 3 * r
        out.append(("GSM-7", f"m{n + 1:02d} Your code is 48213. Do not share it."))
        out.append(("UCS-2", f"m{n + 2:02d} Код подтверждения: 59120 🔐"))
        long = f"m{n + 3:02d} " + "Three-part GSM-7 message, part of a longer notice. " * 8
        out.append(("3-part", long[:400]))
    return out


@dataclass
class Case:
    name: str
    handed: dict[str, list[float]] = field(default_factory=dict)  # token → hand-over times
    handovers: int = 0
    latencies: list[float] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    error: str | None = None
    cpu: float = float("nan")  # % of one core over the run
    at_rate: float = float("nan")  # AT commands per second sent to the modem


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# -- the peers ------------------------------------------------------------------------------


HOOK = """#!/bin/sh
# Stamps the hand-over: wall time, then the files the daemon handed over.
echo "$(date +%s.%N) $*" >> {log}
"""


def write_hook(folder: Path) -> Path:
    hook = folder / "hook.sh"
    hook.write_text(HOOK.format(log=folder / "hook.log"))
    hook.chmod(0o755)
    return hook


def gammu_config(folder: Path, device: str, tuned: bool) -> list[str]:
    for sub in ("inbox", "outbox", "sent", "error"):
        (folder / sub).mkdir()
    hook = write_hook(folder)
    tuning = (
        # As low as it goes: no waiting between loops, receive checked every loop,
        # and no battery/signal/network checks between them.
        "CommTimeout = 0\nReceiveFrequency = 0\nLoopSleep = 0\nStatusFrequency = 0\n"
        "CheckSecurity = 0\nCheckBattery = 0\nCheckSignal = 0\nCheckNetwork = 0\n"
        if tuned
        else ""
    )
    (folder / "smsdrc").write_text(
        f"[gammu]\ndevice = {device}\nconnection = at\n\n[smsd]\nservice = files\n"
        f"inboxpath = {folder}/inbox/\noutboxpath = {folder}/outbox/\n"
        f"sentsmspath = {folder}/sent/\nerrorsmspath = {folder}/error/\n"
        f"InboxFormat = unicode\nRunOnReceive = {hook}\nlogfile = {folder}/smsd.log\n"
        f"debuglevel = 0\n{tuning}"
    )
    return ["gammu-smsd", "-c", str(folder / "smsdrc")]


def smstools_config(folder: Path, device: str, tuned: bool) -> list[str]:
    for sub in ("outgoing", "checked", "incoming", "failed", "sent"):
        (folder / sub).mkdir()
    hook = folder / "hook.sh"
    hook.write_text(
        f'#!/bin/sh\n[ "$1" = RECEIVED ] && echo "$(date +%s.%N) $2" >> {folder}/hook.log\nexit 0\n'
    )
    hook.chmod(0o755)
    tuning = "delaytime = 1\ndelaytime_mainprocess = 1\n" if tuned else ""
    modem_tuning = "incoming = high\n" if tuned else "incoming = yes\n"
    (folder / "smsd.conf").write_text(
        f"devices = GSM1\nlogfile = {folder}/smsd.log\nloglevel = 3\n"
        f"outgoing = {folder}/outgoing\nchecked = {folder}/checked\n"
        f"incoming = {folder}/incoming\nfailed = {folder}/failed\nsent = {folder}/sent\n"
        f"eventhandler = {hook}\ninfofile = {folder}/smsd.working\n"
        f"pidfile = {folder}/smsd.pid\n{tuning}\n"
        f"[GSM1]\ndevice = {device}\nbaudrate = 115200\n{modem_tuning}"
    )
    return ["smsd", "-t", "-c", str(folder / "smsd.conf")]


def read_handovers(folder: Path, case: Case) -> None:
    """Each hook line is one hand-over; the tokens in its files say which messages."""
    log = folder / "hook.log"
    if not log.exists():
        return
    for line in log.read_text().splitlines():
        stamp, *names = line.split()
        case.handovers += 1
        tokens: set[str] = set()
        for name in names:
            path = Path(name) if name.startswith("/") else folder / "inbox" / name
            with contextlib.suppress(OSError):
                found = TOKEN_RE.findall(path.read_bytes().replace(b"\0", b""))
                tokens |= {t.decode() for t in found}
        for token in tokens:
            case.handed.setdefault(token, []).append(float(stamp))


async def run_peer(
    name: str,
    build: Callable[[Path, str, bool], list[str]],
    tuned: bool,
    ready: Callable[[VirtualModem], bool],
    sequence: list[tuple[str, str]],
    seed: int,
    drain: float,
) -> Case:
    case = Case(name)
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        folder = Path(tmp)
        bank = VirtualModemBank(1, str(folder / "ports"), profiles=["generic"])
        await bank.start()
        modem = bank[0]
        command = build(folder, modem.link, tuned)
        # Popen, not asyncio's: psutil measures the pid; starting blocks well under a ms.
        proc = subprocess.Popen(  # noqa: ASYNC220
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        usage = psutil.Process(proc.pid)
        try:
            await modem.wait_until(lambda: ready(modem), timeout=60)
            cpu0, commands0, t0 = cpu_seconds(usage), modem.command_count, time.monotonic()
            await deliver(modem, sequence, seed)
            deadline = time.monotonic() + drain
            while time.monotonic() < deadline:
                case.handed.clear()
                case.handovers = 0
                read_handovers(folder, case)
                if len(case.handed) >= len(sequence):
                    break
                await asyncio.sleep(0.25)  # polling the peer's hook log file
            await asyncio.sleep(1.0)  # a late duplicate would show up here
            took = time.monotonic() - t0
            case.cpu = (cpu_seconds(usage) - cpu0) / took * 100
            case.at_rate = (modem.command_count - commands0) / took
        except TimeoutError:
            case.error = "did not start polling the modem within 60 s"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            bank.stop()
        case.handed.clear()
        case.handovers = 0
        read_handovers(folder, case)
        score(case, modem, sequence)
    return case


# -- ours -----------------------------------------------------------------------------------


async def run_ours(sequence: list[tuple[str, str]], seed: int, drain: float) -> Case:
    case = Case("supplier (ours)")
    arrived: dict[str, list[float]] = {}
    changed = asyncio.Event()

    async def push(request: web.Request) -> web.Response:
        now = time.time()
        body = json.loads(await request.read())
        case.handovers += 1
        for token in TOKEN_RE.findall(body["text"].encode()):
            arrived.setdefault(token.decode(), []).append(now)
        changed.set()
        return web.json_response({"status": "SUCCESS"})

    app = web.Application()
    app.router.add_post("/push", push)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hub_url = f"http://127.0.0.1:{runner.addresses[0][1]}/push"
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        folder = Path(tmp)
        bank = VirtualModemBank(1, str(folder / "ports"), profiles=["generic"])
        await bank.start()
        modem = bank[0]
        with socket_port() as port:
            pass
        (folder / "supplier.yaml").write_text(
            f'server: {{listen: "127.0.0.1:{port}"}}\nstatus: {{listen: "127.0.0.1:0"}}\n'
            f'hubs: [{{name: bench, key: "{KEY}", push_url: "{hub_url}"}}]\n'
            f'modems: {{ports: ["{bank.pattern}"]}}\n'
            f'storage: {{path: "{folder / "supplier.db"}"}}\n'
        )
        proc = subprocess.Popen(  # noqa: ASYNC220 (as the peers' daemons)
            [sys.executable, "-m", "supplier", "run", "--config", str(folder / "supplier.yaml")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/"
            async with aiohttp.ClientSession() as session:
                number = None
                async with asyncio.timeout(60):
                    while number is None:
                        with contextlib.suppress(aiohttp.ClientError):
                            async with session.post(
                                url,
                                json={"key": KEY, "action": "GET_NUMBER", "country": "russia",
                                      "operator": "any", "service": "vk"},
                            ) as response:  # fmt: skip
                                answer = await response.json()
                                if answer.get("status") == "SUCCESS":
                                    number = answer["number"]
                        if number is None:
                            await asyncio.sleep(0.1)  # the daemon is still starting
            usage = psutil.Process(proc.pid)
            cpu0, commands0, t0 = cpu_seconds(usage), modem.command_count, time.monotonic()
            await deliver(modem, sequence, seed)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain):
                    while len(arrived) < len(sequence):
                        changed.clear()
                        await changed.wait()
            await asyncio.sleep(1.0)  # a late duplicate would show up here
            took = time.monotonic() - t0
            case.cpu = (cpu_seconds(usage) - cpu0) / took * 100
            case.at_rate = (modem.command_count - commands0) / took
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 20)
            bank.stop()
            await runner.cleanup()
    case.handed = arrived
    score(case, modem, sequence)
    return case


@contextlib.contextmanager
def socket_port():  # type: ignore[no-untyped-def]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- shared ----------------------------------------------------------------------------------


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def deliver(modem: VirtualModem, sequence: list[tuple[str, str]], seed: int) -> None:
    """The same SMS at the same random moments for every daemon."""
    rng = random.Random(seed)
    modem.arrival_log.clear()
    for _, text in sequence:
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        modem.deliver(text, "Service", reference=rng.randrange(256))


def score(case: Case, modem: VirtualModem, sequence: list[tuple[str, str]]) -> None:
    # Arrivals in order: one per part; a message is complete at its last part.
    arrivals = [t for t, _, _ in modem.arrival_log]
    position = 0
    for _, text in sequence:
        parts = 3 if len(text) > 160 else 1
        position += parts
        token = text[:3]
        if position - 1 >= len(arrivals):
            case.missing.append(token)
            continue
        start = arrivals[position - 1] + OFFSET
        times = case.handed.get(token, [])
        if not times:
            case.missing.append(token)
            continue
        if len(times) > 1:
            case.doubled.append(token)
        case.latencies.append((min(times) - start) * 1000)


def gammu_ready(modem: VirtualModem) -> bool:
    # Polling has begun: it has looked at the message storage twice.
    return sum(1 for c in modem.commands if "CPMS=" in c.upper()) >= 4


def smstools_ready(modem: VirtualModem) -> bool:
    return sum(1 for c in modem.commands if c.upper().startswith("AT+CPMS?")) >= 1


def ensure_installed() -> dict[str, str | None]:
    """Install the peers with apt-get if missing; say why one is skipped."""
    wanted = {"gammu-smsd": "gammu-smsd", "smsd": "smstools"}
    missing = [pkg for cmd, pkg in wanted.items() if shutil.which(cmd) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} with apt-get …", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], check=False, env=env, capture_output=True
        )
    return {
        cmd: None if shutil.which(cmd) else f"{pkg} is not installed and could not be installed"
        for cmd, pkg in wanted.items()
    }


def version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "?"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of GSM-7, UCS-2, 3-part")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drain", type=float, default=90.0, help="seconds to wait for hand-overs")
    args = parser.parse_args()
    sequence = messages(args.rounds)
    skipped = ensure_installed()
    cases: list[Case] = []
    peers = [
        ("gammu-smsd", "gammu-smsd, defaults", gammu_config, False, gammu_ready),
        ("gammu-smsd", "gammu-smsd, tuned", gammu_config, True, gammu_ready),
        ("smsd", "smstools, defaults", smstools_config, False, smstools_ready),
        ("smsd", "smstools, tuned", smstools_config, True, smstools_ready),
    ]
    for command, name, build, tuned, ready in peers:
        if skipped[command]:
            print(f"skipping {name}: {skipped[command]}", flush=True)
            continue
        print(f"running {name} …", flush=True)
        cases.append(await run_peer(name, build, tuned, ready, sequence, args.seed, args.drain))
    print("running supplier (ours) …", flush=True)
    ours = await run_ours(sequence, args.seed, args.drain)
    cases.append(ours)

    ours_p50 = statistics.median(ours.latencies) if ours.latencies else float("nan")
    print()
    machine = f"{platform.platform()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(f"peers: {version(['gammu-smsd', '--version'])}; {version(['smsd', '-V'])}")
    kinds = ", ".join(kind for kind, _ in sequence)
    print(f"{len(sequence)} SMS per daemon ({kinds}), seed {args.seed}")
    print()
    print(
        "| daemon | handed over | exactly once | p50 ms | p99 ms | max ms | p50 ÷ ours "
        "| CPU % of a core | AT commands/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        if case.error:
            print(f"| {case.name} | {case.error} | | | | | |")
            continue
        once = (
            "yes"
            if not case.missing and not case.doubled
            else f"no: missing {case.missing or '-'}, doubled {case.doubled or '-'}"
        )
        lat = case.latencies
        p50 = statistics.median(lat) if lat else float("nan")
        print(
            f"| {case.name} | {len(case.handed)}/{len(sequence)} in {case.handovers} hand-overs "
            f"| {once} | {p50:.0f} | {pct(lat, 99) if lat else float('nan'):.0f} "
            f"| {max(lat) if lat else float('nan'):.0f} | {p50 / ours_p50:.1f}× "  # noqa: RUF001
            f"| {case.cpu:.1f} | {case.at_rate:.1f} |"
        )
    print()
    print("per SMS (ms):")
    for case in cases:
        print(f"  {case.name:22} " + " ".join(f"{v:7.0f}" for v in case.latencies))


if __name__ == "__main__":
    asyncio.run(main())
