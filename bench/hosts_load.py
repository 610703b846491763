"""Several hosts on one PostgreSQL beside one host on SQLite, under the same hub load (issue 16).

Each setup is run in turn, everything on this machine and on loopback:

- `pg2`: two `supplier run` processes (host names a and b), each with its own
  emulated bank of half the modems (`supplier emulate`; b's SIMs numbered
  after a's), one PostgreSQL database shared by both;
- `sqlite1`: one `supplier run` with the whole bank and its SQLite file;
- `pg1` (optional): one `supplier run` with the whole bank on PostgreSQL,
  which separates what the database costs from what a second host costs.

The PostgreSQL server is a throwaway cluster this script starts (tests/pg.py's
`Cluster`, on a Unix socket in a temporary directory, no TCP) — but durable as
in production: `fsync=on`, `synchronous_commit=on`, `full_page_writes=on` —
and removes at the end. The SQLite store keeps its own durability
(WAL, `synchronous=FULL`). Both on the same disk.

The load (bench/hub_load.py's, the requests taken in turn by the hosts' hub
endpoints as a round-robin load balancer would; a FINISH may so reach
another host than its GET_NUMBER):

1. idle CPU of the daemons, the database server and the emulators;
2. open loop: `--rate` requests a second on a fixed schedule (GET_SERVICES,
   GET_NUMBER, GET_SERVICES, FINISH 4), p50/p99 per action from each one's
   scheduled start, beside a do-nothing aiohttp server's (the floor);
3. closed loop: `--clients` clients, `--requests` GET_NUMBER each followed by
   its FINISH: GET_NUMBER/s, and the CPU the daemons and the database server
   spent per GET_NUMBER + FINISH;
4. every SIM given an open activation, then a burst of `--burst` SMS across
   all modems at once: the time until the hub has every text, lost (never
   arrived), doubled (a text the hub received more than once, counted after
   every delivery is settled in the store and `--grace` seconds more);
5. after the daemons stopped: SIMs sold twice, i.e. an ICCID with two
   activations open at the same moment (open: from `created` until its
   FINISH or its `release_at`, whichever is first).

    python bench/hosts_load.py                       # pg2 then sqlite1, 512 modems, ~5 min
    python bench/hosts_load.py --setup pg2 --setup pg1 --setup sqlite1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hub_load import (  # noqa: E402
    KEY,
    SERVICES,
    Hub,
    drain_log,
    free_port,
    load,
    open_loop,
    open_loop_table,
    pct,
    start_daemon,
    start_emulator,
    start_floor,
    wait_log,
)

from modems.pool import raise_open_file_limit  # noqa: E402
from tests.pg import Cluster, find_bin  # noqa: E402

SETUPS = {"pg2": ("postgresql", 2), "pg1": ("postgresql", 1), "sqlite1": ("sqlite", 1)}
COVER_SERVICE = SERVICES[-1]  # the closed and open loops leave it alone (hub_load's rule)


class DurableCluster(Cluster):
    """tests/pg.py's throwaway cluster, but with a production server's durability."""

    statements = False  # load pg_stat_statements (what each statement costs)

    def start(self) -> None:
        options = (
            f"-k {self.socket} -c listen_addresses='' -c max_connections=100 "
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on "
            "-c shared_buffers=128MB -c track_commit_timestamp=on"
        )
        if self.statements:
            options += " -c shared_preload_libraries=pg_stat_statements"
        self._run(
            ["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"]
        )

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])


class CountingHub(Hub):
    """hub_load's PUSH_SMS hub, also counting how many times each text arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.received: Counter[str] = Counter()

    async def push(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())  # aiohttp keeps the body for the second read
        self.received[body["text"]] += 1
        return await super().push(request)


@dataclass
class HostProcs:
    name: str
    first: int  # index of its first modem in the whole bank
    count: int
    emulator: subprocess.Popen[str]
    control: str
    port: int = field(default_factory=free_port)
    status_port: int = field(default_factory=free_port)
    daemon: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def running(procs: list[HostProcs]) -> list[tuple[HostProcs, subprocess.Popen[str]]]:
    return [(host, host.daemon) for host in procs if host.daemon is not None]


