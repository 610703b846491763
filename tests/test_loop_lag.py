"""The event loop's lag, as an operator sees it: `supplier_event_loop_lag_seconds`."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from supplier.metrics import Metrics, watch_loop_lag

from .hubkit import RunFactory


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def wait_for_samples(metrics: Metrics, count: float) -> None:
    async with asyncio.timeout(10):
        while sample(metrics, "supplier_event_loop_lag_seconds_count") < count:
            await asyncio.sleep(0.01)


async def test_a_callback_that_holds_the_loop_shows_as_lag() -> None:
    metrics = Metrics()
    watch = asyncio.create_task(watch_loop_lag(metrics.loop_lag, interval=0.01))
    try:
        await wait_for_samples(metrics, 3)
        time.sleep(0.06)  # a callback that holds the loop for 60 ms
        seen = sample(metrics, "supplier_event_loop_lag_seconds_count")
        await wait_for_samples(metrics, seen + 1)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    slow = sample(metrics, "supplier_event_loop_lag_seconds_count") - sample(
        metrics, "supplier_event_loop_lag_seconds_bucket", {"le": "0.025"}
    )
    assert slow >= 1
    assert sample(metrics, "supplier_event_loop_lag_seconds_sum") >= 0.04


async def test_the_daemon_exposes_its_loop_lag(run: RunFactory) -> None:
    r = await run(modems=1)
    assert r.daemon.status_listening is not None
    url = f"http://127.0.0.1:{r.daemon.status_listening[1]}/metrics"
    await wait_for_samples(r.daemon.metrics, 1)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    assert 'supplier_event_loop_lag_seconds_bucket{le="0.005"}' in text
    count = next(
        line for line in text.splitlines() if line.startswith("supplier_event_loop_lag_seconds_count")
    )
    assert float(count.rsplit(" ", 1)[1]) >= 1
