"""What a hub request costs besides its answer: its log lines and its compression.

Issue 17: under a hub's full load, one JSON log line per GET_NUMBER and
FINISH, and aiohttp's gzip of every short answer, cost as much of the event
loop as the inventory. The lines are now sampled (every one while they
are few, the first ones and a count per second under load), and answers
are compressed with a small zlib state, the same answer once. What an
operator and a hub see must stay right: these tests read both over HTTP.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from aiohttp import ClientSession

from supplier.logs import Sampled
from supplier.metrics import Metrics
from supplier.protocol import SERVICE, ProtocolService, _gzip

from .test_protocol import SERVICES, SMSHUB, AgentFactory, agent  # noqa: F401 (the fixture)

KEY = SMSHUB.key.get_secret_value()


@pytest.fixture(autouse=True)
def info_level() -> Iterator[None]:
    """The tests' structlog drops info lines (conftest); these tests read them."""
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    yield
    structlog.configure(wrapper_class=wrapper)


def lines(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == event]


async def test_every_number_is_logged_while_few_then_the_rest_are_counted(
    agent: AgentFactory,  # noqa: F811
) -> None:
    a = await agent()
    await a.add_sims(*range(16))
    service: ProtocolService = a.client.server.app[SERVICE]
    service.handed = Sampled(structlog.get_logger("supplier.protocol"), limit=3, interval=3600)
    with structlog.testing.capture_logs() as logs:
        given = [await a.number(s) for s in ("vk", "ok", "wa", "tg", "vk")]
        assert all(answer["status"] == "SUCCESS" for answer in given), given
        for answer in given[:2]:
            assert (await a.finish(answer["activationId"], 4))["status"] == "SUCCESS"
        assert (await a.finish(given[0]["activationId"], 4))["status"] == "SUCCESS"  # again
        service.close()  # a stop: what was held back is logged, no timer left
    # The first three lines of the interval are the first three numbers, in full.
    first = lines(logs, "number given")
    assert [line["activation_id"] for line in first] == [g["activationId"] for g in given[:3]]
    assert all(line["hub"] == "smshub" and line["log_level"] == "info" for line in first)
    assert [line["service"] for line in first] == ["vk", "ok", "wa"]
    assert all(line["iccid"] for line in first)
    # The rest of the interval: one line per event and hub, with its count.
    more = {line["event"]: line for line in logs if line["event"].endswith("(more)")}
    assert set(more) == {
        "number given (more)",
        "activation finished (more)",
        "activation finished again (no effect) (more)",
    }
    assert more["number given (more)"]["count"] == 2
    assert more["activation finished (more)"]["count"] == 2
    assert more["activation finished again (no effect) (more)"]["count"] == 1
    assert all(line["hub"] == "smshub" and line["seconds"] == 3600 for line in more.values())
    assert not lines(logs, "activation finished")  # the limit was reached before any FINISH


async def test_the_count_is_logged_when_the_interval_ends_and_a_new_one_logs_again() -> None:
    log = structlog.get_logger("test")
    sampled = Sampled(log, limit=1, interval=0.05)
    flushed = asyncio.Event()
    flush = sampled.flush

    def on_flush() -> None:
        flush()
        flushed.set()

    sampled.flush = on_flush  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        for n in range(4):
            sampled("number given", hub="a" if n % 2 else "b", activation_id=n)
        await asyncio.wait_for(flushed.wait(), 10)
        assert [line["activation_id"] for line in lines(logs, "number given")] == [0]
        counted = {line["hub"]: line["count"] for line in lines(logs, "number given (more)")}
        assert counted == {"a": 2, "b": 1}
        # A new interval: its first line is logged as it comes.
        sampled("number given", hub="a", activation_id=9)
        assert [line["activation_id"] for line in lines(logs, "number given")] == [0, 9]
        sampled.close()
    assert len(lines(logs, "number given (more)")) == 2  # close had nothing more to add


async def test_few_requests_log_every_line() -> None:
    sampled = Sampled(structlog.get_logger("test"))  # the daemon's: 20 a second
    with structlog.testing.capture_logs() as logs:
        for n in range(20):
            sampled("number given", hub="a", activation_id=n)
        sampled.close()
    assert [line["activation_id"] for line in lines(logs, "number given")] == list(range(20))
    assert not lines(logs, "number given (more)")


