"""The virtual modem bank's control API and command line."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from modems.emulator.control import create_control_app
from modems.events import SmsReceived
from modems.pdu import SmsDeliver, encode_deliver_parts

ROOT = Path(__file__).resolve().parents[1]


async def test_control_api_delivers_and_injects(make_bank, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(2)
    client = await aiohttp_client(create_control_app(bank))
    listing = await (await client.get("/modems")).json()
    assert [m["port"] for m in listing] == bank.paths
    assert listing[0]["sim"]["iccid"] == bank[0].sim.iccid

    response = await client.post("/modems/1/sms", json={"text": "Код 1234", "sender": "VK"})
    assert response.status == 200
    assert len(bank[1].stored()) == 1

    pdu = encode_deliver_parts("+7900", "raw one")[0]
    assert (await client.post("/modems/0/sms", json={"pdu": pdu})).status == 200
    assert bank[0].has_pdu(pdu)

    assert (await client.post("/modems/0/hang")).status == 200
    assert bank[0].hung
    assert (await client.post("/modems/0/unplug")).status == 200
    assert not bank[0].plugged
    assert (await client.post("/modems/0/replug")).status == 200
    assert bank[0].plugged


async def test_control_api_refuses_bad_requests(make_bank, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(1)
    client = await aiohttp_client(create_control_app(bank))
    cases = [
        ("/modems/5/sms", {"text": "x"}, 404),
        ("/modems/x/sms", {"text": "x"}, 404),
        ("/modems/0/sms", {"text": 5}, 400),
        ("/modems/0/sms", {"pdu": "ABC"}, 400),
        ("/modems/0/sms", {"text": "x", "reference_bits": 12}, 400),
        ("/modems/0/sms", {"text": "x", "order": [7]}, 400),
        ("/modems/0/explode", {}, 404),
        ("/modems/0/insert-sim", {"slot": -1}, 400),
    ]
    for path, body, status in cases:
        response = await client.post(path, json=body)
        assert response.status == status, (path, body)
        assert "error" in await response.json()
    response = await client.post("/modems/0/sms", data=b"{not json")
    assert response.status == 400
    assert not bank[0].stored()


async def test_emulate_command_and_its_client(tmp_path, pool_of) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "bank"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "supplier",
        "emulate",
        "--modems",
        "3",
        "--dir",
        str(directory),
        "--control",
        "127.0.0.1:99999",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"HOST:PORT" in err

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "supplier",
        "emulate",
        "--modems",
        "3",
        "--dir",
        str(directory),
        "--control",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        header = await asyncio.wait_for(process.stdout.readline(), 20)
        assert b"3 virtual modems" in header
        paths = [(await process.stdout.readline()).split()[0].decode() for _ in range(3)]
        assert paths == [str(directory / f"modem{i:03d}") for i in range(3)]
        control_line = (await process.stdout.readline()).decode()
        assert control_line.startswith("control API: http://127.0.0.1:")
        control = control_line.split("//")[1].split("/")[0]

        class _Bank:
            pattern = str(directory / "modem*")

        pool, recorder = await pool_of(_Bank)
        await recorder.wait_for(lambda: len(recorder.ready_ports()) == 3, timeout=20)
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "supplier",
            "emulator",
            "--control",
            control,
            "sms",
            "2",
            "Ваш код 777",
            "--sender",
            "Telegram",
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        out, _ = await asyncio.wait_for(client.communicate(), 20)
        assert client.returncode == 0, out
        await recorder.wait_for(lambda: len(recorder.sms()) == 1, timeout=10)
        [event] = recorder.sms()
        assert isinstance(event, SmsReceived) and isinstance(event.message, SmsDeliver)
        assert (event.port, event.message.sender, event.message.text) == (
            paths[2],
            "Telegram",
            "Ваш код 777",
        )

        bad = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "supplier",
            "emulator",
            "--control",
            control,
            "sms",
            "9",
            "x",
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        _, err = await asyncio.wait_for(bad.communicate(), 20)
        assert bad.returncode == 1
        assert err.decode().count("\n") == 1 and "modem index" in err.decode()
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
    assert process.returncode == 0
    assert not any(directory.glob("modem*"))
