"""PUSH_SMS under a hostile network and a failing store (issue 11 points 1-2, issue 12 logs).

The hub here is a raw asyncio server on loopback, so that an answer can be
written in pieces with a delay between them, as TLS, proxies and chunked
encoding deliver it. The failing store is a real SQLite database switched to
`PRAGMA query_only`: every write fails inside SQLite (SQLITE_READONLY, as on
a read-only file) while reads work, as on a full disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import structlog

from supplier.backend import StoreBackend
from supplier.config import HubConfig
from supplier.pgstore import PgStore
from supplier.pusher import MAX_ANSWER, Pusher, judge
from supplier.store import NewPart, NewSms, Store

from .pg import Stores, set_read_only

pytestmark = pytest.mark.backends  # every pusher test here on SQLite and on PostgreSQL

ICCID = "8970010000000000004"
NUMBER = "79001234567"

# One write of the answer: bytes, then how long the hub waits before the next write.
Writes = list[tuple[bytes, float]]


def answer(body: bytes, *, status: str = "200 OK", split: int | None = None) -> Writes:
    """An HTTP/1.1 answer with Content-Length; with `split`, the body in two writes."""
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    if split is None:
        return [(head + body, 0.0)]
    return [(head + body[:split], 0.3), (body[split:], 0.0)]


def chunked(*pieces: bytes) -> Writes:
    """A chunked answer, one chunk per write, 0.2 s apart."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    writes: Writes = [(head, 0.0)]
    for piece in pieces:
        writes.append((f"{len(piece):x}\r\n".encode() + piece + b"\r\n", 0.2))
    writes.append((b"0\r\n\r\n", 0.0))
    return writes


def endless() -> Writes:
    """A 200 whose chunked body never ends (a byte every 50 ms)."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return [(head, 0.0)] + [(b"1\r\n \r\n", 0.05)] * 400


SUCCESS = b'{"status": "SUCCESS"}'
ERROR = b'{"status": "ERROR", "error": "busy"}'


class RawHub:
    """A hub's push endpoint written on asyncio streams: it answers in the writes it is given."""

    def __init__(self, script: Callable[[int], Writes]) -> None:
        self.script = script  # attempt number (0-based) → the writes of its answer
        self.received: list[dict[str, Any]] = []
        self.times: list[float] = []
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/push"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = json.loads(gzip.decompress(await reader.readexactly(length)))
            attempt = len(self.received)
            self.received.append(body)
            self.times.append(time.monotonic())
            self._changed.set()
            for data, pause in self.script(attempt):
                writer.write(data)
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the pusher gave up on this answer (its limit or timeout)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._changed.clear()
                await self._changed.wait()


