"""PUSH_SMS: the durable outbox, drained per hub.

Each hub has its own worker, so a slow or dead hub never holds up another.
A worker takes due deliveries from the store (at most `batch` at a time,
`concurrency` requests in flight), POSTs each one gzip-compressed, and
records the answer in one transaction: done on the hub's SUCCESS (or on a
final answer of the OnlineSim profile), otherwise tried again
`retry_interval` seconds later, for ever. Nothing is marked delivered
before the hub said so, so deliveries in flight at a crash are sent again
after the restart; nothing marked delivered is ever sent again.

The hub's answer is judged whole: read to its end, at most `MAX_ANSWER`
bytes within `push_timeout` (a longer or endless answer is a failed
attempt). Delivered means HTTP 2xx (OnlineSim: 200) with a JSON object
whose `status`, trimmed and case-folded, is `success`. Anything else is
retried: a 2xx whose body is not JSON (a proxy's page, a cut answer) does
not say the hub took the SMS, and a SUCCESS with HTTP 5xx is the hub's
server saying it failed; a repeat is safe (the hub drops an `smsId` it
has), a lost SMS is not.

On a shared store (PostgreSQL, several hosts) every host pushes from one
outbox: a worker takes only as many deliveries as it can send at once, each
with a lease (the store's `due_deliveries`), so no delivery waits in this
host's queue while its lease runs and each attempt is made by one host. A
host is woken for the SMS its own inbox stores; what it was not told about
(an SMS stored by a host that died before pushing it, a dead host's leases
run out) it finds by polling the outbox every `POLL_INTERVAL` seconds.

No failure path is a hot loop: when the store cannot be read or written,
the hub's worker pauses `retry_interval` before it tries anything again,
and an answer the store could not record is recorded later, not pushed
again (or forgotten, once another host settled its delivery). Failures
are logged per hub and episode: the first one with the hub's answer,
then one summary a minute, then one line when the hub's backlog is
delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import aiohttp
import structlog

from . import __version__
from .backend import StoreBackend
from .config import HubConfig
from .errors import StoreError
from .logs import Episode
from .store import Delivery, Sms

__all__ = ["MAX_ANSWER", "ONLINESIM_FINAL", "Pusher", "judge", "push_body"]

log = structlog.get_logger("supplier.pusher")

USER_AGENT = f"supplier/{__version__} (+number-supplier agent)"
# OnlineSim answers that end the delivery although they are not SUCCESS.
ONLINESIM_FINAL = frozenset({"NO_OPERATION", "BAD_SERVICE", "IGNORED", "SERVICE_BAN"})
MAX_ANSWER = 64 * 1024  # a hub's answer is a few dozen bytes; more is not an answer
SUMMARY_INTERVAL = 60.0  # one summary line a minute per failing hub
# Shared store: how often an idle worker looks for work no one told it about. What
# it finds has waited a lease already (a dead host's: push timeout + margin, 20 s
# by default) or is also being pushed by the host that stored it, so 2 s adds
# little delay; it costs one indexed read per hub and host every 2 s.
POLL_INTERVAL = 2.0
# Shared store: the shortest wait after a turn that took nothing although a
# delivery looked due (another host's transaction held it: SKIP LOCKED).
POLL_FLOOR = 0.1


class _AnswerTooLarge(Exception):
    """The hub's answer went past MAX_ANSWER bytes."""


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
    """(outcome if the delivery is over, else None; a short description of the answer).

    `body` is the whole answer. Only an explicit SUCCESS with a 2xx (OnlineSim:
    200) delivers; a 2xx that is not JSON and a SUCCESS with a 5xx are retried,
    because neither says the hub stored the SMS, and a repeat is harmless.
    """
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError: not JSON, or an integer past Python's 4,300-digit limit.
        return None, f"HTTP {http_status}, not JSON"
    raw = answer.get("status") if isinstance(answer, dict) else None
    status = raw.strip().upper() if isinstance(raw, str) else None
    described = f"HTTP {http_status}, status {raw!r}"
    success = status is not None and status.casefold() == "success"
    if profile == "onlinesim":
        if http_status == 200 and success:
            return "SUCCESS", described
        if status in ONLINESIM_FINAL:
            return status, described
        return None, described
    if success and 200 <= http_status < 300:
        return "SUCCESS", described
    return None, described


