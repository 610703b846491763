"""The `supplier` command line.

Errors are one line on stderr and a non-zero exit (2 for bad usage).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from modems.emulator import PROFILES, VirtualModemBank
from modems.emulator.control import FAULTS, create_control_app
from modems.events import (
    ModemStateChanged,
    NetworkChanged,
    PoolEvent,
    SimLost,
    SimReady,
    SmsReceived,
)
from modems.modem import ModemSettings
from modems.pdu import SmsDeliver
from modems.pool import ModemPool, raise_open_file_limit
from modems.reassembly import Part, Reassembler

from . import __version__, logs
from .config import Config, ConfigError, load_config, parse_host_port
from .daemon import Daemon
from .errors import SupplierError

__all__ = ["main"]

DEFAULT_CONTROL = "127.0.0.1:8765"


class CliError(Exception):
    """A failure to report as one line and exit 1."""


def _host_port(value: str) -> tuple[str, int]:
    try:
        return parse_host_port(value, default_host="127.0.0.1")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:8765"
        ) from None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number of at least 1")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supplier",
        description="Number-supplier daemon for SIM banks (GSM modems → SMS-activation hubs).",
    )
    parser.add_argument("--version", action="version", version=f"supplier {__version__}")
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emulate = commands.add_parser(
        "emulate",
        help="run the virtual modem bank alone",
        description="Run N emulated GSM modems on pseudo-terminals, with an HTTP control API.",
    )
    emulate.add_argument("--modems", type=_positive, default=16, help="how many (default 16)")
    emulate.add_argument(
        "--profile",
        action="append",
        choices=sorted(PROFILES),
        help="vendor profile(s), cycled over the modems (default: all)",
    )
    emulate.add_argument("--dir", help="where the port symlinks go (default: a new temp folder)")
    emulate.add_argument(
        "--control",
        type=_host_port,
        default=_host_port(DEFAULT_CONTROL),
        help=f"control API address (default {DEFAULT_CONTROL}; port 0: any free port)",
    )
    emulate.add_argument("--first-sim", type=int, default=0, help="slot number of the first SIM")

    control = commands.add_parser(
        "emulator",
        help="control a running virtual modem bank",
        description="Deliver SMS to, or inject faults into, a bank from `supplier emulate`.",
    )
    control.add_argument("--control", type=_host_port, default=_host_port(DEFAULT_CONTROL))
    actions = control.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="list the emulated modems")
    sms = actions.add_parser("sms", help="deliver an SMS to a modem")
    sms.add_argument("modem", type=int, help="modem index (see `list`)")
    sms.add_argument("text")
    sms.add_argument("--sender", default="VK")
    sms.add_argument("--ucs2", action="store_true", help="force UCS-2")
    sms.add_argument("--pdu", action="store_true", help="TEXT is a raw PDU in hex")
    fault = actions.add_parser("fault", help="inject a fault")
    fault.add_argument("modem", type=int)
    fault.add_argument("fault", choices=FAULTS)

    run = commands.add_parser(
        "run",
        help="run the daemon in the foreground (logs to stderr)",
        description="Drive the modems, answer the hubs, push SMS. SIGTERM stops, SIGHUP reloads.",
    )
    run.add_argument("--config", required=True, help="the YAML configuration file")

    check = commands.add_parser(
        "check-config",
        help="validate a configuration and print the resolved settings",
        description="Exit 0 and print the settings (keys masked), or exit 2 with the problem.",
    )
    check.add_argument("--config", required=True)

    demo = commands.add_parser(
        "demo",
        help="a first run with no hardware: modems come up, SMS arrive",
        description="Start 16 emulated modems, bring them up through the real serial stack, "
        "send SMS into them and print every step.",
    )
    demo.add_argument("--modems", type=_positive, default=16)
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    demo.add_argument("--interval", type=float, default=2.0, help="seconds between demo SMS")
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: RET503 - parser.error exits
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    raise_open_file_limit()
    try:
        if args.command == "run":
            return asyncio.run(_run(args.config, load_config(args.config)))
        if args.command == "check-config":
            return _check_config(load_config(args.config))
        if args.command == "emulate":
            return asyncio.run(_emulate(args))
        if args.command == "emulator":
            return asyncio.run(_emulator(args))
        if args.command == "demo":
            return asyncio.run(_demo(args))
    except ConfigError as exc:
        print(f"supplier: {exc}", file=sys.stderr)
        return 2
    except (CliError, SupplierError) as exc:
        print(f"supplier: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command!r}")  # exits with 2


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _check_config(config: Config) -> int:
    resolved = config.model_dump(mode="json")
    for hub in resolved["hubs"]:
        hub["key"] = "***"
    if resolved["status"]["token"] is not None:
        resolved["status"]["token"] = "***"  # noqa: S105 - a mask, not a password
    if resolved["modems"]["pin"] is not None:
        resolved["modems"]["pin"] = "***"
    print(json.dumps(resolved, indent=2, ensure_ascii=False))
    return 0


async def _run(config_path: str, config: Config) -> int:
    daemon = Daemon(config)
    stop = _stop_event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            await daemon.reload(load_config(config_path))
        except ConfigError as exc:
            structlog.get_logger("supplier").error(
                "reload refused; keeping the old settings", error=str(exc)
            )

    def on_hup() -> None:
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await daemon.start()
    except OSError as exc:
        await daemon.stop()
        raise CliError(f"cannot start: {exc.strerror or exc}") from None
    except BaseException:
        await daemon.stop()
        raise
    try:
        await stop.wait()
    finally:
        await daemon.stop()
    return 0


async def _emulate(args: argparse.Namespace) -> int:
    directory = args.dir or tempfile.mkdtemp(prefix="supplier-bank-")
    profiles = args.profile or sorted(PROFILES)
    bank = VirtualModemBank(args.modems, directory, profiles=profiles, first_index=args.first_sim)
    stop = _stop_event()
    try:
        await bank.start()
    except OSError as exc:
        raise CliError(f"cannot create the virtual modems in {directory}: {exc}") from None
    runner = web.AppRunner(create_control_app(bank), access_log=None)
    await runner.setup()
    host, port = args.control
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        bank.stop()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    port = runner.addresses[0][1]
    print(f"{len(bank)} virtual modems ({', '.join(profiles)}); ports: {bank.pattern}")
    for modem in bank:
        sim = modem.sim
        number = f"+{sim.number}" if sim and sim.number else "-"
        print(f"  {modem.link} -> {modem.device}  {modem.profile.name:8} {number}")
    print(f"control API: http://{host}:{port}/modems")
    print(f"deliver an SMS:  supplier emulator --control {host}:{port} sms 0 'Your code: 1234'")
    print(f"inject a fault:  supplier emulator --control {host}:{port} fault 0 unplug")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        bank.stop()
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    return 0


async def _emulator(args: argparse.Namespace) -> int:
    host, port = args.control
    base = f"http://{host}:{port}/modems"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            if args.action == "list":
                response = await session.get(base)
            elif args.action == "sms":
                body: dict[str, Any] = (
                    {"pdu": args.text}
                    if args.pdu
                    else {
                        "text": args.text,
                        "sender": args.sender,
                        "ucs2": True if args.ucs2 else None,
                    }
                )
                response = await session.post(f"{base}/{args.modem}/sms", json=body)
            else:
                response = await session.post(f"{base}/{args.modem}/{args.fault}")
            payload = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CliError(f"no virtual modem bank answers at {host}:{port} ({exc})") from None
    except json.JSONDecodeError:
        raise CliError(f"{host}:{port} is not a virtual modem bank") from None
    if response.status != 200:
        raise CliError(str(payload.get("error", payload)))
    print(json.dumps(payload, indent=2, ensure_ascii=False))
    return 0


_DEMO_TEXTS = (
    ("VK", "VK: 33708 — код подтверждения. Никому не говорите код!"),
    ("Telegram", "Telegram code: 51924. You can also tap on this link to log in."),
    ("WhatsApp", "Your WhatsApp code: 482-913. Don't share this code with others 🔐"),
    ("+79001234567", "Your code is 7781. Valid for 5 minutes, price 5€ [promo]"),
    ("Google", "G-309216 is your Google verification code. " * 5),
)


async def _demo(args: argparse.Namespace) -> int:
    directory = tempfile.mkdtemp(prefix="supplier-demo-")
    bank = VirtualModemBank(args.modems, directory)
    stop = _stop_event()
    started = time.monotonic()
    reassembler = Reassembler()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:7.2f}s] {text}", flush=True)

    async def on_event(event: PoolEvent) -> None:
        if isinstance(event, SimReady):
            number = f"+{event.sim.number}" if event.sim.number else "(no number)"
            say(
                f"SIM ready    {os.path.basename(event.port)}  {event.device.manufacturer} "
                f"{event.device.model}  ICCID {event.sim.iccid}  {number}  "
                f"network {event.network.operator}  signal {event.network.rssi}"
            )
        elif isinstance(event, SimLost):
            say(f"SIM lost     {os.path.basename(event.port)}  {event.iccid}: {event.reason}")
        elif isinstance(event, ModemStateChanged) and event.state.value in (
            "resetting",
            "not_modem",
            "removed",
        ):
            say(f"modem        {os.path.basename(event.port)} {event.state.value}: {event.detail}")
        elif isinstance(event, NetworkChanged):
            say(f"network      {os.path.basename(event.port)} {event.network}")
        elif isinstance(event, SmsReceived):
            port = os.path.basename(event.port)
            message = event.message
            if not isinstance(message, SmsDeliver):
                say(f"SMS (not a text) on {port}: {event.error or message}")
                return
            if message.concat is None:
                say(f"SMS          {port}  from {message.sender}: {message.text}")
                return
            done = reassembler.add(Part.from_deliver(event.iccid, message, event.received_at))
            if done is not None:
                parts = f"({len(done.parts)} parts)"
                say(f"SMS {parts:9}{port}  from {message.sender}: {done.text}")

    try:
        await bank.start()
        print(f"demo: {len(bank)} virtual modems in {directory}; Ctrl-C to stop", flush=True)
        pool = ModemPool([bank.pattern], on_event, ModemSettings(health_interval=5.0))
        await pool.start()
        try:
            deadline = None if args.duration is None else started + args.duration
            while not stop.is_set():
                timeout = args.interval
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout)
                if deadline is not None and time.monotonic() >= deadline:
                    break
                ready = [m for m in pool if m.ready]
                if ready:
                    modem = random.choice(ready)
                    virtual = bank.by_link(modem.port)
                    if virtual is not None and modem.sim is not None:
                        sender, text = random.choice(_DEMO_TEXTS)
                        say(f"network      delivers an SMS from {sender} to +{modem.sim.number}")
                        virtual.deliver(text, sender)
        finally:
            await pool.stop()
    finally:
        bank.stop()
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    return 0
