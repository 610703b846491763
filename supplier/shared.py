"""Several hosts, one inventory: what the hosts share through PostgreSQL (issue 16).

Each host publishes its SIMs' live state (`live_sims`) under a lease
(`hosts.lease_until`, renewed every few seconds); a host that dies or loses
the database stops renewing, and its SIMs leave every host's counts when the
lease runs out. Leases are written and compared with the database server's
clock, so hosts whose clocks disagree still agree on who is alive.

Allocation is one transaction on whichever host a hub asks: the least
recently used SIM that every rule of `Inventory.get_number` allows is locked
(`FOR UPDATE … SKIP LOCKED`: concurrent allocations take different SIMs and
never wait for each other), its activation inserted and its hold written on
the locked row, so an allocation that comes after sees the hold. FINISH
clears the hold by trigger (migration 7). The SMS routing rule of
`Inventory.routes` is run here against the shared `activations` table, in
the transaction that stores the SMS.

These are the operations on one connection in a transaction; `PgStore`
wraps each in `_write` (one transaction, a timeout, StoreError).
"""

# SQL text here is assembled only from constant fragments; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .sale import SaleRequest
from .store import ACTIVATION_COLUMNS, Activation, Usage

if TYPE_CHECKING:
    from .pgstore import Connection

__all__ = [
    "ANY_OPERATOR",
    "MAX_OFFERS",
    "ROUTE_HORIZON",
    "Counted",
    "LiveSim",
    "Published",
    "allocate",
    "counts",
    "held_here",
    "publish",
    "routes",
]

# The same rules as supplier/inventory.py (which imports these): one definition each.
MAX_OFFERS = 4  # FINISH 4: "may be offered for this service again, at most 4 times in total"
ROUTE_HORIZON = 86400.0  # an unfinished activation gets its number's SMS for a day at most
ANY_OPERATOR = "any"  # networks.ANY: a request for any operator of the country

# The database server's clock in epoch seconds: what leases are written and compared with.
SERVER_NOW = "extract(epoch FROM clock_timestamp())::double precision"


# A live_sims row `ls` that may be sold: its host's lease is live, it is present,
# its SIM is enabled in `sims` (an operator's word, shared), and no other live
# SIM is sold under its number (both would get its SMS).
_SELLABLE = """
    FROM live_sims ls
    JOIN hosts h ON h.name = ls.host AND h.lease_until > {server}
    JOIN sims s ON s.iccid = ls.iccid AND s.enabled{joins}
    WHERE ls.present AND ls.number IS NOT NULL AND ls.country IS NOT NULL
      AND NOT EXISTS (
        SELECT 1 FROM live_sims o JOIN hosts oh ON oh.name = o.host
        WHERE o.number = ls.number AND o.iccid <> ls.iccid AND oh.lease_until > {server}
      )
"""


@dataclass(frozen=True, slots=True)
class LiveSim:
    """One SIM in this host's modems, as the other hosts see it."""

    iccid: str
    number: str | None
    country: str | None
    operator: str | None
    port: str | None
    present: bool  # ready, registered, enabled, a number, a country, not withheld


@dataclass(frozen=True, slots=True)
class Published:
    now: float  # the server's clock when it was written
    rival: str | None  # another process that held this host name's live lease until now


async def publish(
    db: Connection,
    host: str,
    lease: float,
    sims: Sequence[LiveSim],
    gone: Iterable[str] = (),
    *,
    whole: bool = False,
    instance: str = "",
) -> Published:
    """Renew `host`'s lease and write its SIMs.

    `sims` are upserted (a SIM that moved here from another host becomes
    this host's); `gone` (ICCIDs no longer in this host's modems) are
    deleted if they are still this host's. `whole`: `sims` is everything this
    host has; every other row of it is deleted (at start, after an outage).
    A new row takes the hold of its SIM's newest open activation, so a SIM
    carried to another host is not sold twice; an existing row keeps its hold.
    `instance` names the process: a live lease of this name renewed by another
    one comes back as `rival` (two hosts given one name, or this one's previous
    run just killed).
    """
    now = float(await db.fetchval(f"SELECT {SERVER_NOW}"))
    before = await db.fetchrow(
        "SELECT instance, lease_until FROM hosts WHERE name = $1 FOR UPDATE", host
    )
    rival = None
    if before is not None and before[0] != instance and before[1] > now:
        rival = str(before[0])
    await db.execute(
        "INSERT INTO hosts (name, lease_until, started, instance) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (name) DO UPDATE SET lease_until = excluded.lease_until, "
        "instance = excluded.instance, "
        "started = CASE WHEN hosts.lease_until < excluded.started "
        "THEN excluded.started ELSE hosts.started END",
        host,
        now + lease,
        now,
        instance,
    )
    if sims:
        await db.executemany(
            "INSERT INTO live_sims (iccid, host, number, country, operator, port, present, "
            "published, held_until, holder) "
            "SELECT $1, $2, $3, $4, $5, $6, $7, $8, a.release_at, a.id FROM (SELECT 1) one "
            "LEFT JOIN LATERAL (SELECT id, release_at FROM activations "
            "  WHERE iccid = $1 AND finished IS NULL ORDER BY id DESC LIMIT 1) a ON true "
            "ON CONFLICT (iccid) DO UPDATE SET host = excluded.host, number = excluded.number, "
            "country = excluded.country, operator = excluded.operator, port = excluded.port, "
            "present = excluded.present, published = excluded.published",
            [  # in ICCID order: two hosts writing the same rows lock them in one order
                (s.iccid, host, s.number, s.country, s.operator, s.port, s.present, now)
                for s in sorted(sims, key=lambda s: s.iccid)
            ],
        )
    if whole:
        await db.execute(
            "DELETE FROM live_sims WHERE host = $1 AND NOT (iccid = ANY($2::text[]))",
            host,
            [s.iccid for s in sims],
        )
    else:
        gone = list(gone)
        if gone:
            await db.execute(
                "DELETE FROM live_sims WHERE host = $1 AND iccid = ANY($2::text[])", host, gone
            )
    return Published(now, rival)


