"""
Many deadlines on one reactor call.

Every connection has a heartbeat deadline, moved at every ping and pong,
and most have their token's expiry.  A reactor timer for each costs a few
hundred bytes per connection, and each one moved leaves its cancelled
predecessor in the reactor's queue until the queue is compacted.
`Deadlines` keeps them as small entries in a heap of its own instead, and
keeps a single reactor call armed for the earliest.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from itertools import count
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

K = TypeVar("K", bound=Hashable)

#: Entries left in the heap by deadlines that were moved or cancelled are
#: dropped all at once when there are more than this many and they are
#: more than half the heap.
COMPACT_AFTER = 64


class Deadlines(Generic[K]):
    """
    At most one deadline per key; C{fire(key)} is called once the key's
    deadline has passed, unless it was moved or cancelled before.

    Deadlines that fall due together fire in the order of their times, and
    of their setting where the times are equal.  A deadline set in the past
    fires on the next turn of the reactor, never during L{set}.
    """

    def __init__(self, clock: IReactorTime, fire: Callable[[K], object]) -> None:
        self._clock = clock
        self._fire = fire
        self._heap: list[tuple[float, int, K]] = []
        self._current: dict[K, tuple[float, int, K]] = {}
        self._stale = 0
        self._order = count()
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._current)

    def due(self, key: K) -> float | None:
        """
        When C{key}'s deadline is, or C{None} if it has none.
        """
        entry = self._current.get(key)
        return None if entry is None else entry[0]

    def set(self, key: K, due: float) -> None:
        """
        Have C{key}'s deadline at C{due} (seconds of the clock), in place of
        the one it had.
        """
        old = self._current.get(key)
        if old is not None:
            if old[0] == due:
                return
            self._stale += 1
        entry = (due, next(self._order), key)
        self._current[key] = entry
        heapq.heappush(self._heap, entry)
        self._compact_if_worth_it()
        self._arm()

    def cancel(self, key: K) -> None:
        """
        Forget C{key}'s deadline, if it has one.
        """
        if self._current.pop(key, None) is None:
            return
        if not self._current:
            # nothing left to wait for: no reactor call either
            self.clear()
            return
        self._stale += 1
        self._compact_if_worth_it()

    def clear(self) -> None:
        """
        Forget every deadline.
        """
        self._current.clear()
        self._heap.clear()
        self._stale = 0
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _compact_if_worth_it(self) -> None:
        if self._stale > COMPACT_AFTER and self._stale * 2 > len(self._heap):
            self._heap = list(self._current.values())
            heapq.heapify(self._heap)
            self._stale = 0

    def _arm(self) -> None:
        if not self._heap:
            return
        first = self._heap[0][0]
        call = self._call
        if call is not None and call.active():
            if call.getTime() <= first:
                return
            call.cancel()
        self._call = self._clock.callLater(max(0.0, first - self._clock.seconds()), self._run)

    def _run(self) -> None:
        self._call = None
        now = self._clock.seconds()
        # What a callback sets, even for now or earlier, waits for the next
        # call, so that a key that keeps setting past deadlines cannot hold
        # the reactor here.
        before = next(self._order)
        heap = self._heap
        while heap and heap[0][0] <= now and heap[0][1] < before:
            entry = heapq.heappop(heap)
            key = entry[2]
            if self._current.get(key) is not entry:
                self._stale -= 1
                continue
            del self._current[key]
            try:
                self._fire(key)
            except Exception:
                log.failure("A deadline's callback failed")
            # a callback's compaction puts a new list in place
            heap = self._heap
        self._arm()
