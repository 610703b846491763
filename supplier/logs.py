"""structlog set-up: readable on a terminal, JSON lines otherwise (journald).

At `info` (the default of `supplier run`) the log tells an operator what
happens: start-up, each modem and SIM change that matters, hub problems,
reloads. The modem layer's own step-by-step lines (every state on the way,
every port found) are `debug` then: the daemon logs the changes that matter
from the events it receives.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

__all__ = ["Episode", "Sampled", "Throttled", "configure"]

# The modem layer's info lines that the daemon's own lines replace at info level.
_MODEM_STEPS = frozenset({"modem state", "port found", "port gone", "SIM lost"})


def _modem_steps_are_debug(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if method == "info" and event.get("event") in _MODEM_STEPS and "port" in event:
        raise structlog.DropEvent
    return event


def configure(level: str = "info", *, json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if level != "debug":
        processors.insert(0, _modem_steps_are_debug)
    if json:
        # The traceback as text in the line (`exception`), not `exc_info: true`.
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


class Throttled:
    """A warning that can come in floods (a hub with a wrong key retrying every second).

    The first one is logged as it comes; those after it are counted and
    logged as one line with the count once `interval` seconds have passed,
    and so on each interval while they keep coming. After a quiet interval
    the next one is logged as it comes again.
    """

    def __init__(
        self, logger: Any, event: str, *, interval: float = 60.0, level: str = "warning"
    ) -> None:
        self.logger = logger
        self._log = getattr(logger, level)  # "error" for a failure that comes with every request
        self.event = event
        self.repeated = event + " (repeated)"
        self.interval = interval
        self._count = 0
        self._last: dict[str, Any] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, **fields: Any) -> None:
        if self._timer is None:
            self._log(self.event, **fields)
            self._start()
            return
        self._count += 1
        self._last = fields

    def _start(self) -> None:
        self._count = 0
        self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        """End the current interval: its count, if any, as one line."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._count:
            self._log(
                self.repeated,
                count=self._count,
                seconds=self.interval,
                **{f"last_{k}": v for k, v in self._last.items()},
            )
            self._start()

    def close(self) -> None:
        """At a stop: the count so far, if any, and no timer left behind."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._count:
            self._log(self.repeated, count=self._count, seconds=self.interval)
        self._count = 0


class Sampled:
    """Info lines that come with every hub request (a number given, a FINISH).

    While they are few, each is logged as it comes. Past `limit` lines in
    one `interval`, the rest of that interval are counted per event and
    `key` field and logged as one line each when the interval ends
    (`"number given (more)"`, with `count`, `seconds` and the key's value).
    One JSON line written to the journal costs more than answering the
    request under a hub's full load (hundreds a second); the store keeps
    every activation and its FINISH, so the lines left out lose nothing
    that is not on record.
    """

    def __init__(
        self, logger: Any, *, limit: int = 20, interval: float = 1.0, key: str = "hub"
    ) -> None:
        self.logger = logger
        self.limit = limit
        self.interval = interval
        self.key = key
        self._logged = 0
        self._held: Counter[tuple[str, Any]] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, event: str, **fields: Any) -> None:
        if self._timer is None:
            self._logged = 0
            self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)
        if self._logged < self.limit:
            self._logged += 1
            self.logger.info(event, **fields)
        else:
            self._held[(event, fields.get(self.key))] += 1

    def flush(self) -> None:
        """End the current interval: one line per event and key held back, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, Counter()
        for (event, value), count in held.items():
            more = event + " (more)"
            self.logger.info(more, **{self.key: value}, count=count, seconds=self.interval)

    def close(self) -> None:
        """At a stop: what is held back so far, and no timer left behind."""
        self.flush()


class Episode:
    """A failure that lasts (the store refusing writes), logged once when it begins and
    once when it ends: when it began and how many attempts it refused.

    Only an attempt asked during the current episode ends it: one asked before
    may succeed after a later one failed (a server stopping with both in
    flight) and says nothing about now. So a caller takes `asked()` before the
    attempt and hands it to `ended` after a success.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.since: float | None = None  # when the current episode began
        self.refused = 0  # attempts refused in it
        self._number = 0  # episodes begun so far

    def asked(self) -> int | None:
        """The episode an attempt is asked in (None: none under way)."""
        return self._number if self.since is not None else None

    def failed(self) -> bool:
        """Count a refused attempt; True when it begins an episode (log it then)."""
        self.refused += 1
        if self.since is not None:
            return False
        self.since = self.clock()
        self._number += 1
        return True

    def ended(self, asked: int | None) -> tuple[float, int] | None:
        """A success of an attempt asked in `asked`: if that ends the current episode,
        its length in seconds and how many it refused (log them), else None."""
        if self.since is None or asked != self._number:
            return None
        seconds, refused = self.clock() - self.since, self.refused
        self.since, self.refused = None, 0
        return seconds, refused
