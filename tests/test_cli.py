"""Every `supplier` command as a real process, against the virtual modem bank."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
from pathlib import Path

import pytest

from modems.emulator import VirtualModemBank
from modems.pdu import SmsDeliver, decode_pdu
from supplier import cli
from supplier.demo import DEMO_TEXTS, SHOWN, demo_sms, plural, shorten

from .conftest import BankFactory
from .hubkit import RunFactory

ROOT = Path(__file__).resolve().parents[1]


async def supplier(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run `python -m supplier ARGS` without blocking the loop that serves the bank."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "supplier",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    "command", [[], ["run"], ["check-config"], ["scan"], ["sims"], ["emulate"], ["demo"]]
)
async def test_help_everywhere(command: list[str]) -> None:
    code, out, _ = await supplier(*command, "--help")
    assert code == 0
    assert out.startswith("usage: supplier")


def test_every_command_runs_on_uvloop() -> None:
    # The loop the measurements in bench/RESULTS.md (issue 17) were made on.
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert cli._run_loop(loop_module()).startswith("uvloop")


async def test_bad_usage_is_one_line_and_exit_2() -> None:
    code, _, err = await supplier("frobnicate")
    assert code == 2 and "invalid choice" in err
    code, _, err = await supplier("demo", "--interval", "-1")
    assert code == 2 and "expected a number of seconds" in err


async def test_scan_prints_every_modem_and_leaves_stored_sms_alone(
    make_bank: BankFactory,
) -> None:
    bank: VirtualModemBank = await make_bank(3)
    bank[1].deliver("waiting for the daemon", "VK")
    bank[2].remove_sim()
    code, out, err = await supplier("scan", "--ports", bank.pattern, "--timeout", "20")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "PORT", "MODEM", "IMEI", "ICCID", "IMSI", "NUMBER", "NETWORK", "SIGNAL", "STATE",
    ]  # fmt: skip
    for modem in bank:
        row = next(line for line in lines if line.startswith(modem.link))
        if modem.sim is not None:
            assert modem.sim.iccid in row and f"+{modem.sim.number}" in row
            assert modem.sim.imsi in row and row.rstrip().endswith("ready")
            assert "russia/" in row and "home" in row
        else:
            assert "no_sim" in row
    assert lines[-1] == "3 ports, 2 SIMs ready"
    [slot] = bank[1].stored().values()  # still there: scan never reads or deletes SMS
    message = decode_pdu(slot.pdu)
    assert isinstance(message, SmsDeliver) and message.text == "waiting for the daemon"


async def test_scan_with_nothing_plugged_in(tmp_path: Path) -> None:
    code, out, err = await supplier("scan", "--ports", str(tmp_path / "tty*"))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "no serial ports match" in err


@pytest.mark.backends
async def test_sims_lists_the_store_while_the_daemon_runs(run: RunFactory, tmp_path: Path) -> None:
    r = await run(modems=3)
    answer = await r.number("alpha", "mts", "vk")
    other = await r.number("alpha", "megafon", "tg")
    await r.call(
        "alpha", {"action": "FINISH_ACTIVATION", "activationId": other["activationId"], "status": 3}
    )
    assert r.daemon.running.status_listening is not None
    config = tmp_path / "supplier.yaml"
    storage = r.daemon.config.storage
    where = f"url: '{storage.url}'" if storage.url else f"path: '{storage.path}'"

    def write(status_port: int) -> None:
        config.write_text(
            "hubs: [{name: alpha, key: alpha-key-0001, push_url: 'http://127.0.0.1:1/'}]\n"
            f"storage: {{{where}}}\n"
            f"status: {{listen: '127.0.0.1:{status_port}'}}\n"
        )

    # The daemon answers on its status address: the states are its live ones.
    write(r.daemon.running.status_listening[1])
    code, out, err = await supplier("sims", "--config", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["NUMBER", "ICCID", "COUNTRY/OPERATOR", "STATE", "OPEN"]
    mts = next(line for line in lines if f"+{answer['number']}" in line)
    assert "russia/mts" in mts and "active (live)" in mts
    assert f"alpha:vk#{answer['activationId']}" in mts and "vk 0/0/1" in mts
    megafon = next(line for line in lines if f"+{other['number']}" in line)
    assert "tg 1/0/1!" in megafon  # sold: never offered for tg again
    assert "ready (live)" in megafon
    assert lines[-1] == "3 SIMs, 3 on sale, 1 open activations; live states from the running daemon"

    # No daemon answering: the store's "last seen", which live SIMs keep fresh.
    store = r.daemon.running.store
    assert store is not None
    iccids = list(r.daemon.running.inventory.sims)  # type: ignore[union-attr]
    await store.touch_sims(iccids, time.time() - 3 * 3600)
    write(closed_port())
    code, out, err = await supplier("sims", "--config", str(config))
    assert code == 0, err
    assert out.count("on sale, last seen 3 h ago") == 3
    assert "the daemon is not answering" in out.splitlines()[-1]
    await r.daemon.mark_seen(time.time())  # what the daemon does every minute
    code, out, err = await supplier("sims", "--config", str(config))
    # Seconds ago: the CLI's own start-up (under load, more than one) is all that passed.
    assert len(re.findall(r"on sale, last seen \d s ago", out)) == 3, out


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sims_without_a_database(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "hubs: [{name: a, key: key-aaaa-1, push_url: 'http://127.0.0.1:1/'}]\n"
        f"storage: {{path: '{tmp_path / 'none.db'}'}}\n"
    )
    code, _, err = await supplier("sims", "--config", str(config))
    assert code == 1 and err.count("\n") == 1 and "no database at" in err
    assert not (tmp_path / "none.db").exists()  # not created by looking


async def test_demo_runs_the_whole_path_and_stops_by_itself() -> None:
    code, out, err = await supplier(
        "demo", "--modems", "4", "--duration", "8", "--interval", "0.5",
        "--status", "127.0.0.1:0",
    )  # fmt: skip
    assert code == 0, err
    assert re.search(r"status  page at http://127\.0\.0\.1:\d+/  \(token: \S+\)", out)
    assert out.count("modem   modem") == 4
    taken = re.findall(r"GET_NUMBER \w+ in \w+: \+(\d+), activation (\d+)", out)
    pushed = re.findall(r"PUSH_SMS for \+(\d+)", out)
    finished = re.findall(r"FINISH_ACTIVATION (\d+) status 3 \(sold\): SUCCESS", out)
    assert len(taken) >= 3
    assert [number for number, _ in taken][: len(pushed)] == pushed
    assert [activation for _, activation in taken][: len(finished)] == finished
    served = re.search(r"demo    done: (\d+) activations served, (\d+) SMS pushed", out)
    assert served is not None and int(served.group(1)) == len(finished) >= 3
    # Each SMS comes from the service that was sold, and is shown on one line.
    sold = re.findall(r"GET_NUMBER (\w+) in \w+: \+\d+", out)
    senders = re.findall(r"network SMS from (\S+) to \+\d+ \((\d+) characters?\)", out)
    assert len(senders) >= 3
    for service, (sender, _) in zip(sold, senders, strict=False):
        assert sender == DEMO_TEXTS[service][0], (service, sender)
    for shown in re.findall(r"PUSH_SMS for .*: “(.*)”$", out, re.MULTILINE):
        assert len(shown) <= SHOWN
    assert not re.search(r"\b1 (offers|countries|activations|characters)\b", out)


def test_demo_texts_shortening_and_plurals() -> None:
    for service, (sender, _) in DEMO_TEXTS.items():
        got_sender, text = demo_sms(service)
        assert got_sender == sender and "{code}" not in text and re.search(r"\d{5,6}", text)
    long = demo_sms("go")[1]
    assert len(long) > SHOWN
    cut = shorten(long)
    assert len(cut) == SHOWN and cut.endswith("…") and long.startswith(cut[:-1])
    assert shorten("short\ntext") == "short text"  # one line, not cut
    assert [plural(n, "offer") for n in (0, 1, 2)] == ["0 offers", "1 offer", "2 offers"]
    assert plural(1, "country", "countries") == "1 country"
    assert plural(3, "country", "countries") == "3 countries"
    # The login page's hint points at where the demo prints its token.
    login = (ROOT / "supplier" / "static" / "login.html").read_text()
    assert "supplier demo" in login and "status page at" in login
