"""The PostgreSQL allocation statement alone: its plan and its cost (bench/RESULTS.md).

A throwaway cluster (tests/pg.py's `Cluster`), the schema as `PgStore.open`
makes it, two live hosts of 256 SIMs each (four operators), 6,000 finished
activations on them (their `usage` rows and `last_used` written by the
triggers, as a bench run leaves them), 50 SIMs held; VACUUM ANALYZE. Then
GET_NUMBER's statement, exactly as `supplier/shared.py` sends it (any
Russian operator, service tg, one excluded prefix, or `--prefixes N`): EXPLAIN (ANALYZE,
BUFFERS) once, its execution time over 50 EXPLAIN ANALYZE runs, and the
wall time of 300 calls each in a transaction rolled back (BEGIN, the
statement, ROLLBACK: nothing is sold, every call sees the same data).

`--source DIR`: import `supplier` from DIR instead (e.g. an older tree from
`git archive <commit> supplier | tar -x -C DIR`), to compare plans.
"""

# `supplier` is imported in main(), from the tree --source names.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("tg", "wa")


class Capture:
    """A connection that records the allocation's SELECT and answers it with no row."""

    def __init__(self) -> None:
        self.sql = ""
        self.args: tuple[Any, ...] = ()

    async def fetchrow(self, sql: str, *args: Any) -> None:
        self.sql, self.args = sql, args


async def seed(db: Any, now: float) -> None:
    rnd = random.Random(1)
    for host in ("a", "b"):
        await db.execute("INSERT INTO hosts VALUES ($1, $2, $3, '')", host, now + 1e6, now)
    sims = []
    for i in range(512):
        iccid, number = f"8970{i:015d}", f"7900{i:07d}"
        operator = ("mts", "beeline", "megafon", "tele2")[i % 4]
        sims.append((iccid, number, "a" if i < 256 else "b", operator))
        await db.execute(
            "INSERT INTO sims (iccid, number, country, operator, first_seen, last_seen, "
            "last_used) VALUES ($1, $2, 'ru', $3, $4, $4, $5)",
            iccid,
            number,
            operator,
            now,
            now - rnd.random() * 1000,
        )
        await db.execute(
            "INSERT INTO live_sims (iccid, host, number, country, operator, port, present, "
            "published) VALUES ($1, $2, $3, 'ru', $4, 'p', true, $5)",
            iccid,
            sims[-1][2],
            number,
            operator,
            now,
        )
    activations = []
    for k in range(6000):
        iccid, number, _, operator = sims[rnd.randrange(512)]
        created = now - 1000 + k * 0.1
        activations.append(
            (iccid, number, SERVICES[rnd.randrange(2)], operator, created, rnd.choice((3, 4, 4, 5)))
        )
    await db.executemany(
        "INSERT INTO activations (hub, iccid, number, service, country, operator, created, "
        "release_at, finished, status) VALUES ('hub', $1, $2, $3, 'ru', $4, $5::float8, "
        "$5::float8 + 1200, $5::float8 + 1, $6)",
        activations,
    )
    await db.execute("UPDATE usage SET blocked = false, offers = least(offers, 3)")
    await db.execute("UPDATE live_sims SET held_until = NULL, holder = NULL")
    await db.execute(
        "UPDATE live_sims SET held_until = $1, holder = 1 WHERE iccid IN "
        "(SELECT iccid FROM live_sims ORDER BY random() LIMIT 50)",
        now + 1200,
    )
    await db.execute("VACUUM ANALYZE")


def exception_phone_set(size: int) -> tuple[str, ...]:
    """`size` prefixes: 79001 (as before: bars no seeded number), 790000001 (bars SIMs 100
    to 199), then 5- to 11-digit ones that bar none, in a random order."""
    rnd = random.Random(size)
    listed = ["79001", "790000001"][:size]
    while len(listed) < size:
        listed.append("798" + "".join(rnd.choices("0123456789", k=rnd.randint(2, 8))))
    rnd.shuffle(listed)
    return tuple(listed)


async def main(source: Path, prefixes: int) -> None:
    sys.path[:0] = [str(source), str(ROOT)]
    import asyncpg

    from supplier import shared
    from supplier.pgstore import PgStore
    from tests.pg import Cluster, find_bin

    bindir = find_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")
    print(f"supplier from {Path(shared.__file__).parent}; exceptionPhoneSet of {prefixes}")
    cluster = Cluster(bindir)
    try:
        cluster.init()
        cluster.start()
        url = await cluster.new_database()
        store = await PgStore.open(url)
        db = await asyncpg.connect(url)
        try:
            now = time.time()
            await seed(db, now)
            capture = Capture()
            exclude = exception_phone_set(prefixes)
            wanted = {"hub": "hub", "country": "ru", "operator": "any", "service": "tg",
                      "sum": None, "currency": None}  # fmt: skip
            if "request" not in inspect.signature(shared.allocate).parameters:
                # A tree from before the request was one value (--source).
                await shared.allocate(
                    capture, **wanted, exclude=exclude, now=now, release_after=1200
                )
            else:
                from supplier.sale import Prefixes, SaleRequest

                await shared.allocate(
                    capture,  # type: ignore[arg-type]
                    SaleRequest(**wanted, exclude=Prefixes.of(exclude)),
                    now=now,
                    release_after=1200,
                )
            sql, args = capture.sql, capture.args
            async with db.transaction():
                for (line,) in await db.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args):
                    print(line)
            executions = []
            for _ in range(50):
                async with db.transaction():
                    plan = json.loads(
                        await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
                    )
                    executions.append(plan[0]["Execution Time"])
            executions.sort()
            print(
                f"execution over 50 EXPLAIN ANALYZE: median {executions[25]:.3f} ms "
                f"(min {executions[0]:.3f}, max {executions[-1]:.3f})"
            )
            calls = 300
            started = time.perf_counter()
            for _ in range(calls):
                transaction = db.transaction()
                await transaction.start()
                await db.fetchrow(sql, *args)
                await transaction.rollback()
            wall = (time.perf_counter() - started) / calls * 1000
            print(f"{wall:.3f} ms per call, wall, with its BEGIN and ROLLBACK ({calls} calls)")
        finally:
            await db.close()
            await store.close()
    finally:
        cluster.remove()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", type=Path, default=ROOT, help="where `supplier` is imported from"
    )
    parser.add_argument(
        "--prefixes", type=int, default=1, help="exceptionPhoneSet's size (1: 79001 alone)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.source.resolve(), args.prefixes))
