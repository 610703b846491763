"""The PostgreSQL server stopped and started under the store (issue 16).

While the server is down every call answers StoreError within the store's
timeout (never a hang, never a guess), and once it is back the pool's
connections are opened again by themselves: nothing to restart. Both ways a
server goes away: `pg_ctl stop -m fast` (connections told to close) and
`-m immediate` (as if the server crashed).
"""

from __future__ import annotations

import time

import pytest

from supplier.errors import StoreError
from supplier.pgstore import PgStore

from .pg import Cluster
from .test_push_leases import HUB, seed


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_the_store_fails_fast_while_the_server_is_down_and_resumes_by_itself(
    pg_cluster: Cluster, pg_url: str, mode: str
) -> None:
    store = await PgStore.open(pg_url, timeout=2.0, host="a")
    try:
        [delivery_id] = await seed(pg_url, 1)
        assert await store.next_due(HUB) == 0.0  # the pool's connection is in use
        pg_cluster.stop(mode)
        try:
            for _ in range(3):  # every call, not only the first after the stop
                started = time.monotonic()
                with pytest.raises(StoreError) as failed:
                    await store.due_deliveries(HUB, time.time(), 10)
                assert time.monotonic() - started < 2.0 + 1.0
                assert store.path in str(failed.value)
                with pytest.raises(StoreError):
                    await store.next_due(HUB)
        finally:
            pg_cluster.start()
        # Back: the same store, no reopening.
        [(delivery, _)] = await store.due_deliveries(HUB, time.time(), 10)
        assert delivery.id == delivery_id
        assert await store.settle_delivery(delivery_id, "SUCCESS", "HTTP 200", time.time())
    finally:
        await store.close()
