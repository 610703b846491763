"""Short cyclic-GC pauses for a long-lived daemon: what has lived since start-up is frozen.

CPython's full collection (generation 2) walks every tracked object; at 512
modems, with the inventory, the activations kept for a day and aiohttp's
state, that held the event loop for ~120 ms, once every few tens of
seconds under hub load (bench/RESULTS.md: the open loop's maximum was that
pause in all three actions). `gc.freeze()` moves every object alive now to
a permanent generation the collector skips, so later full collections walk
only what came after.

A frozen object that later becomes cyclic garbage is not collected while it
stays frozen, so the heap is unfrozen, collected and frozen again every
`every` seconds: one full pause an hour instead of one every minute, and
nothing kept longer than that.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import structlog

__all__ = ["HeapFreezer"]

log = structlog.get_logger("supplier.heap")


class HeapFreezer:
    """Freezes the heap `first_after` seconds after it is made, then every `every` seconds.

    `tick()` is called from a periodic task (the daemon's housekeeping); the
    work is done there, on the event loop, when due.
    """

    def __init__(
        self,
        *,
        first_after: float = 30.0,
        every: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every = every
        self.clock = clock
        self.due = clock() + first_after
        self.frozen = 0  # objects frozen at the last freeze

    def tick(self) -> float | None:
        """Freeze when due; the seconds the collection took, or None when not due."""
        now = self.clock()
        if now < self.due:
            return None
        started = time.perf_counter()
        gc.unfreeze()  # what died since the last freeze is collected now
        gc.collect()
        gc.freeze()
        took = time.perf_counter() - started
        self.frozen = gc.get_freeze_count()
        self.due = now + self.every
        log.debug("heap frozen", objects=self.frozen, took_ms=round(took * 1000, 1))
        return took

    def close(self) -> None:
        """Give the frozen objects back to the collector (a stop, or a test)."""
        gc.unfreeze()
        self.frozen = 0