def cpu_snapshot(procs: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds per process (with its reaped children: a server's ended backends)."""
    out: dict[int, float] = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system + t.children_user + t.children_system
    return out


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


class Meter:
    """CPU of each group of processes (daemons, database server, emulators) between marks."""

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups  # name -> () -> list[psutil.Process]
        self.marks: dict[str, dict[int, float]] = {}
        self.started = 0.0

    def mark(self) -> None:
        self.started = time.monotonic()
        self.marks = {name: cpu_snapshot(procs()) for name, procs in self.groups.items()}

    def spent(self) -> tuple[dict[str, float], float]:
        """CPU seconds per group since the mark, and the seconds elapsed."""
        elapsed = time.monotonic() - self.started
        return {
            name: cpu_spent(self.marks[name], cpu_snapshot(procs()))
            for name, procs in self.groups.items()
        }, elapsed


def config_text(host: HostProcs, work: Path, hub_url: str, storage: str, shared: bool) -> str:
    host_block = f"host: {{name: {host.name}}}\n" if shared else ""
    return (
        f'server: {{listen: "127.0.0.1:{host.port}"}}\n'
        f'status: {{listen: "127.0.0.1:{host.status_port}"}}\n'
        f'hubs: [{{name: bench, key: "{KEY}", push_url: "{hub_url}"}}]\n'
        f'modems: {{ports: ["{work}/bank-{host.name}/modem*"]}}\n'
        f"services: {json.dumps(SERVICES)}\n"
        f"storage: {storage}\n"
        f"{host_block}"
    )


def sellable(answer: dict[str, Any], service: str) -> int:
    """GET_SERVICES' count of SIMs for `service`, over every country."""
    total = 0
    for country in answer.get("countryList", []):
        operators = country["operatorMap"]
        if "any" in operators:
            total += int(operators["any"].get(service, 0))
        else:
            total += sum(int(counts.get(service, 0)) for counts in operators.values())
    return total


async def wait_sellable(session: aiohttp.ClientSession, urls: list[str], total: int) -> None:
    """Until GET_SERVICES through every host counts the whole bank (both hosts published)."""
    async with asyncio.timeout(120):
        for url in urls:
            while True:
                async with session.post(url, json={"key": KEY, "action": "GET_SERVICES"}) as r:
                    if sellable(await r.json(), COVER_SERVICE) >= total:
                        break
                await asyncio.sleep(0.2)


def number_body(service: str | None = None, country: str = "russia") -> dict[str, Any]:
    return {
        "key": KEY,
        "action": "GET_NUMBER",
        "country": country,
        "operator": "any",
        "service": service or random.choice(SERVICES[:-1]),
        "sum": 10,
        "currency": 643,
    }


async def cover_every_sim(session: aiohttp.ClientSession, urls: list[str]) -> int:
    """An open activation on every free SIM (the SMS below have somewhere to go)."""
    opened = 0
    turn = 0
    for country in ("russia", "ukraine", "kazakhstan", "nigeria"):
        while True:
            url = urls[turn % len(urls)]
            turn += 1
            async with session.post(url, json=number_body(COVER_SERVICE, country)) as response:
                if (await response.json())["status"] != "SUCCESS":
                    break
            opened += 1
    return opened


async def deliveries_pending(storage: str, url: str | None, path: Path | None) -> int:
    """Deliveries not yet ended in the store (pushes still to make or to record)."""
    query = "SELECT count(*) FROM deliveries WHERE done IS NULL"
    if storage == "postgresql":
        connection = await asyncpg.connect(url)
        try:
            return int(await connection.fetchval(query))
        finally:
            await connection.close()
    assert path is not None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute(query).fetchone()[0])


# PostgreSQL: when each activation was inserted (inside its allocating transaction,
# after the SIM's row was locked) and when each FINISH committed, both on the
# server's clock. A host stamps `created` and `finished` with its own clock when
# the request arrives, before its transaction, so under concurrency those stamps
# can overlap without any double sale; these cannot. The triggers add two small
# inserts per GET_NUMBER and FINISH to the database's work (said in the output).
AUDIT = """
CREATE SCHEMA bench;
CREATE TABLE bench.sold (id bigint, iccid text, at double precision);
CREATE TABLE bench.finished (id bigint);
CREATE FUNCTION bench.sold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench.sold VALUES (NEW.id, NEW.iccid, extract(epoch FROM clock_timestamp()));
  RETURN NULL;
END $$;
CREATE FUNCTION bench.finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.finished IS NULL AND NEW.finished IS NOT NULL THEN
    INSERT INTO bench.finished VALUES (NEW.id);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER bench_sold AFTER INSERT ON activations
  FOR EACH ROW EXECUTE FUNCTION bench.sold();
CREATE TRIGGER bench_finished AFTER UPDATE OF finished ON activations
  FOR EACH ROW EXECUTE FUNCTION bench.finished();
"""

# A SIM sold twice, by the server's clock: activation b of an ICCID inserted
# before the FINISH of an earlier activation a of that ICCID committed (or, a
# never finished, before a's release_at).
SOLD_TWICE_PG = """
SELECT a.iccid, a.id, b.id, sa.at, b_sold.at,
       coalesce(extract(epoch FROM pg_xact_commit_timestamp(f.xmin)), a.release_at)
  FROM activations a
  JOIN bench.sold sa ON sa.id = a.id
  JOIN activations b ON b.iccid = a.iccid AND b.id > a.id
  JOIN bench.sold b_sold ON b_sold.id = b.id
  LEFT JOIN bench.finished f ON f.id = a.id
 WHERE b_sold.at < least(
       coalesce(extract(epoch FROM pg_xact_commit_timestamp(f.xmin)), a.release_at),
       a.release_at)
"""

SOLD_TWICE = """
SELECT a.iccid, a.id, b.id, a.created, a.finished, a.release_at, b.created,
       {least}(COALESCE(a.finished, a.release_at), a.release_at) - b.created
  FROM activations a JOIN activations b ON b.iccid = a.iccid AND b.id > a.id
 WHERE b.created < {least}(COALESCE(a.finished, a.release_at), a.release_at)
 ORDER BY 8 DESC
"""


async def overlaps(storage: str, url: str | None, path: Path | None) -> tuple[list[Any], int]:
    """Pairs of activations of one ICCID open at the same moment, and the activations in all.

    SQLite: by the stamps (one process, one clock, stamped where the inventory
    decides). PostgreSQL: by the audit triggers' server times (SOLD_TWICE_PG).
    """
    if storage == "postgresql":
        connection = await asyncpg.connect(url)
        try:
            rows = [tuple(r) for r in await connection.fetch(SOLD_TWICE_PG)]
            total = await connection.fetchval("SELECT count(*) FROM activations")
            audited = await connection.fetchval("SELECT count(*) FROM bench.sold")
            stamped = await connection.fetchval(
                f"SELECT count(*) FROM ({SOLD_TWICE.format(least='LEAST')}) s"
            )
        finally:
            await connection.close()
        print(
            f"postgresql: {audited} of {total} activations audited; "
            f"{stamped} pairs overlap by the hosts' request stamps (not a double sale by "
            "itself: a stamp is taken before the transaction)",
            flush=True,
        )
        return rows, int(total)
    assert path is not None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(SOLD_TWICE.format(least="MIN")).fetchall()
        (total,) = db.execute("SELECT count(*) FROM activations").fetchone()
    return rows, int(total)


async def server_counts(url: str | None, *, reset: bool = False) -> int:
    """Transactions committed in the database so far (and pg_stat_statements reset)."""
    if url is None:
        return 0
    connection = await asyncpg.connect(url)
    try:
        if reset:
            await connection.execute("SELECT pg_stat_statements_reset()")
        return int(
            await connection.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
        )
    finally:
        await connection.close()


async def top_statements(url: str, requests: int) -> list[str]:
    """The statements that took the server's time under the closed loop, per GET_NUMBER."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT calls, total_exec_time, rows, query FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "ORDER BY total_exec_time DESC"
        )
    finally:
        await connection.close()
    total = sum(r["total_exec_time"] for r in rows)
    lines = [
        f"statements under the closed loop: {sum(r['calls'] for r in rows) / requests:.1f} "
        f"per GET_NUMBER request, {total / requests:.3f} ms of execution per request",
        "| calls per request | ms per request | share | statement |",
        "|---|---|---|---|",
    ]
    for r in rows[:12]:
        query = " ".join(r["query"].split())
        query = query if len(query) <= 110 else query[:107] + "..."
        lines.append(
            f"| {r['calls'] / requests:.2f} | {r['total_exec_time'] / requests:.3f} | "
            f"{r['total_exec_time'] / total * 100:.0f} % | `{query}` |"
        )
    return lines


async def activations(storage: str, url: str | None, path: Path) -> tuple[int, int]:
    """Activations in the store, and how many of them are unfinished."""
    query = "SELECT count(*), count(*) FILTER (WHERE finished IS NULL) FROM activations"
    if storage == "postgresql":
        connection = await asyncpg.connect(url)
        try:
            row = await connection.fetchrow(query)
        finally:
            await connection.close()
        assert row is not None
        return int(row[0]), int(row[1])
    query = "SELECT count(*), sum(finished IS NULL) FROM activations"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        total, open_ = db.execute(query).fetchone()
    return int(total), int(open_ or 0)


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


async def run_setup(name: str, args: argparse.Namespace) -> dict[str, Any]:
    storage, hosts = SETUPS[name]
    work = Path(tempfile.mkdtemp(prefix=f"bench-hosts-{name}-"))
    out: dict[str, Any] = {"setup": name, "storage": storage, "hosts": hosts}
    cluster: DurableCluster | None = None
    hub = CountingHub()
    procs: list[HostProcs] = []
    logs: list[asyncio.Task[None]] = []
    db_url: str | None = None
    db_path = work / "supplier.db"
    try:
        if storage == "postgresql":
            bindir = find_bin()
            if bindir is None:
                raise RuntimeError(
                    "PostgreSQL server binaries not found (apt-get install postgresql)"
                )
            cluster = DurableCluster(bindir)
            cluster.statements = args.statements
            await asyncio.to_thread(cluster.init)
            await asyncio.to_thread(cluster.start)
            connection = await asyncpg.connect(cluster.url())
            try:
                await connection.execute('CREATE DATABASE "supplier"')
                settings = {
                    key: await connection.fetchval(f"SHOW {key}")
                    for key in ("server_version", "fsync", "synchronous_commit", "full_page_writes")
                }
            finally:
                await connection.close()
            out["server"] = ", ".join(f"{k} {v}" for k, v in settings.items())
            db_url = cluster.url("supplier")
            storage_yaml = f'{{url: "{db_url}"}}'
        else:
            storage_yaml = f'{{path: "{db_path}"}}'
        await hub.start()

        per_host = args.modems // hosts
        for index in range(hosts):
            host_name = "ab"[index] if hosts > 1 else "a"
            first = index * per_host
            emulator, control = await start_emulator(
                per_host, str(work / f"bank-{host_name}"), first_sim=first
            )
            procs.append(HostProcs(host_name, first, per_host, emulator, control))
        started = time.monotonic()
        for host in procs:
            config = work / f"supplier-{host.name}.yaml"
            config.write_text(
                config_text(
                    host, work, hub.url, storage_yaml, storage == "postgresql" and hosts > 1
                )
            )
            host.daemon = await start_daemon(config)
        await asyncio.gather(
            *(wait_log(p, "SIM in inventory", h.count, timeout=600) for h, p in running(procs))
        )
        urls = [h.url for h in procs]
        async with aiohttp.ClientSession() as session:
            await wait_sellable(session, urls, args.modems)
        out["come_up"] = time.monotonic() - started
        if db_url is not None:
            connection = await asyncpg.connect(db_url)
            try:
                await connection.execute(AUDIT)
                if args.statements:
                    await connection.execute("CREATE EXTENSION pg_stat_statements")
            finally:
                await connection.close()
        logs = [asyncio.create_task(drain_log(p)) for _, p in running(procs)]

        daemons = [psutil.Process(p.pid) for _, p in running(procs)]
        emulators = [psutil.Process(h.emulator.pid) for h in procs]
        server = psutil.Process(cluster.postmaster()) if cluster is not None else None

        def server_procs() -> list[psutil.Process]:
            if server is None:
                return []
            with contextlib.suppress(psutil.Error):
                return [server, *server.children(recursive=True)]
            return []

        meter = Meter(
            {"daemons": lambda: daemons, "postgres": server_procs, "emulators": lambda: emulators}
        )

        # 1. Idle.
        meter.mark()
        await asyncio.sleep(args.idle)
        spent, elapsed = meter.spent()
        out["idle_cpu"] = {k: v / elapsed * 100 for k, v in spent.items()}

        # 2. Closed loop: GET_NUMBER + FINISH (every SIM free at its start).
        commits = await server_counts(db_url, reset=args.statements)
        meter.mark()
        numbers, elapsed, won = await load(urls, args.clients, args.requests, number_body)
        spent, _ = meter.spent()
        if db_url is not None:
            after = await server_counts(db_url)
            out["numbers_commits"] = (after - commits) / max(1, len(numbers))
            if args.statements:
                out["statements"] = await top_statements(db_url, len(numbers))
        out["numbers"] = (statistics.median(numbers), pct(numbers, 99), max(numbers))
        out["numbers_rps"] = len(numbers) / elapsed
        out["numbers_won"] = won
        out["numbers_cpu_ms"] = {k: v / max(1, len(numbers)) * 1000 for k, v in spent.items()}

        # 3. Open loop, beside the floor. Its FINISH names the newest activation it
        # opened: when answers take longer than the schedule's gap, some activations
        # are never finished and hold their SIMs (counted below), so it runs after
        # the closed loop, which finishes every activation it opens.
        floor, floor_url = await start_floor()
        try:
            floor_latencies = await open_loop(floor_url, args.rate, args.duration)
        finally:
            stop([floor])
        before = await activations(storage, db_url, db_path)
        meter.mark()
        latencies = await open_loop(urls, args.rate, args.duration)
        spent, elapsed = meter.spent()
        after = await activations(storage, db_url, db_path)
        out["open_loop_sold"] = (after[0] - before[0], after[1] - before[1])
        out["open_loop"] = open_loop_table(floor_latencies, latencies)
        out["open_loop_pcts"] = {
            action: (statistics.median(values), pct(values, 99))
            for action, values in latencies.items()
        }
        out["open_loop_cpu"] = {k: v / elapsed * 100 for k, v in spent.items()}

        # 4. Every SIM sold once more, then the burst.
        async with aiohttp.ClientSession() as session:
            out["covered"] = await cover_every_sim(session, urls)
            items: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(procs))}
            texts = []
            for i in range(args.burst):
                modem = i % args.modems
                text = f"burst {i} code {i:06d}"
                texts.append(text)
                items[modem // per_host].append({"modem": modem % per_host, "text": text})

            async def deliver(host: HostProcs, batch: list[dict[str, Any]]) -> None:
                async with session.post(f"http://{host.control}/sms", json=batch) as response:
                    response.raise_for_status()
                    await response.read()

            expected = set(texts)
            meter.mark()
            started = time.monotonic()
            await asyncio.gather(*(deliver(procs[i], batch) for i, batch in items.items()))
            try:
                await hub.wait(expected, timeout=args.drain_timeout)
                out["drain"] = time.monotonic() - started
            except TimeoutError:
                out["drain"] = None
            spent, elapsed = meter.spent()
            out["burst_cpu"] = {k: v / elapsed * 100 for k, v in spent.items()}
            # Late doubles: wait until the store has settled every delivery, then a while.
            out["unsettled"] = 0
            try:
                async with asyncio.timeout(args.drain_timeout):
                    while True:
                        if not await deliveries_pending(storage, db_url, db_path):
                            break
                        await asyncio.sleep(0.5)
            except TimeoutError:
                out["unsettled"] = await deliveries_pending(storage, db_url, db_path)
            await asyncio.sleep(args.grace)
        out["lost"] = len(expected - hub.received.keys())
        out["doubled"] = sum(
            n - 1 for text, n in hub.received.items() if text in expected and n > 1
        )

        for task in logs:
            task.cancel()
        stop([p for _, p in running(procs)])
        pairs, total = await overlaps(storage, db_url, db_path)
        out["sold_twice"] = len({row[0] for row in pairs})
        out["overlaps"] = pairs
        out["activations"] = total
        for row in pairs[:10]:
            print(f"{name}: overlapping activations {row}", flush=True)
    finally:
        for task in logs:
            task.cancel()
        stop([p for h in procs for p in (h.daemon, h.emulator) if p is not None])
        if hub.runner is not None:
            await hub.runner.cleanup()
        if cluster is not None:
            await asyncio.to_thread(cluster.remove)
        shutil.rmtree(work, ignore_errors=True)
    return out


def cpu_cell(values: dict[str, float], unit: str) -> str:
    return " / ".join(
        f"{values[k]:.{1 if unit == '%' else 2}f}" for k in ("daemons", "postgres", "emulators")
    )


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(
        "| setup | come-up s | idle CPU % (daemons / postgres / emulators) | GET_NUMBER/s "
        f"(closed, {args.clients} clients) | won | GET_NUMBER p50 / p99 / max ms | "
        "CPU ms per GET_NUMBER and its FINISH (daemons / postgres / emulators) | "
        f"open loop {args.rate:.0f}/s GET_NUMBER p50 / p99 ms | FINISH p50 / p99 | "
        f"GET_SERVICES p50 / p99 | burst {args.burst} SMS drain s | lost | doubled | "
        "SIMs sold twice | activations |"
    )
    print("|" + "---|" * 15)
    for r in results:
        ol = r["open_loop_pcts"]
        drain = f"{r['drain']:.1f}" if r["drain"] is not None else f"> {args.drain_timeout:.0f}"
        print(
            f"| {r['setup']} ({r['hosts']} x {args.modems // r['hosts']}, {r['storage']}) | "
            f"{r['come_up']:.1f} | {cpu_cell(r['idle_cpu'], '%')} | {r['numbers_rps']:.0f} | "
            f"{r['numbers_won']} | {' / '.join(f'{v:.1f}' for v in r['numbers'])} | "
            f"{cpu_cell(r['numbers_cpu_ms'], 'ms')} | "
            f"{ol['GET_NUMBER'][0]:.2f} / {ol['GET_NUMBER'][1]:.2f} | "
            f"{ol['FINISH_ACTIVATION'][0]:.2f} / {ol['FINISH_ACTIVATION'][1]:.2f} | "
            f"{ol['GET_SERVICES'][0]:.2f} / {ol['GET_SERVICES'][1]:.2f} | {drain} | "
            f"{r['lost']} | {r['doubled']} | {r['sold_twice']} | {r['activations']} |",
            flush=True,
        )
    for r in results:
        print()
        print(
            f"{r['setup']}: open loop {args.rate:.0f} requests/s for {args.duration:.0f} s, "
            f"ms from the scheduled start; CPU % under it (daemons / postgres / emulators) "
            f"{cpu_cell(r['open_loop_cpu'], '%')}; "
            f"under the burst {cpu_cell(r['burst_cpu'], '%')}; "
            f"open-loop GET_NUMBER answered SUCCESS: {r['open_loop_sold'][0]} of "
            f"{int(args.rate * args.duration) // 4} (left unfinished: {r['open_loop_sold'][1]}); "
            f"SIMs given an activation before the burst: {r['covered']}; "
            f"deliveries unsettled at the end: {r['unsettled']}"
            + (f"; server: {r['server']}" if "server" in r else "")
        )
        print("\n".join(r["open_loop"]), flush=True)
        if "numbers_commits" in r:
            print(
                f"{r['setup']}: {r['numbers_commits']:.2f} database transactions committed "
                "per closed-loop GET_NUMBER request (with its FINISH, and everything else the "
                "hosts committed meanwhile: publishing, recounts, upkeep)"
            )
        if "statements" in r:
            print("\n".join(r["statements"]), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setup", action="append", choices=sorted(SETUPS))
    parser.add_argument("--modems", type=int, default=512, help="in all (split across the hosts)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=5000, help="closed-loop GET_NUMBER")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="open-loop seconds")
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds after the last settled push for doubles"
    )
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument(
        "--statements",
        action="store_true",
        help="PostgreSQL: load pg_stat_statements and print the statements that took the "
        "server's time under the closed loop (adds its own small cost)",
    )
    args = parser.parse_args()
    raise_open_file_limit()
    setups = args.setup or ["pg2", "sqlite1"]
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        "PostgreSQL: a throwaway cluster on a Unix socket, fsync=on, synchronous_commit=on, "
        "full_page_writes=on (durable as in production); SQLite: WAL, synchronous=FULL; "
        f"both under {tempfile.gettempdir()}"
    )
    results = []
    failed = False
    for name in setups:
        try:
            results.append(asyncio.run(run_setup(name, args)))
        except Exception as exc:  # one setup failing still reports the others
            failed = True
            print(f"{name} failed: {exc!r}", flush=True)
            continue
        r = results[-1]
        print(
            f"{name} done; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
            f"GET_NUMBER/s {r['numbers_rps']:.0f}, burst drain {r['drain']}, lost {r['lost']}, "
            f"doubled {r['doubled']}, unsettled {r['unsettled']}, sold twice {r['sold_twice']}",
            flush=True,
        )
    report(results, args)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
