"""An operator's day: what the log says, what the CLI shows, numbers that cannot be doubled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import structlog

from supplier.config import ConfigError, parse_config

from .conftest import BankFactory
from .hubkit import FakeHub, RunFactory
from .test_cli import closed_port, supplier
from .test_run_e2e import KEY, Process, free_port
from .test_status import TOKEN, post

ROOT = Path(__file__).resolve().parents[1]


class Run(Process):
    """`supplier run` with the arguments given (the e2e Process puts --log-level first)."""

    def __init__(self, config: Path, *args: str) -> None:
        super().__init__(config)
        self.args = args

    async def start(self, env: dict[str, str] | None = None) -> None:
        self.lines.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "supplier",
            *self.args,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
        self._reader = asyncio.create_task(self._read())


def write_config(path: Path, pattern: str, hub_url: str, port: int, extra: str = "") -> Path:
    path.write_text(
        f"""
server: {{listen: "127.0.0.1:{port}"}}
status: {{listen: "127.0.0.1:0"}}
hubs:
  - {{name: smshub, key: "{KEY}", push_url: "{hub_url}"}}
modems: {{ports: ["{pattern}"], health_interval: 1s}}
services: [vk, tg]
storage: {{path: "{path.parent / "supplier.db"}"}}
{extra}
"""
    )
    return path


async def test_run_logs_what_an_operator_needs_at_the_default_level(
    make_bank: BankFactory, tmp_path: Path
) -> None:
    bank = await make_bank(3)
    hub = FakeHub()
    await hub.start()
    port = free_port()
    config = write_config(tmp_path / "supplier.yaml", bank.pattern, hub.url, port)
    process = Run(config, "run", "--config", str(config))  # no --log-level: info for run
    await process.start()
    try:
        await process.until("start-up summary", timeout=60)
        [started] = [line for line in process.lines if line["event"] == "daemon started"]
        assert started["level"] == "info"
        assert started["ports_matched"] == 3 and started["hubs"] == ["smshub"]
        assert started["listen"] == f"127.0.0.1:{port}"
        [summary] = [line for line in process.lines if line["event"] == "start-up summary"]
        assert summary["modems"] == 3 and summary["sims_ready"] == 3
        assert summary["still_starting"] == 0 and summary["status"].startswith("http://")
        assert process.count("SIM in inventory") == 3
        # The modem layer's steps (probing, initializing, every port found) are debug.
        assert process.count("modem state") == 0 and process.count("port found") == 0

        # A hub with a wrong key: the first request is logged, not every one.
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.post(
                    f"http://127.0.0.1:{port}/",
                    json={"key": "not-our-key", "action": "GET_SERVICES"},
                ) as response:
                    assert (await response.json())["status"] == "ERROR"
        await process.until("hub request with an unknown key")
        assert process.count("hub request with an unknown key") == 1

        # Unplugged, then back: each change is one line naming the port.
        link = bank[1].link
        bank[1].unplug()
        await process.until("SIM lost", port=link)
        await process.until("modem gone; reopening", port=link)
        bank[1].replug()
        await process.until("modem back", port=link)
        [lost] = [line for line in process.lines if line["event"] == "SIM lost"]
        assert lost["level"] == "warning" and lost["iccid"] == bank[1].sim.iccid  # type: ignore[union-attr]
        assert lost["number"] == bank[1].sim.number  # type: ignore[union-attr]

        assert process.proc is not None
        process.proc.send_signal(signal.SIGHUP)
        await process.until("configuration reloaded")
        [reload] = [line for line in process.lines if line["event"] == "configuration reloaded"]
        assert reload["hubs"] == ["smshub"] and reload["services"] == ["vk", "tg"]
        before = process.count("SIM lost")
    finally:
        code = await process.stop()
        await hub.stop()
    assert code == 0
    # The throttled count is told at the stop; the modems stopped on purpose are not "lost".
    assert process.count("hub request with an unknown key (repeated)", count=4) == 1
    assert process.count("SIM lost") == before
    assert process.count("modem gone; reopening") == 1


async def test_unknown_keys_are_counted_per_interval(run: RunFactory) -> None:
    r = await run(modems=1)
    assert r.daemon.running.protocol is not None
    throttle = r.daemon.running.protocol.unknown_key
    throttle.interval = 0.3
    flushed = asyncio.Event()
    flush = throttle.flush

    def on_flush() -> None:
        flush()
        flushed.set()

    throttle.flush = on_flush  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            for _ in range(7):
                async with session.post(r.url, json={"key": "wrong-key-1", "action": "X"}) as a:
                    assert (await a.json())["error"] == "key: missing or unknown"
        await asyncio.wait_for(flushed.wait(), 5)
    events = [(e["event"], e.get("count")) for e in logs if "unknown key" in e["event"]]
    assert events == [
        ("hub request with an unknown key", None),
        ("hub request with an unknown key (repeated)", 6),
    ]
    assert all(e["log_level"] == "warning" for e in logs if "unknown key" in e["event"])
    assert logs[0]["peer"] == "127.0.0.1"
    assert "wrong-key-1" not in json.dumps(logs, default=str)  # a key is never logged


async def test_log_level_after_the_command(make_bank: BankFactory, tmp_path: Path) -> None:
    bank = await make_bank(1)
    config = write_config(
        tmp_path / "supplier.yaml", bank.pattern, "http://127.0.0.1:1/", free_port()
    )
    process = Run(config, "run", "--config", str(config), "--log-level", "debug")
    await process.start()
    try:
        await process.until("modem state")  # the modem layer's steps, shown at debug
    finally:
        assert await process.stop() == 0
    code, out, _ = await supplier("check-config", "--config", str(config), "--log-level", "error")
    assert code == 0 and json.loads(out)["hubs"][0]["key"] == "***"


def test_json_logs_carry_the_traceback() -> None:
    program = (
        "import structlog\n"
        "from supplier import logs\n"
        "logs.configure('info', json=True)\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    structlog.get_logger().exception('it broke')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=True,
    )
    line = json.loads(result.stderr)
    assert line["event"] == "it broke"
    assert "Traceback" in line["exception"] and "ZeroDivisionError" in line["exception"]
    assert "exc_info" not in line


async def test_a_number_another_sim_has_is_refused(run: RunFactory) -> None:
    r = await run(modems=2, status={"listen": "127.0.0.1:0", "token": TOKEN})
    first, second = (m.sim for m in r.bank)
    assert first is not None and second is not None and second.number is not None
    inventory = r.daemon.running.inventory
    assert inventory is not None
    # The same number as the second SIM's, in international and in national form.
    for given in (second.number, "8" + second.number[1:]):
        code, body = await post(r, f"/api/sims/{first.iccid}/number", {"number": given})
        assert code == 409 and body["status"] == "ERROR", body
        assert second.iccid in body["error"]
    assert inventory.sims[first.iccid].number == first.number
    store = r.daemon.running.store
    assert store is not None
    assert {s.iccid: s.number_manual for s in await store.load_sims()}[first.iccid] is None
    # Two operators giving one new number to both SIMs at the same moment: one wins.
    answers = await asyncio.gather(
        post(r, f"/api/sims/{first.iccid}/number", {"number": "79990001122"}),
        post(r, f"/api/sims/{second.iccid}/number", {"number": "79990001122"}),
    )
    assert sorted(code for code, _ in answers) == [200, 409]
    # Sold once: GET_SERVICES counts two SIMs under two numbers.
    assert len({s.number for s in inventory.sims.values()}) == 2


def test_two_sims_with_one_number_in_the_config_are_refused() -> None:
    hub = {"name": "a", "key": "key-aaaa-1", "push_url": "http://127.0.0.1:1/"}
    with pytest.raises(ConfigError, match=r"sims: .*79151112233 is given to both"):
        parse_config(
            {
                "hubs": [hub],
                "sims": {
                    "89701010000000000004": {"number": "79151112233"},
                    "89701010000000000012": {"number": "+79151112233"},
                },
            }
        )


async def test_sims_shows_the_number_that_is_sold(run: RunFactory) -> None:
    iccid = "8970010000000000004"  # the emulator's first SIM (russia/mts)
    r = await run(modems=2, sims={iccid: {"number": "89151112233"}})  # national form
    answer = await r.number("alpha", "mts")
    assert answer["number"] == 79151112233  # sold with the country code
    assert r.daemon.running.status_listening is not None
    config = Path(r.daemon.config.storage.path).parent / "sims.yaml"
    config.write_text(
        "hubs: [{name: alpha, key: alpha-key-0001, push_url: 'http://127.0.0.1:1/'}]\n"
        f"storage: {{path: '{r.daemon.config.storage.path}'}}\n"
        f"status: {{listen: '127.0.0.1:{closed_port()}'}}\n"
        f"sims: {{'{iccid}': {{number: '89151112233'}}}}\n"
    )
    code, out, err = await supplier("sims", "--config", str(config))
    assert code == 0, err
    row = next(line for line in out.splitlines() if iccid in line)
    assert row.startswith("+79151112233 ")
    assert r.bank[0].sim is not None and f"+{r.bank[0].sim.number}" not in out


async def test_scan_while_the_daemon_runs_says_so_at_once(run: RunFactory) -> None:
    r = await run(modems=3)
    assert r.daemon.running.status_listening is not None
    config = Path(r.daemon.config.storage.path).parent / "scan.yaml"
    config.write_text(
        "hubs: [{name: alpha, key: alpha-key-0001, push_url: 'http://127.0.0.1:1/'}]\n"
        f"modems: {{ports: ['{r.bank.pattern}']}}\n"
        f"status: {{listen: '127.0.0.1:{r.daemon.running.status_listening[1]}'}}\n"
    )
    started = time.monotonic()
    code, out, err = await supplier("scan", "--config", str(config))
    assert code == 0, err
    assert time.monotonic() - started < 15  # not the 20 s probe timeout
    assert err.count("\n") == 1 and "3 ports held by another process" in err
    assert "Could not exclusively lock" not in out + err
    for modem in r.bank:
        assert modem.sim is not None
        row = next(line for line in out.splitlines() if modem.sim.iccid in line)
        assert f"+{modem.sim.number}" in row and row.rstrip().endswith("ready")
    assert out.splitlines()[-1] == "3 ports, 3 SIMs ready"

    # Without the config there is no daemon to ask: the one line, and exit 1.
    code, out, err = await supplier("scan", "--ports", r.bank.pattern)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "held by another process" in err and "--config" in err


def check_config(tmp_path: Path, text: str) -> tuple[int, str, str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "supplier", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def test_check_config_warns_about_what_will_not_work(tmp_path: Path) -> None:
    code, out, err = check_config(tmp_path, (ROOT / "config.example.yaml").read_text())
    assert code == 0
    json.loads(out)  # the settings still print
    assert "hubs[0].key: still the example's placeholder" in err
    assert "hubs[0].push_url: 'https://hub.example/agent/api/sms' is an example address" in err
    assert "modems.ports: '/dev/serial/by-path/*' matches no port now" in err or os.path.isdir(
        "/dev/serial/by-path"
    )
    assert all(line.startswith("supplier: warning: ") for line in err.splitlines())

    code, out, err = check_config(
        tmp_path,
        "hubs: [{name: a, key: real-key-123456, push_url: 'https://hub.real.net/push'}]\n"
        f"modems: {{ports: ['{tmp_path}/tty*']}}\n"
        "storage: {path: /proc/sys/supplier.db}\n"
        "status: {token: abc}\n",
    )
    assert code == 0
    assert json.loads(out)["status"]["token"] == "***"
    assert "status.token: 3 characters; use at least 8" in err
    assert "storage.path: the folder '/proc/sys' is not writable" in err
    assert f"modems.ports: '{tmp_path}/tty*' matches no port now" in err
    assert "hubs[0]" not in err  # a real key and URL: nothing to say

    code, out, err = check_config(
        tmp_path,
        "hubs: [{name: a, key: real-key-123456, push_url: 'https://hub.real.net/push'}]\n"
        f"storage: {{path: '{tmp_path}/missing/supplier.db'}}\n"
        "status: {token: ''}\n",
    )
    assert code == 0
    assert json.loads(out)["status"]["token"] == ""  # empty, shown as empty
    assert "status.token: empty" in err and "missing' does not exist" in err

    code, out, err = check_config(
        tmp_path, "hubs: [{name: a, key: '', push_url: 'https://hub.real.net/push'}]\n"
    )
    assert code == 2 and out == ""
    assert "hubs[0].key: empty: expected a key of at least 8 characters" in err
    assert "***" not in err


async def test_the_operator_reset_is_logged(run: RunFactory) -> None:
    r = await run(modems=1, status={"listen": "127.0.0.1:0", "token": TOKEN})
    port = r.bank[0].link
    with structlog.testing.capture_logs() as logs:
        code, _ = await post(r, "/api/modems/reset", {"port": port})
        assert code == 200
        ready = len(r.events)
        await r.until(lambda: any(getattr(e, "port", None) == port for e in r.events[ready:]))
        await r.until(lambda: any(e.get("event") == "modem reset" for e in logs))
    reset = next(e for e in logs if e.get("event") == "modem reset")
    assert reset["port"] == port and reset["log_level"] == "warning"


async def test_live_sims_last_seen_follows_the_health_checks(run: RunFactory) -> None:
    r = await run(modems=2)
    store, daemon = r.daemon.running.store, r.daemon
    assert store is not None
    iccids = [m.sim.iccid for m in r.bank if m.sim]
    await store.touch_sims(iccids, time.time() - 3600)  # as if last written an hour ago
    marked = asyncio.Event()
    mark = daemon.mark_seen

    async def spy(now: float) -> None:
        await mark(now)
        marked.set()

    daemon.mark_seen = spy  # type: ignore[method-assign]
    daemon.seen_interval = 0.0  # every housekeeping round (about 5 s) instead of every minute
    await asyncio.wait_for(marked.wait(), 15)
    seen = {s.iccid: s.last_seen for s in await store.load_sims()}
    assert all(time.time() - seen[i] < 30 for i in iccids)
