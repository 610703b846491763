"""The `supplier` command line.

Errors are one line on stderr and a non-zero exit (2 for bad usage).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import aiohttp
import structlog
import uvloop
from aiohttp import web

from modems.emulator import PROFILES, VirtualModemBank
from modems.emulator.control import FAULTS, create_control_app
from modems.emulator.simbank import BANK_ANSWERS, SimBank
from modems.modem import ModemSettings
from modems.pool import expand_ports, raise_open_file_limit

from . import __version__, logs
from .config import Config, ConfigError, ModemsConfig, load_config, parse_host_port
from .config import warnings as config_warnings
from .console import send_ussd
from .daemon import Daemon, modem_settings
from .demo import run_demo
from .errors import SupplierError
from .heap import HeapFreezer
from .inspection import daemon_sims, held_ports, live_view, scan, sims_report
from .migrate import migrate_store
from .pgstore import probe, redact
from .systemd import Notifier

T = TypeVar("T")

__all__ = ["main"]

DEFAULT_CONTROL = "127.0.0.1:8765"
LOG_LEVELS = ["debug", "info", "warning", "error"]
LOG_HELP = "default: info for run (start-up, modem and SIM changes, hub problems), else warning"


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


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e9:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of seconds above 0")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supplier",
        description="Number-supplier daemon for SIM banks (GSM modems → SMS-activation hubs).",
    )
    parser.add_argument("--version", action="version", version=f"supplier {__version__}")
    parser.add_argument("--log-level", default=None, choices=LOG_LEVELS, help=LOG_HELP)
    # The same option after the command (`supplier run --log-level debug`); SUPPRESS
    # keeps a value given before the command when none is given after it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, help=LOG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emulate = commands.add_parser(
        "emulate",
        parents=[common],
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
    emulate.add_argument(
        "--banks", type=int, default=0, help="SIM-bank pool boards besides the modems (default 0)"
    )
    emulate.add_argument("--bank-modules", type=_positive, default=8, help="modules per bank")
    emulate.add_argument("--bank-slots", type=_positive, default=8, help="SIM slots per module")
    emulate.add_argument(
        "--bank-answer",
        choices=BANK_ANSWERS,
        default="ok",
        help="how a board answers AT+SWIT: ok, or silent (many boards)",
    )
    emulate.add_argument(
        "--bank-fail-slot",
        action="append",
        default=[],
        metavar="MODULE:SLOT",
        help="a slot whose switch does not take (the ICCID stays); repeatable",
    )
    emulate.add_argument(
        "--bank-switch-delay", type=_seconds, default=2.0, help="seconds a module has no SIM"
    )
    emulate.add_argument(
        "--bank-ready-delay", type=_seconds, default=5.0, help="seconds until it registers"
    )

    control = commands.add_parser(
        "emulator",
        parents=[common],
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
        parents=[common],
        help="run the daemon in the foreground (logs to stderr)",
        description="Drive the modems, answer the hubs, push SMS. SIGTERM stops, SIGHUP reloads.",
    )
    run.add_argument("--config", required=True, help="the YAML configuration file")

    check = commands.add_parser(
        "check-config",
        parents=[common],
        help="validate a configuration and print the resolved settings",
        description="Exit 0 and print the settings (keys masked), or exit 2 with the problem.",
    )
    check.add_argument("--config", required=True)

    scan = commands.add_parser(
        "scan",
        parents=[common],
        help="probe the modem ports once and print what is there",
        description="Open every configured port, identify modem and SIM, print a table. "
        "Stored SMS are neither read nor deleted. Ports a running daemon holds show as busy.",
    )
    scan.add_argument("--config", help="take ports, baud rate and PIN from this file")
    scan.add_argument(
        "--ports", nargs="+", metavar="PATTERN", help="ports or glob patterns (override the config)"
    )
    scan.add_argument(
        "--timeout", type=_seconds, default=20.0, help="seconds to wait for slow modems (20)"
    )

    sims = commands.add_parser(
        "sims",
        parents=[common],
        help="the SIM inventory from the store",
        description="Every SIM the daemon has seen: number, country/operator, state, "
        "open activations and per-service history (sold/cancelled/offered).",
    )
    sims.add_argument("--config", required=True)

    ussd = commands.add_parser(
        "ussd",
        help="send a USSD code from a SIM, through the running daemon",
        description="Send CODE (e.g. *100#) from the SIM with this ICCID and print the "
        "network's answer; the daemon does it (status.listen, status.token). In a menu, "
        "--reply ITEM answers it and --close ends it.",
    )
    ussd.add_argument("--config", required=True)
    ussd.add_argument("iccid")
    ussd.add_argument("code", nargs="?", help="the USSD code, e.g. *100#")
    ussd_mode = ussd.add_mutually_exclusive_group()
    ussd_mode.add_argument("--reply", help="answer the open menu with this item or text")
    ussd_mode.add_argument("--close", action="store_true", help="end the open menu")

    migrate = commands.add_parser(
        "migrate-store",
        parents=[common],
        help="copy a SQLite store into an empty PostgreSQL database (moving to several hosts)",
        description="Copy every table of the SQLite store at PATH (activations, history, SMS, "
        "pushes, learned numbers, balances, SIM banks) into the empty PostgreSQL database at "
        "URL, keeping ids, in one transaction. The store is only read; a store a running "
        "daemon uses and a database with any row in it are refused.",
    )
    migrate.add_argument("--from", dest="source", required=True, metavar="PATH")
    migrate.add_argument(
        "--to", dest="url", required=True, metavar="URL", help="postgresql://user@host/db"
    )

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="a first run with no hardware: virtual modems, the daemon and a built-in hub",
        description="Start 16 emulated modems, the daemon on top of them, and a small hub that "
        "polls GET_SERVICES, takes numbers, sends SMS into the bank and receives them by "
        "PUSH_SMS, printing every step, with the status page's address.",
    )
    demo.add_argument("--modems", type=_positive, default=16, help="how many (default 16)")
    demo.add_argument("--duration", type=_seconds, default=None, help="stop after N seconds")
    demo.add_argument(
        "--interval", type=_seconds, default=3.0, help="seconds between activations (3)"
    )
    demo.add_argument(
        "--status",
        type=_host_port,
        default=_host_port("127.0.0.1:8001"),
        help="status page address (default 127.0.0.1:8001; another free port if taken)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: RET503 - parser.error exits
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level or ("info" if args.command == "run" else "warning"))
    raise_open_file_limit()
    try:
        if args.command == "run":
            return _run_loop(_run(args.config, load_config(args.config)))
        if args.command == "check-config":
            return _check_config(load_config(args.config))
        if args.command == "emulate":
            return _run_loop(_emulate(args))
        if args.command == "emulator":
            return _run_loop(_emulator(args))
        if args.command == "demo":
            return _run_loop(_demo(args))
        if args.command == "scan":
            return _run_loop(_scan(args))
        if args.command == "ussd":
            if (args.code is None) == (args.reply is None and not args.close):
                parser.error("give a CODE, or --reply ITEM, or --close")
            answer = _run_loop(
                send_ussd(
                    load_config(args.config),
                    args.iccid,
                    code=args.code,
                    reply=args.reply,
                    close=args.close,
                )
            )
            print(answer)
            return 0
        if args.command == "migrate-store":
            return _run_loop(_migrate_store(args.source, args.url))
        if args.command == "sims":
            print(sims_report(load_config(args.config)))
            return 0
    except ConfigError as exc:
        print(f"supplier: {exc}", file=sys.stderr)
        return 2
    except (CliError, SupplierError) as exc:
        print(f"supplier: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command!r}")  # exits with 2


def _run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on uvloop: the same asyncio API, its loop and transports in C
    (aiohttp's per-request cost on the daemon's one loop is what bounds a hub's rate)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _mask(value: str | None) -> str | None:
    """A secret as check-config shows it: `***`, or `""` when it is empty (say so)."""
    return value if not value else "***"


def _check_config(config: Config) -> int:
    resolved = config.model_dump(mode="json")
    for hub, model in zip(resolved["hubs"], config.hubs, strict=True):
        hub["key"] = _mask(model.key.get_secret_value())
    token = config.status.token
    resolved["status"]["token"] = _mask(token.get_secret_value() if token is not None else None)
    resolved["modems"]["pin"] = _mask(config.modems.pin)
    url = config.storage.url
    if url is not None:
        resolved["storage"] = {"url": redact(url)}  # `path` does not apply; no password shown
    print(json.dumps(resolved, indent=2, ensure_ascii=False))
    found = config_warnings(config)
    if url is not None:
        # One short connection: a wrong host, role or password shows here, not at 3 a.m.
        problem = _run_loop(probe(url))
        if problem is not None:
            found.append(f"storage.url: {problem}")
    for warning in found:
        print(f"supplier: warning: {warning}", file=sys.stderr)
    return 0


async def _run(config_path: str, config: Config) -> int:
    daemon = Daemon(config, heap=HeapFreezer())
    notifier = Notifier(daemon.status_line)
    stop = _stop_event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        notifier.reloading(done=False)
        try:
            await daemon.reload(load_config(config_path))
        except ConfigError as exc:
            structlog.get_logger("supplier").error(
                "reload refused; keeping the old settings", error=str(exc)
            )
        except Exception as exc:  # noqa: BLE001 - a reload's bug must not go unsaid
            # What applied before the failure stays; the line names the failure.
            structlog.get_logger("supplier").exception("reload failed", error=repr(exc))
        finally:
            notifier.reloading(done=True)

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
    notifier.ready()
    try:
        await _first_of(stop, daemon.failed)
    finally:
        await notifier.stopping()
        await daemon.stop()
    if daemon.failure is not None:
        raise CliError(daemon.failure)  # non-zero: systemd restarts the daemon
    return 0


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


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
    try:
        banks = await _start_sim_banks(args, directory)
    except (OSError, ValueError) as exc:
        await runner.cleanup()
        bank.stop()
        raise CliError(f"cannot create the SIM banks: {exc}") from None
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
        for sim_bank in banks:
            sim_bank.stop()
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    return 0


def _module_slot(value: str) -> tuple[int, int]:
    module, sep, slot = value.partition(":")
    if not sep or not module.isdigit() or not slot.isdigit():
        raise ValueError(f"--bank-fail-slot {value!r}: expected MODULE:SLOT, e.g. 3:7")
    return int(module), int(slot)


async def _start_sim_banks(args: argparse.Namespace, directory: str) -> list[SimBank]:
    """`--banks N`: pool boards (a control port and modules each) in DIR/poolN."""
    fail = frozenset(_module_slot(value) for value in args.bank_fail_slot)
    banks: list[SimBank] = []
    for number in range(1, args.banks + 1):
        sim_bank = SimBank(
            os.path.join(directory, f"pool{number}"),
            args.bank_modules,
            args.bank_slots,
            answer=args.bank_answer,
            fail_slots=fail,
            switch_delay=args.bank_switch_delay,
            ready_delay=args.bank_ready_delay,
            first_index=100000 * number,
        )
        await sim_bank.start()
        banks.append(sim_bank)
        print(f"bank pool{number}: control {sim_bank.control.link}")
        for module, path in sim_bank.module_paths.items():
            print(f"  module {module}: {path}")
    return banks


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


async def _demo(args: argparse.Namespace) -> int:
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:7.2f}s] {text}", flush=True)

    print(f"demo: {args.modems} virtual modems, the daemon and a built-in hub; Ctrl-C stops")
    try:
        return await run_demo(
            modems=args.modems,
            status_listen=args.status,
            interval=args.interval,
            duration=args.duration,
            stop=_stop_event(),
            say=say,
        )
    except OSError as exc:
        raise CliError(f"demo cannot start: {exc.strerror or exc}") from None


async def _migrate_store(source: str, url: str) -> int:
    copied = await migrate_store(source, url)
    width = max(len(table.table) for table in copied) if copied else 0
    print(f"copied {source} into {redact(url)} (one transaction):")
    for table in copied:
        ids = f"  (next id {table.next_id})" if table.next_id is not None else ""
        print(f"  {table.table:<{width}} {table.rows:>9} rows{ids}")
    print(f"  {'total':<{width}} {sum(table.rows for table in copied):>9} rows")
    return 0


async def _scan(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    patterns = args.ports or (config.modems.ports if config else ModemsConfig().ports)
    settings = modem_settings(config) if config else ModemSettings()
    held = held_ports(patterns)
    if held:
        # A running daemon opens its ports exclusively: probing them would only
        # wait for the timeout. Say so at once and show what the daemon sees.
        live = await daemon_sims(config) if config is not None else None
        where = "" if config is not None else " (give --config to see its live view)"
        print(
            f"supplier: {len(held)} port{'s' if len(held) > 1 else ''} held by another "
            f"process, the daemon if it runs{where}: {' '.join(held)}",
            file=sys.stderr,
        )
        if live is not None:
            print(live_view(live))
            return 0
        free = [p for p in expand_ports(patterns) if p not in set(held)]
        if not free:
            return 1
        patterns = free
    print(await scan(patterns, settings, args.timeout))
    return 0
