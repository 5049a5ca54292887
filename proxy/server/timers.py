"""Deadlines: every connection keeps one, and one timer per worker checks them.

Why not ``loop.call_later`` per wait: a handle per read is an allocation,
a heap push and a cancel for each request, for a timeout that almost never
fires. Here a connection only writes a number (``deadline``) when it starts
to wait; the heap holds at most one entry per connection, and one loop timer
is armed for the earliest entry. When an entry comes due and its
connection's deadline has moved on (the usual case: it was served and waits
for a later instant), the entry is pushed again with the new deadline; only
a deadline that really passed calls ``expired()``.

A deadline that moves earlier than the entry already queued (rare: a
shorter timeout after a longer one) gets a second entry; stale entries are
recognised by comparing with the current deadline and skipped.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from typing import Protocol

log = logging.getLogger("proxy")

# Deadlines closer than this together fire in the same timer callback.
SLACK = 0.005


class Expiring(Protocol):
    deadline: float  # 0.0 = none
    queued: float  # the deadline of this object's entry in the heap, 0.0 = none

    def expired(self) -> None: ...


class Deadlines:
    """The shared timer. ``arm(obj, when)`` and ``disarm(obj)`` are all a connection calls."""

    __slots__ = ("loop", "_heap", "_seq", "_timer", "_timer_at")

    def __init__(self, loop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Expiring]] = []
        self._seq = itertools.count()
        self._timer = None
        self._timer_at = 0.0

    def __repr__(self) -> str:
        return f"<Deadlines queued={len(self._heap)} next={self._timer_at:.3f}>"

    def arm(self, obj: Expiring, delay: float) -> None:
        """``obj.expired()`` runs ``delay`` seconds from now unless the deadline is moved or cleared."""
        when = self.loop.time() + delay
        obj.deadline = when
        if obj.queued and obj.queued <= when:
            return  # its entry comes first and is pushed again then
        self._push(obj, when)

    @staticmethod
    def disarm(obj: Expiring) -> None:
        obj.deadline = 0.0

    def _push(self, obj: Expiring, when: float) -> None:
        obj.queued = when
        heapq.heappush(self._heap, (when, next(self._seq), obj))
        if self._timer is None or when < self._timer_at - SLACK:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        now = self.loop.time() + SLACK
        due = []
        while heap and heap[0][0] <= now:
            when, _, obj = heapq.heappop(heap)
            if obj.queued != when:
                continue  # a stale entry: a newer, earlier one was pushed for this object
            obj.queued = 0.0
            deadline = obj.deadline
            if not deadline:
                continue
            if deadline <= now:
                due.append(obj)
            else:
                self._requeue(obj, deadline)
        if heap and self._timer is None:
            self._timer_at = heap[0][0]
            self._timer = self.loop.call_at(self._timer_at, self._fire)
        for obj in due:
            if obj.deadline and obj.deadline <= now:  # an earlier expiry in this batch may have moved it
                obj.deadline = 0.0
                try:
                    obj.expired()
                except Exception:  # one connection's bug must not stop the others' timeouts
                    log.exception("internal error in the timeout of %r", obj)

    def _requeue(self, obj: Expiring, when: float) -> None:
        obj.queued = when
        heapq.heappush(self._heap, (when, next(self._seq), obj))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