# GET_NUMBER's SIM: $1 country, $2 operator (or $6, any), $3 service, $4 now, $5 MAX_OFFERS.
_ALLOCATE_SQL = (
    "SELECT ls.iccid, ls.number, ls.country, ls.operator "
    + _SELLABLE.format(server=SERVER_NOW, joins="")
    + """
      AND ls.country = $1 AND ($2 = $6 OR ls.operator = $2)
      AND (ls.held_until IS NULL OR ls.held_until <= $4)
      AND NOT EXISTS (
        SELECT 1 FROM usage u WHERE u.number = ls.number AND u.service = $3
          AND (u.blocked OR u.offers >= $5)
      ){exclude}
    ORDER BY COALESCE(s.last_used, 0), ls.iccid
    LIMIT 1
    FOR UPDATE OF ls SKIP LOCKED
    """
)
_ALLOCATE = _ALLOCATE_SQL.format(exclude="")
# With an exceptionPhoneSet ($7 the prefixes, $8 their lengths): the country's numbers whose
# first n digits are a prefix of length n, for each length given, found by one hash join of
# (numbers x lengths) with the prefixes, once per statement: not one test per prefix for
# every candidate SIM, which 10,000 prefixes made the statement's whole cost.
_ALLOCATE_EXCLUDING = _ALLOCATE_SQL.format(
    exclude="""
      AND ls.number NOT IN (
        SELECT o.number FROM live_sims o
        JOIN unnest($8::int[]) n(length) ON true
        JOIN unnest($7::text[]) p(prefix) ON p.prefix = left(o.number, n.length)
        WHERE o.country = $1 AND o.number IS NOT NULL
      )"""
)


async def allocate(
    db: Connection, request: SaleRequest, *, now: float, release_after: float
) -> Activation | None:
    """Hand out the least recently used SIM of any live host, or None (NO_NUMBERS).

    Every rule of `Inventory.get_number`: the market (`any` operator: every
    operator of the country), free (no hold, or its `release_at` passed),
    the number's history for the service (never after FINISH 1 or 3, at
    most `MAX_OFFERS` offers), not under an exceptionPhoneSet prefix, least
    recently used first (ties: the lower ICCID). The row is locked with SKIP
    LOCKED: a concurrent allocation takes the next SIM rather than waiting,
    and one that locks the row after this commits re-checks it and sees the
    hold. Activation times are the host's clock (`now`), as with SQLite;
    leases are the server's.
    """
    exclude = request.exclude
    params = (request.country, request.operator, request.service, now, MAX_OFFERS, ANY_OPERATOR)
    if exclude:
        row = await db.fetchrow(
            _ALLOCATE_EXCLUDING, *params, list(exclude.listed), list(exclude.lengths)
        )
    else:
        row = await db.fetchrow(_ALLOCATE, *params)
    if row is None:
        return None
    iccid, number, sim_country, sim_operator = row
    # The usage count and the SIM's last_used follow by trigger (migration 3).
    inserted = await db.fetchrow(
        "INSERT INTO activations (hub, iccid, number, service, country, operator, sum, "
        "currency, created, release_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
        f"RETURNING {ACTIVATION_COLUMNS}",
        request.hub,
        iccid,
        number,
        request.service,
        sim_country,
        sim_operator or ANY_OPERATOR,
        request.sum,
        request.currency,
        now,
        now + release_after,
    )
    assert inserted is not None
    activation = Activation(*inserted)
    await db.execute(
        "UPDATE live_sims SET held_until = $2, holder = $3 WHERE iccid = $1",
        iccid,
        activation.release_at,
        activation.id,
    )
    return activation


