"""Prometheus metrics for `GET /metrics`, on a registry of the daemon's own.

Counters and the GET_NUMBER histogram are updated as things happen (the
protocol's and the pusher's hooks); SIM states, modem counters and the push
backlog are read from the daemon's live state when scraped. The event loop's
lag is sampled by a small task (`watch_loop_lag`): anything that holds the
loop delays every hub answer and every modem at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "LAG_INTERVAL", "Live", "Metrics", "watch_loop_lag"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `*_created` series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_INTERVAL = 0.1  # seconds between two loop-lag samples: 10 wake-ups a second


@dataclass(slots=True)
class Live:
    """What a scrape reads from the daemon's state at that moment."""

    # (state, country, operator) → n; an operator slug such as beeline exists in several countries
    sims: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    modems: Mapping[str, int] = field(default_factory=dict)  # modem state → n
    backlog: Mapping[str, tuple[int, float]] = field(default_factory=dict)  # hub → (n, age s)
    modem_counters: Iterable[tuple[str, int, int]] = ()  # (port, resets, timeouts)
    sms_messages: int = 0  # messages in the store: a long one counts once, when whole
    balances: Iterable[tuple[str, str, float]] = ()  # (iccid, currency, amount) by USSD


class _LiveCollector(Collector):
    def __init__(self) -> None:
        self.live = Live()

    def collect(self) -> Iterable[Metric]:
        live = self.live
        sims = GaugeMetricFamily(
            "supplier_sims",
            "SIMs known to the inventory, by state, country and operator",
            labels=["state", "country", "operator"],
        )
        for (state, country, operator), count in sorted(live.sims.items()):
            sims.add_metric([state, country, operator], count)
        yield sims
        modems = GaugeMetricFamily(
            "supplier_modems", "Serial ports by modem state", labels=["state"]
        )
        for state, count in sorted(live.modems.items()):
            modems.add_metric([state], count)
        yield modems
        backlog = GaugeMetricFamily(
            "supplier_push_backlog", "SMS deliveries not yet accepted by the hub", labels=["hub"]
        )
        oldest = GaugeMetricFamily(
            "supplier_push_oldest_undelivered_seconds",
            "Age of the oldest delivery not yet accepted by the hub",
            labels=["hub"],
        )
        for hub, (count, age) in sorted(live.backlog.items()):
            backlog.add_metric([hub], count)
            oldest.add_metric([hub], age)
        yield backlog
        yield oldest
        resets = CounterMetricFamily(
            "supplier_modem_resets", "Modem resets (hung, or asked for)", labels=["port"]
        )
        timeouts = CounterMetricFamily(
            "supplier_modem_timeouts", "AT commands that got no answer in time", labels=["port"]
        )
        for port, reset_count, timeout_count in live.modem_counters:
            resets.add_metric([port], reset_count)
            timeouts.add_metric([port], timeout_count)
        yield resets
        yield timeouts
        yield CounterMetricFamily(
            "supplier_sms_received",
            "SMS messages received (a long message counts once, when whole or given up on)",
            value=live.sms_messages,
        )
        balance = GaugeMetricFamily(
            "supplier_sim_balance",
            "A SIM's balance as its operator last stated it (USSD balance_ussd)",
            labels=["iccid", "currency"],
        )
        for iccid, currency, amount in live.balances:
            balance.add_metric([iccid, currency], amount)
        yield balance


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "supplier_hub_requests",
            "Hub requests by hub, action and answer status",
            ["hub", "action", "result"],
            registry=self.registry,
        )
        self.get_number_seconds = Histogram(
            "supplier_get_number_seconds",
            "Time to answer GET_NUMBER",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sms_parts_received = Counter(
            "supplier_sms_parts_received",
            "SMS parts read from the modems (each part of a long message counts)",
            registry=self.registry,
        )
        self.pushes = Counter(
            "supplier_pushes",
            "PUSH_SMS attempts by hub and result (SUCCESS, a final answer, or retry)",
            ["hub", "result"],
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "supplier_event_loop_lag_seconds",
            "How late a timer on the daemon's event loop fires (time something held the loop)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._live = _LiveCollector()
        self.registry.register(self._live)
        # (hub, action, result) → its counter: `labels()` checks and hashes its
        # arguments under a lock on every call, once per hub request.
        self._request_counters: dict[tuple[str, str, str], Counter] = {}

    def on_request(self, hub: str, action: str, result: str, seconds: float) -> None:
        key = (hub, action, result)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(hub, action, result)
        counter.inc()
        if action == "GET_NUMBER":
            self.get_number_seconds.observe(seconds)

    def on_push(self, hub: str, result: str) -> None:
        self.pushes.labels(hub, result).inc()

    def render(self, live: Live) -> bytes:
        self._live.live = live
        return generate_latest(self.registry)


async def watch_loop_lag(observe: Callable[[float], None], interval: float = LAG_INTERVAL) -> None:
    """Observe, every `interval`, how much later than asked a timer fired; runs until cancelled.

    Timed by the clock, not `loop.time()`: uvloop's loop time counts whole
    milliseconds, as of the start of the loop's current iteration.
    """
    while True:
        due = time.monotonic() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, time.monotonic() - due))
