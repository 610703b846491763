"""The heap freezer (supplier/heap.py): the long-lived heap is frozen when due, so the
collector's full passes skip it, and given back to it at every refreeze and at a stop."""

from __future__ import annotations

import gc
import weakref

from supplier.heap import HeapFreezer

from .hubkit import Clock


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_heap_is_frozen_when_due_and_refrozen_every_interval() -> None:
    clock = Clock()
    heap = HeapFreezer(first_after=30.0, every=3600.0, clock=clock)
    try:
        assert heap.tick() is None and gc.get_freeze_count() == 0  # not yet
        clock.advance(30)
        assert heap.tick() is not None
        assert heap.frozen > 0 and gc.get_freeze_count() > 0
        # A cycle alive at a freeze and dead after it is not collected while frozen...
        kept = _Cycle()
        ref = weakref.ref(kept)
        clock.advance(1)
        assert heap.tick() is None  # not due: nothing happens
        heap.due = clock()
        assert heap.tick() is not None  # a refreeze: `kept` is frozen now
        del kept
        gc.collect()
        assert ref() is not None
        # ...and is at the next refreeze, an interval later.
        clock.advance(3599)
        assert heap.tick() is None
        clock.advance(1)
        assert heap.tick() is not None
        assert ref() is None
    finally:
        heap.close()
    assert gc.get_freeze_count() == 0
