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


async def test_a_callback_that_holds_the_loop_shows_as_lag() -> None:
    metrics = Metrics()
    observed: asyncio.Queue[float] = asyncio.Queue()

    def observe(lag: float) -> None:
        metrics.loop_lag.observe(lag)
        observed.put_nowait(lag)

    watch = asyncio.create_task(watch_loop_lag(observe, interval=0.01))
    try:
        await asyncio.wait_for(observed.get(), 10)  # the watch is running
        while not observed.empty():
            observed.get_nowait()
        # A callback that holds the loop for 60 ms, as a scan of every SIM would.
        asyncio.get_running_loop().call_soon(time.sleep, 0.06)
        lag = await asyncio.wait_for(observed.get(), 10)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    assert lag >= 0.04
    count = sample(metrics, "supplier_event_loop_lag_seconds_count")
    within = sample(metrics, "supplier_event_loop_lag_seconds_bucket", {"le": "0.025"})
    assert count - within >= 1


async def test_the_daemon_exposes_its_loop_lag(run: RunFactory) -> None:
    r = await run(modems=1)
    assert r.daemon.running.status_listening is not None
    url = f"http://127.0.0.1:{r.daemon.running.status_listening[1]}/metrics"
    async with aiohttp.ClientSession() as session:
        # The first sample is due 0.1 s after the start; the daemon has been up longer.
        async with asyncio.timeout(10):
            while True:
                async with session.get(url) as response:
                    text = await response.text()
                if 'supplier_event_loop_lag_seconds_bucket{le="0.005"}' in text and (
                    "supplier_event_loop_lag_seconds_count 0.0" not in text
                ):
                    break
                await asyncio.sleep(0.1)  # the next scrape, as Prometheus would