@dataclass(frozen=True, slots=True)
class Counted:
    """What can be sold now, as one host reads it: the other live hosts' SIMs counted,
    and its own SIMs one by one (their market and the services each may be sold for),
    so that the host leaves out at once any of its own that left sale since."""

    others: dict[str, dict[str, dict[str, int]]]  # country → operator → service → SIMs
    mine: dict[str, tuple[str, str, tuple[str, ...]]]  # ICCID → (country, operator, services)


async def counts(db: Connection, services: Sequence[str], now: float, host: str) -> Counted:
    """Every live host's sellable SIMs (`Inventory.counts`), `host`'s own one by one.

    A present SIM appears with zeros for the services it cannot be sold for;
    a held one counts for none.
    """
    sellable = (
        "(ls.held_until IS NULL OR ls.held_until <= $2) AND svc.service IS NOT NULL "
        "AND NOT COALESCE(u.blocked OR u.offers >= $3, false)"
    )
    rows = _SELLABLE.format(
        server=SERVER_NOW,
        joins="\n    LEFT JOIN unnest($1::text[]) svc(service) ON true"
        "\n    LEFT JOIN usage u ON u.number = ls.number AND u.service = svc.service",
    )
    params = (list(services), now, MAX_OFFERS, host)
    others: dict[str, dict[str, dict[str, int]]] = {}
    for country, operator, service, count in await db.fetch(
        f"SELECT ls.country, ls.operator, svc.service, count(*) FILTER (WHERE {sellable}) "
        f"{rows} AND ls.host <> $4 GROUP BY 1, 2, 3",
        *params,
    ):
        by_service = others.setdefault(country, {}).setdefault(
            operator or ANY_OPERATOR, dict.fromkeys(services, 0)
        )
        if service is not None and count:
            by_service[service] = int(count)
    mine = {
        iccid: (country, operator or ANY_OPERATOR, tuple(sold or ()))
        for iccid, country, operator, sold in await db.fetch(
            f"SELECT ls.iccid, ls.country, ls.operator, "
            f"array_agg(svc.service ORDER BY svc.service) FILTER (WHERE {sellable}) "
            f"{rows} AND ls.host = $4 GROUP BY 1, 2, 3",
            *params,
        )
    }
    return Counted(others, mine)


async def routes(
    db: Connection, number: str | None, iccid: str, now: float
) -> tuple[tuple[str, int | None], ...]:
    """Where an SMS arriving now on `number` in SIM `iccid` goes (`Inventory.routes`).

    The newest activation handed out on the number, from any host, if it is
    not finished, less than `ROUTE_HORIZON` old and on this very SIM (another
    SIM claiming the number is a conflict: not this buyer's SMS); else nowhere.
    """
    if number is None:
        return ()
    row = await db.fetchrow(
        "SELECT id, hub, iccid, created, finished FROM activations "
        "WHERE number = $1 ORDER BY id DESC LIMIT 1",
        number,
    )
    if row is None:
        return ()
    activation_id, hub, holder_iccid, created, finished = row
    if finished is not None or created < now - ROUTE_HORIZON or holder_iccid != iccid:
        return ()
    return ((hub, activation_id),)


async def held_here(
    db: Connection, host: str, known_open: Sequence[int], numbers: Sequence[str]
) -> tuple[list[Activation], dict[tuple[str, str], Usage]]:
    """What other hosts did to this host's SIMs: the activations holding them now, those
    of `known_open` (this host's open ones) as they are now (finished elsewhere?), and
    the history of its numbers. The rotation must not switch out a SIM another host
    sold, and the status page shows its buyer."""
    activations = [
        Activation(*row)
        for row in await db.fetch(
            f"SELECT {ACTIVATION_COLUMNS} FROM activations WHERE id IN "
            "(SELECT holder FROM live_sims WHERE host = $1 AND holder IS NOT NULL) "
            "OR id = ANY($2::bigint[])",
            host,
            list(known_open),
        )
    ]
    # The history of the numbers of the activations found too: a learn that began before
    # this host published a SIM may find another host's sale of it, and the sale's number
    # history must come with it (the rotation and the counts read both together).
    numbers = sorted({*numbers, *(a.number for a in activations)})
    usage = {
        (number, service): Usage(offers, sold, cancelled, returned, blocked)
        for number, service, offers, sold, cancelled, returned, blocked in await db.fetch(
            "SELECT number, service, offers, sold, cancelled, returned, blocked FROM usage "
            "WHERE number = ANY($1::text[])",
            list(numbers),
        )
    }
    return activations, usage