async def _read_whole(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body to its end, however many reads it takes; raises past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _AnswerTooLarge
    return b"".join(chunks)


class _Answer(NamedTuple):
    """A hub's final answer the store could not record: recorded later, never pushed again."""

    outcome: str
    described: str
    when: float
    sms_id: int
    hub: str


@dataclass
class _HubWorker:
    hub: HubConfig
    wake: asyncio.Event
    task: asyncio.Task[None] | None = None
    in_flight: int = 0
    paused_until: float = 0.0  # loop time: the store failed, nothing before this
    forget_check: float = 0.0  # loop time: the next look for kept answers settled elsewhere
    # The current failure episode (None: the hub takes its pushes).
    failing_since: float | None = None
    last_answer: str = ""
    last_summary: float = 0.0
    failed_attempts: int = 0  # since the last summary
    delivered: int = 0  # in this episode


class Pusher:
    def __init__(
        self,
        store: StoreBackend,
        hubs: Sequence[HubConfig],
        *,
        concurrency: int = 16,
        batch: int = 200,
        clock: Callable[[], float] = time.time,
        on_result: Callable[[str, str], None] | None = None,
        summary_interval: float = SUMMARY_INTERVAL,
    ) -> None:
        self.store = store
        self.concurrency = concurrency
        self.batch = batch
        self.clock = clock
        self.on_result = on_result
        self.summary_interval = summary_interval
        self._hubs = {hub.name: hub for hub in hubs}
        self._workers: dict[str, _HubWorker] = {}
        self._in_flight: set[int] = set()
        # Delivery id → the hub's final answer, which the store could not record. Recorded
        # when the delivery is taken again instead of pushing the SMS again; forgotten
        # once the store says the delivery is done (another host settled it).
        self._unrecorded: dict[int, _Answer] = {}
        # The store refuses push results or outbox reads: logged once per episode.
        self._store_episode = Episode(clock)
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
        abandoned and stay due in the store. Answers kept unrecorded are recorded if the
        store takes them now; on a shared store the leases of what this host did not
        finish are given back, so another host pushes it now, not when they run out."""
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
        await self._record_kept()
        await self._give_back()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _record_kept(self) -> None:
        """At a stop: record the answers the store could not take before, while it takes
        them (a SUCCESS left unrecorded is pushed again by whoever takes its delivery)."""
        for delivery_id, answer in list(self._unrecorded.items()):
            try:
                await self.store.settle_delivery(
                    delivery_id, answer.outcome, answer.described, answer.when
                )
            except StoreError as exc:
                log.warning(
                    "cannot record push answers at the stop; their SMS will be pushed again",
                    kept=len(self._unrecorded),
                    error=str(exc),
                )
                return
            del self._unrecorded[delivery_id]

    async def _give_back(self) -> None:
        """At a stop: end this host's leases on the deliveries it did not finish (not those
        whose answer it still holds), so another host takes them at once."""
        try:
            given = await self.store.release_leases(self._hubs, keep=self._unrecorded)
        except StoreError as exc:
            log.warning(
                "cannot give back push leases; other hosts take them when they run out",
                error=str(exc),
            )
            return
        if given:
            log.info("push leases given back to other hosts", deliveries=given)

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
        loop = asyncio.get_running_loop()
        shared = self.store.shared
        while True:
            pause = worker.paused_until - loop.time()
            if pause > 0:
                # The store failed: nothing (not even a new SMS) starts a push before this.
                await asyncio.sleep(pause)
                continue
            worker.wake.clear()
            idle = worker.in_flight == 0  # before the reads: those in flight are excluded
            # Shared: take no more than can be sent now, so no lease runs out in a queue.
            take = min(self.batch, self.concurrency - worker.in_flight) if shared else self.batch
            if take <= 0:
                await worker.wake.wait()  # every send ends by setting it
                continue
            try:
                due = await self.store.due_deliveries(
                    worker.hub.name,
                    self.clock(),
                    take,
                    exclude=self._in_flight,
                    push_timeout=worker.hub.push_timeout,
                )
                next_at = (
                    None
                    if due
                    else await self.store.next_due(worker.hub.name, exclude=self._in_flight)
                )
            except StoreError as exc:
                self._store_failed(worker, "cannot read the outbox", exc)
                continue
            except Exception:  # a bug or a driver's surprise pauses the hub, never ends its worker
                log.exception("cannot take due pushes", hub=worker.hub.name)
                self._pause(worker)
                continue
            for delivery, sms in due:
                await limit.acquire()
                if worker.paused_until > loop.time():
                    limit.release()  # a send of this round met a failing store: stop here
                    break
                self._in_flight.add(delivery.id)
                worker.in_flight += 1
                task = asyncio.create_task(self._send(worker, delivery, sms, limit))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
            if self._unrecorded and loop.time() >= worker.forget_check:
                worker.forget_check = loop.time() + POLL_INTERVAL  # a read per kept answer
                await self._forget_settled(worker, {delivery.id for delivery, _ in due})
            if due:
                continue
            if next_at is None and idle:
                self._episode_over(worker)
            timeout = None if next_at is None else max(0.0, next_at - self.clock())
            if shared:  # also look for what other hosts stored or left, now and then
                timeout = POLL_INTERVAL if timeout is None else min(POLL_INTERVAL, timeout)
                timeout = max(POLL_FLOOR, timeout)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await worker.wake.wait()

    async def _send(
        self, worker: _HubWorker, delivery: Delivery, sms: Sms, limit: asyncio.Semaphore
    ) -> None:
        hub = worker.hub
        try:
            outcome: str | None
            unrecorded = self._unrecorded.pop(delivery.id, None)
            if unrecorded is not None:
                # Answered before: only record it.
                outcome, described, now = unrecorded.outcome, unrecorded.described, unrecorded.when
            else:
                outcome, described = await self._post(hub, sms)
                now = self.clock()
                self.sent += 1
            asked = self._store_episode.asked()  # before the write: see logs.Episode
            try:
                await self._record(
                    worker=worker,
                    delivery=delivery,
                    sms=sms,
                    outcome=outcome,
                    described=described,
                    now=now,
                )
            except StoreError:
                if outcome is not None:  # a failed attempt is simply pushed again later
                    self._unrecorded[delivery.id] = _Answer(
                        outcome, described, now, sms.id, hub.name
                    )
                raise
            self._store_works(asked)
            if unrecorded is None:
                self._observe(worker, delivery, sms, outcome, described)
            if self.on_result is not None:
                self.on_result(hub.name, outcome or "retry")
        except StoreError as exc:
            self._store_failed(worker, "cannot record a push answer", exc, sms_id=sms.id)
        except Exception:  # a bug here must pause the hub, never spin on the SMS
            log.exception("push failed unexpectedly", hub=hub.name, sms_id=sms.id)
            self._pause(worker)
        finally:
            self._in_flight.discard(delivery.id)
            worker.in_flight -= 1
            limit.release()
            worker.wake.set()

    async def _forget_settled(self, worker: _HubWorker, taken: set[int]) -> None:
        """Forget the answers kept for the hub's deliveries that are done (or gone).

        A delivery whose answer this host could not record may be settled by
        another host (this host's lease ran out while the store was down) and
        never come back here; its answer would be kept for ever. One that is
        not done is kept whoever holds it now: it may come back to this host,
        which then records the answer instead of pushing the SMS again. Looked
        for every POLL_INTERVAL at most: one read per answer kept.
        """
        name = worker.hub.name
        busy = taken | self._in_flight
        waiting = [
            (delivery_id, answer)
            for delivery_id, answer in self._unrecorded.items()
            if answer.hub == name and delivery_id not in busy
        ]
        for delivery_id, answer in waiting:
            try:
                deliveries = await self.store.deliveries_for(answer.sms_id)
            except StoreError as exc:
                self._store_failed(worker, "cannot read the outbox", exc)
                return
            stored = next((d for d in deliveries if d.id == delivery_id), None)
            if stored is not None and stored.done is None:
                continue  # may still be pushed by this host: keep its answer
            del self._unrecorded[delivery_id]  # only this worker takes the hub's deliveries
            log.info(
                "push answer not recorded: the delivery was settled elsewhere",
                hub=name,
                sms_id=answer.sms_id,
                answer=answer.outcome,
                settled=stored.outcome if stored is not None else None,
            )

    async def _record(
        self,
        *,
        worker: _HubWorker,
        delivery: Delivery,
        sms: Sms,
        outcome: str | None,
        described: str,
        now: float,
    ) -> None:
        hub = worker.hub
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
            await self.store.retry_delivery(delivery.id, described, now, now + hub.retry_interval)
            log.debug(
                "SMS push failed; will retry",
                hub=hub.name,
                sms_id=sms.id,
                answer=described,
                attempt=delivery.attempts + 1,
                retry_in=hub.retry_interval,
            )

    # -- failures: pauses and the per-hub episode log -----------------------------------

    def _pause(self, worker: _HubWorker) -> None:
        loop = asyncio.get_running_loop()
        worker.paused_until = max(worker.paused_until, loop.time() + worker.hub.retry_interval)

    def _store_failed(self, worker: _HubWorker, what: str, exc: StoreError, **context: int) -> None:
        """The store refused a read or a write: the hub pauses; one error line per episode."""
        self._pause(worker)
        if self._store_episode.failed():
            log.error(what, hub=worker.hub.name, error=str(exc), **context)
        else:
            log.debug(what, hub=worker.hub.name, error=str(exc), **context)

    def _store_works(self, asked: int | None) -> None:
        """A push result asked in episode `asked` was committed: the episode ends if it is
        the current one (one asked before it may commit after a later one failed)."""
        ended = self._store_episode.ended(asked)
        if ended is not None:
            seconds, refused = ended
            log.info("the store takes push results again", after=round(seconds, 1), refused=refused)

    def _observe(
        self,
        worker: _HubWorker,
        delivery: Delivery,
        sms: Sms,
        outcome: str | None,
        described: str,
    ) -> None:
        """Keep the hub's failure episode: its first failure, a summary a minute, its end."""
        hub = worker.hub
        if outcome is not None:
            if worker.failing_since is not None:
                worker.delivered += 1
            return
        now = self.clock()
        worker.last_answer = described
        worker.failed_attempts += 1
        if worker.failing_since is None:
            worker.failing_since = now
            worker.last_summary = now
            worker.failed_attempts = 0
            worker.delivered = 0
            log.warning(
                "pushes to the hub fail; retrying",
                hub=hub.name,
                sms_id=sms.id,
                activation_id=delivery.activation_id,
                answer=described,
                retry_in=hub.retry_interval,
            )
        elif now - worker.last_summary >= self.summary_interval:
            worker.last_summary = now
            task = asyncio.create_task(self._summary(worker, worker.failed_attempts))
            self._sends.add(task)  # referenced until done; cancelled at stop
            task.add_done_callback(self._sends.discard)
            worker.failed_attempts = 0

    async def _summary(self, worker: _HubWorker, attempts: int) -> None:
        now = self.clock()
        try:
            backlog, oldest = (await self.store.backlog(now)).get(worker.hub.name, (0, 0.0))
        except StoreError:
            backlog, oldest = -1, -1.0  # unknown; the store's failure is logged on its own
        since = worker.failing_since if worker.failing_since is not None else now
        log.warning(
            "pushes to the hub still failing",
            hub=worker.hub.name,
            backlog=backlog,
            oldest_age=round(oldest, 1),
            failing_for=round(now - since, 1),
            failed_attempts=attempts,
            last_answer=worker.last_answer,
        )

    def _episode_over(self, worker: _HubWorker) -> None:
        """Nothing undelivered for the hub any more: close its failure episode in one line."""
        if worker.failing_since is None:
            return
        seconds = round(self.clock() - worker.failing_since, 1)
        log.info(
            "hub back",
            summary=f"delivered {worker.delivered} after {seconds} s",
            hub=worker.hub.name,
            delivered=worker.delivered,
            after=seconds,
        )
        worker.failing_since = None
        worker.delivered = 0

    async def _post(self, hub: HubConfig, sms: Sms) -> tuple[str | None, str]:
        assert self._session is not None
        payload = json.dumps(push_body(hub, sms), ensure_ascii=False).encode("utf-8")
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Encoding": "gzip",
            "Accept-Encoding": "gzip",
        }
        try:
            # One deadline for the whole exchange, the answer's last byte included.
            async with (
                asyncio.timeout(hub.push_timeout),
                self._session.post(
                    hub.push_url,
                    data=gzip.compress(payload),
                    headers=headers,
                    allow_redirects=False,
                ) as response,
            ):
                body = await _read_whole(response.content, MAX_ANSWER)
                return judge(hub.profile, response.status, body)
        except TimeoutError:
            return None, f"timeout after {hub.push_timeout}s"
        except _AnswerTooLarge:
            return None, f"answer larger than {MAX_ANSWER} bytes"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"
