"""PUSH_SMS: the durable outbox, drained per hub.

Each hub has its own worker, so a slow or dead hub never holds up another.
A worker takes due deliveries from the store (at most `batch` at a time,
`concurrency` requests in flight), POSTs each one gzip-compressed, and
records the answer in one transaction: done on the hub's SUCCESS (or on a
final answer of the OnlineSim profile), otherwise tried again
`retry_interval` seconds later, for ever. Nothing is marked delivered
before the hub said so, so deliveries in flight at a crash are sent again
after the restart; nothing marked delivered is ever sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import structlog

from . import __version__
from .config import HubConfig
from .errors import StoreError
from .store import Delivery, Sms, Store

__all__ = ["ONLINESIM_FINAL", "Pusher", "push_body"]

log = structlog.get_logger("supplier.pusher")

USER_AGENT = f"supplier/{__version__} (+number-supplier agent)"
# OnlineSim answers that end the delivery although they are not SUCCESS.
ONLINESIM_FINAL = frozenset({"NO_OPERATION", "BAD_SERVICE", "IGNORED", "SERVICE_BAN"})
_MAX_ANSWER = 64 * 1024


def push_body(hub: HubConfig, sms: Sms) -> dict[str, object]:
    """The PUSH_SMS body: `smsId` and `phone` as JSON integers."""
    return {
        "action": "PUSH_SMS",
        "key": hub.key.get_secret_value(),
        "smsId": sms.id,
        "phone": int(sms.number or 0),
        "phoneFrom": sms.sender,
        "text": sms.text,
    }


def judge(profile: str, http_status: int, body: bytes) -> tuple[str | None, str]:
    """(outcome if the delivery is over, else None; a short description of the answer)."""
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None, f"HTTP {http_status}, not JSON"
    status = answer.get("status") if isinstance(answer, dict) else None
    described = f"HTTP {http_status}, status {status!r}"
    if profile == "onlinesim":
        if http_status == 200 and status == "SUCCESS":
            return "SUCCESS", described
        if isinstance(status, str) and status in ONLINESIM_FINAL:
            return status, described
        return None, described
    if status == "SUCCESS" and 200 <= http_status < 300:
        return "SUCCESS", described
    return None, described


@dataclass
class _HubWorker:
    hub: HubConfig
    wake: asyncio.Event
    task: asyncio.Task[None] | None = None


class Pusher:
    def __init__(
        self,
        store: Store,
        hubs: Sequence[HubConfig],
        *,
        concurrency: int = 16,
        batch: int = 200,
        clock: Callable[[], float] = time.time,
        on_result: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.concurrency = concurrency
        self.batch = batch
        self.clock = clock
        self.on_result = on_result
        self._hubs = {hub.name: hub for hub in hubs}
        self._workers: dict[str, _HubWorker] = {}
        self._in_flight: set[int] = set()
        self._sends: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0
        self.delivered = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT},
            connector=aiohttp.TCPConnector(limit=self.concurrency * max(1, len(self._hubs))),
        )
        for hub in self._hubs.values():
            self._start_worker(hub)

    def _start_worker(self, hub: HubConfig) -> None:
        worker = _HubWorker(hub, asyncio.Event())
        worker.task = asyncio.create_task(self._run(worker), name=f"pusher {hub.name}")
        self._workers[hub.name] = worker

    async def stop(self, grace: float = 0.0) -> None:
        """Stop sending. Pushes in flight get `grace` seconds to be answered and recorded
        (so a hub's SUCCESS is not thrown away at a clean stop); after that they are
        abandoned and stay due in the store."""
        workers = [w.task for w in self._workers.values() if w.task is not None]
        for task in workers:
            task.cancel()  # no new pushes start
        await asyncio.gather(*workers, return_exceptions=True)
        self._workers.clear()
        if self._sends and grace > 0:
            await asyncio.wait(list(self._sends), timeout=grace)
        sends = list(self._sends)
        for task in sends:
            task.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def set_hubs(self, hubs: Sequence[HubConfig]) -> None:
        """New hub list (SIGHUP): workers for removed hubs stop, new ones start."""
        new = {hub.name: hub for hub in hubs}
        for name in list(self._workers):
            if name not in new:
                worker = self._workers.pop(name)
                if worker.task is not None:
                    worker.task.cancel()
                    await asyncio.gather(worker.task, return_exceptions=True)
        self._hubs = new
        for hub in hubs:
            existing = self._workers.get(hub.name)
            if existing is None:
                self._start_worker(hub)
            else:
                existing.hub = hub
                existing.wake.set()

    def queued(self, deliveries: Sequence[Delivery]) -> None:
        """New deliveries are in the store: wake their hubs' workers now."""
        for delivery in deliveries:
            worker = self._workers.get(delivery.hub)
            if worker is not None:
                worker.wake.set()

    async def _run(self, worker: _HubWorker) -> None:
        limit = asyncio.Semaphore(self.concurrency)
        while True:
            worker.wake.clear()
            try:
                due = await self.store.due_deliveries(
                    worker.hub.name, self.clock(), self.batch, exclude=self._in_flight
                )
                next_at = (
                    None
                    if due
                    else await self.store.next_due(worker.hub.name, exclude=self._in_flight)
                )
            except StoreError as exc:
                log.error("cannot read the outbox", hub=worker.hub.name, error=str(exc))
                due, next_at = [], self.clock() + worker.hub.retry_interval
            for delivery, sms in due:
                await limit.acquire()
                self._in_flight.add(delivery.id)
                task = asyncio.create_task(self._send(worker, delivery, sms, limit))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
            if due:
                continue
            timeout = None if next_at is None else max(0.0, next_at - self.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await worker.wake.wait()

    async def _send(
        self, worker: _HubWorker, delivery: Delivery, sms: Sms, limit: asyncio.Semaphore
    ) -> None:
        hub = worker.hub
        try:
            outcome, described = await self._post(hub, sms)
            now = self.clock()
            self.sent += 1
            if outcome is not None:
                await self.store.settle_delivery(delivery.id, outcome, described, now)
                self.delivered += outcome == "SUCCESS"
                log.info(
                    "SMS pushed",
                    hub=hub.name,
                    sms_id=sms.id,
                    activation_id=delivery.activation_id,
                    outcome=outcome,
                    attempt=delivery.attempts + 1,
                )
            else:
                await self.store.retry_delivery(
                    delivery.id, described, now, now + hub.retry_interval
                )
                log.warning(
                    "SMS push failed; will retry",
                    hub=hub.name,
                    sms_id=sms.id,
                    answer=described,
                    attempt=delivery.attempts + 1,
                    retry_in=hub.retry_interval,
                )
            if self.on_result is not None:
                self.on_result(hub.name, outcome or "retry")
        except StoreError as exc:
            log.error("cannot record a push answer", hub=hub.name, sms_id=sms.id, error=str(exc))
        finally:
            self._in_flight.discard(delivery.id)
            limit.release()
            worker.wake.set()

    async def _post(self, hub: HubConfig, sms: Sms) -> tuple[str | None, str]:
        assert self._session is not None
        payload = json.dumps(push_body(hub, sms), ensure_ascii=False).encode("utf-8")
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Encoding": "gzip",
            "Accept-Encoding": "gzip",
        }
        try:
            async with self._session.post(
                hub.push_url,
                data=gzip.compress(payload),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=hub.push_timeout),
                allow_redirects=False,
            ) as response:
                body = await response.content.read(_MAX_ANSWER)
                return judge(hub.profile, response.status, body)
        except TimeoutError:
            return None, f"timeout after {hub.push_timeout}s"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"
