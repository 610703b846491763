"""Issue 16 review: several hosts on one PostgreSQL store, as a hostile hub and a careless
operator meet it. A real PostgreSQL server (tests/pg.py), real HTTP on loopback."""

from __future__ import annotations

import pytest

from supplier.errors import StoreError
from supplier.migrate import MigrateError, migrate_store
from supplier.pgstore import PgStore, probe

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