async def test_answers_are_gzip_when_accepted_and_plain_json_otherwise(
    agent: AgentFactory,  # noqa: F811
) -> None:
    a = await agent()
    await a.add_sims(*range(4))
    url = str(a.client.make_url("/"))
    finish_bodies = []
    # auto_decompress off: the bytes on the wire, as a hub's own client gets them.
    async with ClientSession(auto_decompress=False) as session:
        for accept in ("gzip", "gzip, deflate", "identity", None):
            headers = {"Accept-Encoding": accept} if accept else {"Accept-Encoding": ""}
            body = {"key": KEY, "action": "GET_NUMBER", "country": "russia", "operator": "any"}
            body["service"] = "vk"
            async with session.post(url, json=body, headers=headers) as response:
                raw = await response.read()
                assert response.headers["Content-Type"] == "application/json; charset=utf-8"
                assert response.headers["Vary"] == "Accept-Encoding"
                gzipped = accept is not None and "gzip" in accept
                assert response.headers.get("Content-Encoding") == ("gzip" if gzipped else None)
                answer = json.loads(gzip.decompress(raw) if gzipped else raw)
            assert answer["status"] == "SUCCESS" and isinstance(answer["number"], int)
            finish = {"key": KEY, "action": "FINISH_ACTIVATION", "status": 4}
            finish["activationId"] = answer["activationId"]
            async with session.post(url, json=finish, headers=headers) as response:
                raw = await response.read()
                if gzipped:
                    finish_bodies.append(raw)
                    raw = gzip.decompress(raw)
                assert json.loads(raw) == {"status": "SUCCESS"}
    assert finish_bodies[0] == finish_bodies[1]  # the same answer, compressed once


async def test_a_large_answer_is_gzip_too(agent: AgentFactory) -> None:  # noqa: F811
    # Many operators in many countries: a GET_SERVICES answer past the small-answer window.
    a = await agent()
    await a.add_sims(*range(16))
    service: ProtocolService = a.client.server.app[SERVICE]
    service.inventory.services = tuple(f"s{n:03d}" for n in range(300)) + SERVICES
    service.inventory.version += 1
    async with (
        ClientSession(auto_decompress=False) as session,
        session.post(
            str(a.client.make_url("/")),
            json={"key": KEY, "action": "GET_SERVICES"},
            headers={"Accept-Encoding": "gzip"},
        ) as response,
    ):
        raw = await response.read()
        assert response.headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(raw)
    assert len(text) > 4096
    answer = json.loads(text)
    assert answer["status"] == "SUCCESS"
    russia = next(c for c in answer["countryList"] if c["country"] == "russia")
    assert all(len(counts) == 304 for counts in russia["operatorMap"].values())


@pytest.mark.parametrize("size", [0, 1, 80, 256, 257, 4096, 4097, 70_000])
def test_every_answer_size_is_gzip_that_any_reader_takes(size: int) -> None:
    # Tiny answers are one stored block, short ones a small window, large ones
    # zlib's defaults; the standard readers check the CRC and the length.
    data = bytes(random.Random(size).choices(b'{}":, abcdefghij0123456789', k=size))
    packed = _gzip(data)
    assert gzip.decompress(packed) == data
    assert zlib.decompress(packed, 16 + zlib.MAX_WBITS) == data
    assert packed[:2] == b"\x1f\x8b"


def test_request_counts_are_kept_per_hub_action_and_result() -> None:
    metrics = Metrics()
    for result in ("SUCCESS", "SUCCESS", "NO_NUMBERS"):
        metrics.on_request("alpha", "GET_NUMBER", result, 0.001)
    metrics.on_request("beta", "GET_NUMBER", "SUCCESS", 0.001)
    counter = metrics.requests

    def count(hub: str, result: str) -> float:
        sample = next(
            s
            for s in next(iter(counter.collect())).samples
            if s.name.endswith("_total")
            and s.labels == {"hub": hub, "action": "GET_NUMBER", "result": result}
        )
        return sample.value

    assert (count("alpha", "SUCCESS"), count("alpha", "NO_NUMBERS"), count("beta", "SUCCESS")) == (
        2,
        1,
        1,
    )
