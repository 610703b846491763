"""Issue 16 review: several hosts on one PostgreSQL store, as a hostile hub and a careless
operator meet it. A real PostgreSQL server (tests/pg.py), real HTTP on loopback."""

from __future__ import annotations

import pytest
import structlog

from supplier.errors import StoreError
from supplier.migrate import MigrateError, migrate_store
from supplier.pgstore import PgStore, probe

from .hubkit import RunFactory
from .pg import Stores, set_read_only

SECRET = "s3cret-in-the-query"


def _stranger(pg_url: str) -> str:
    """`pg_url` as a role the server does not know, its password given as a query parameter
    (asyncpg and libpq accept `?password=`)."""
    return pg_url.replace("supplier@", "nobody@") + f"&password={SECRET}"


async def test_a_password_in_the_urls_query_is_never_printed(pg_url: str) -> None:
    url = _stranger(pg_url)
    with pytest.raises(StoreError) as opened:
        await PgStore.open(url, timeout=2.0)
    assert "nobody" in str(opened.value)  # the error still says what was tried…
    assert SECRET not in str(opened.value)  # …without the password
    problem = await probe(url)
    assert problem is not None and "nobody" in problem
    assert SECRET not in problem
    with pytest.raises(MigrateError) as copied:
        await migrate_store("/nonexistent/store.db", url.replace("postgresql", "mysql"))
    assert SECRET not in str(copied.value)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_database_down_is_not_one_error_line_per_hub_request(
    run: RunFactory, stores: Stores
) -> None:
    """Every GET_NUMBER fails while the database refuses writes: the hub gets ERROR each time,
    the log gets the first failure and then a count, not a line per request."""
    r = await run(modems=1)
    url = (await stores.storage()).url
    assert url is not None
    await set_read_only(url, True)
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(12):
                answer = await r.call(
                    "alpha",
                    {
                        "action": "GET_NUMBER",
                        "country": "russia",
                        "operator": "any",
                        "service": "vk",
                        "sum": 5,
                    },
                )
                assert answer == {
                    "status": "ERROR",
                    "error": "temporarily unable to record the request",
                }
            failures = [e for e in logs if e["event"] == "store failed during a hub request"]
        assert len(failures) == 1, failures
        assert failures[0]["log_level"] == "error" and failures[0]["action"] == "GET_NUMBER"
    finally:
        await set_read_only(url, False)
    assert (await r.number("alpha", "any"))["status"] == "SUCCESS"  # back by itself
    protocol = r.daemon.running.protocol
    assert protocol is not None
    with structlog.testing.capture_logs() as logs:
        protocol.close()  # at the stop: the count of the lines held back
    assert [(e["event"], e["count"]) for e in logs] == [
        ("store failed during a hub request (repeated)", 11)
    ]