class Results:
    """The pusher's on_result hook, waitable."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, hub: str, result: str) -> None:
        self.seen.append(result)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.seen):
                self._changed.clear()
                await self._changed.wait()


async def queue_sms(store: StoreBackend, n: int, hub: str = "alpha") -> None:
    now = time.time()
    for i in range(n):
        digest = f"digest-{i}"
        await store.receive(
            NewPart(digest, ICCID, None, "SM", i, "00", now, "VK"),
            NewSms(
                digests=(digest,),
                iccid=ICCID,
                number=NUMBER,
                sender="VK",
                text=f"code {i}",
                kind="text",
                sent=None,
                received=now,
                complete=True,
                routes=((hub, 1),),
            ),
        )


async def deliveries(store: StoreBackend) -> list[Any]:
    """The deliveries of the one SMS queued."""
    [sms] = await store.recent_sms()
    return await store.deliveries_for(sms.id)


async def set_writable(store: StoreBackend, writable: bool) -> None:
    """The store refuses (or accepts again) every write, by the database's own rule.

    SQLite: `query_only` on the store's own connection; PostgreSQL: the
    database made read-only (tests/pg.py `set_read_only`).
    """
    if isinstance(store, Store):
        await store._db.execute(f"PRAGMA query_only = {0 if writable else 1}")
    else:
        assert isinstance(store, PgStore)
        await set_read_only(store.url, not writable)


class Setup:
    def __init__(self, store: StoreBackend, hub: RawHub, pusher: Pusher, results: Results) -> None:
        self.store, self.hub, self.pusher, self.results = store, hub, pusher, results


@pytest.fixture
async def push(stores: Stores) -> AsyncIterator[Callable[..., Any]]:
    made: list[Setup] = []

    async def factory(
        script: Callable[[int], Writes],
        *,
        sms: int = 1,
        retry: float = 0.3,
        timeout: float = 1.0,
        profile: str = "smshub",
        summary_interval: float = 60.0,
        failing_store: bool = False,
    ) -> Setup:
        store = await stores.open(f"s{len(made)}")
        await queue_sms(store, sms)
        if failing_store:
            await set_writable(store, False)
        hub = RawHub(script)
        await hub.start()
        config = HubConfig(
            name="alpha",
            key="alpha-key-0001",
            push_url=hub.url,
            profile=profile,  # type: ignore[arg-type]
            retry_interval=retry,
            push_timeout=timeout,
        )
        results = Results()
        pusher = Pusher(store, [config], on_result=results, summary_interval=summary_interval)
        setup = Setup(store, hub, pusher, results)
        made.append(setup)
        await pusher.start()
        return setup

    yield factory
    for setup in made:
        await setup.pusher.stop()
        await setup.hub.stop()
        await set_writable(setup.store, True)
        await setup.store.close()


# -- 1. the hub's answer is judged whole --------------------------------------------------


@pytest.mark.parametrize(
    "writes",
    [
        answer(SUCCESS, split=9),  # {"status": | "SUCCESS"}
        chunked(b'{"sta', b'tus": "SUCC', b'ESS"}'),
        answer(b'{"status": " success\\n"}'),  # trimmed and case-folded
        answer(b'{"status": "Success"}', split=3),
    ],
    ids=["two-writes", "chunked", "lower-case-padded", "mixed-case-split"],
)
async def test_an_answer_in_pieces_is_judged_whole(push: Any, writes: Writes) -> None:
    s = await push(lambda attempt: writes)
    await s.results.wait_for(lambda seen: len(seen) >= 1)
    assert s.results.seen == ["SUCCESS"]
    [delivery] = await deliveries(s.store)
    assert (delivery.outcome, delivery.attempts) == ("SUCCESS", 1)
    assert len(s.hub.received) == 1


@pytest.mark.parametrize(
    ("writes", "expected"),
    [
        (answer(b" " * MAX_ANSWER + SUCCESS), f"answer larger than {MAX_ANSWER} bytes"),
        (endless(), "timeout after 0.5s"),
        (answer(b"<html>OK</html>"), "HTTP 200, not JSON"),
        (answer(SUCCESS, status="503 Service Unavailable"), "HTTP 503, status 'SUCCESS'"),
        (answer(b'{"status": 1' + b"0" * 5000 + b"}"), "HTTP 200, not JSON"),
    ],
    ids=["too-large", "never-ends", "200-not-json", "success-with-503", "huge-integer"],
)
async def test_an_answer_that_is_not_a_success_is_a_failed_attempt(
    push: Any, writes: Writes, expected: str
) -> None:
    script = lambda attempt: writes if attempt == 0 else answer(SUCCESS)  # noqa: E731
    s = await push(script, timeout=0.5)
    await s.results.wait_for(lambda seen: "SUCCESS" in seen)
    assert s.results.seen == ["retry", "SUCCESS"]
    [delivery] = await deliveries(s.store)
    assert (delivery.outcome, delivery.attempts) == ("SUCCESS", 2)
    assert len(s.hub.received) == 2


def test_judge_rules() -> None:
    assert judge("smshub", 200, b'{"status": "  SUCCESS "}')[0] == "SUCCESS"
    assert judge("smshub", 204, b'{"status": "success"}')[0] == "SUCCESS"
    assert judge("smshub", 500, b'{"status": "SUCCESS"}')[0] is None
    assert judge("smshub", 200, b"OK")[0] is None
    assert judge("smshub", 200, b'{"status": "SUCCESSFUL"}')[0] is None
    assert judge("onlinesim", 200, b'{"status": " no_operation"}')[0] == "NO_OPERATION"
    assert judge("onlinesim", 201, b'{"status": "SUCCESS"}')[0] is None
    assert judge("smshub", 200, b'{"status": ' + b"1" * 4301 + b"}") == (None, "HTTP 200, not JSON")


# -- 2. a failing store never turns the pusher into a hot loop ----------------------------


ON_POSTGRESQL = (
    "PostgreSQL: a push is taken with a lease, a write, so a database that refuses writes "
    "makes no attempt at all (tests/test_push_hosts.py checks that, and this test's case)"
)


async def test_a_success_the_store_cannot_record_is_not_pushed_again(
    push: Any, backend: str
) -> None:
    if backend == "postgresql":
        pytest.skip(ON_POSTGRESQL)
    s = await push(lambda attempt: answer(SUCCESS), retry=0.3, failing_store=True)
    await s.hub.wait_for(1)
    # Three retry intervals on a store that refuses every write: the hub said SUCCESS
    # once; nothing may be pushed again (the old pusher sent it in a tight loop).
    with contextlib.suppress(TimeoutError):
        await s.hub.wait_for(2, timeout=1.0)
    assert len(s.hub.received) == 1
    await set_writable(s.store, True)
    await s.results.wait_for(lambda seen: "SUCCESS" in seen, timeout=5)
    [delivery] = await deliveries(s.store)
    assert (delivery.outcome, delivery.attempts) == ("SUCCESS", 1)
    assert len(s.hub.received) == 1


async def test_a_failing_store_waits_a_retry_interval_between_attempts(
    push: Any, backend: str
) -> None:
    if backend == "postgresql":
        pytest.skip(ON_POSTGRESQL)
    s = await push(lambda attempt: answer(ERROR), retry=0.3)
    await s.hub.wait_for(1)
    await set_writable(s.store, False)
    await s.hub.wait_for(4, timeout=10)
    gaps = [b - a for a, b in zip(s.hub.times[1:], s.hub.times[2:], strict=False)]
    assert all(gap >= 0.25 for gap in gaps), gaps


# -- issue 12: push failures are summarised, not repeated ---------------------------------


class Captured(list[dict[str, Any]]):
    """structlog's events as dicts, with an event to wait on (a structlog processor)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def __call__(self, logger: object, method: str, event: Any) -> Any:
        self.append({**event, "log_level": method})
        self.changed.set()
        raise structlog.DropEvent

    async def wait_for(self, event: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not any(e["event"] == event for e in self):
                self.changed.clear()
                await self.changed.wait()


@contextlib.contextmanager
def captured_logs() -> Iterator[Captured]:
    """Every structlog event at debug level and up (the suite filters at warning)."""
    before = structlog.get_config()
    logs = Captured()
    structlog.configure(
        processors=[logs], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    try:
        yield logs
    finally:
        structlog.configure(**before)


async def test_push_failures_are_logged_once_per_episode(push: Any) -> None:
    with captured_logs() as logs:
        summaries = lambda: [e for e in logs if e["event"] == "pushes to the hub still failing"]  # noqa: E731
        # The hub refuses until the pusher has written two summaries, then takes everything.
        script = lambda attempt: answer(ERROR) if len(summaries()) < 2 else answer(SUCCESS)  # noqa: E731
        s = await push(script, sms=3, retry=0.1, summary_interval=0.5)
        await s.results.wait_for(lambda seen: seen.count("SUCCESS") == 3, timeout=10)
        await logs.wait_for("hub back")  # the worker closes the episode on its next turn
        failures = s.results.seen.count("retry")
    assert failures >= 10  # every SMS tried several times
    warnings = [e for e in logs if e["log_level"] in ("warning", "error")]
    first = [e for e in warnings if e["event"] == "pushes to the hub fail; retrying"]
    assert len(first) == 1 and first[0]["answer"] == "HTTP 200, status 'ERROR'"
    assert first[0]["hub"] == "alpha"
    assert len(summaries()) >= 2 and len(warnings) == 1 + len(summaries())
    for summary in summaries():
        assert summary["backlog"] == 3 and summary["oldest_age"] >= 0
        assert summary["last_answer"] == "HTTP 200, status 'ERROR'"
    [back] = [e for e in logs if e["event"] == "hub back"]
    assert back["log_level"] == "info" and back["delivered"] == 3
    assert back["summary"].startswith("delivered 3 after ")
