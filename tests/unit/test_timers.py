"""The shared deadline timer, driven by a fake loop: no sleeping, every instant chosen by the test."""

from __future__ import annotations

from proxy.server.timers import Deadlines


class FakeLoop:
    """call_at/time, with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when, callback):
        handle = FakeHandle(when, callback)
        self.handles.append(handle)
        return handle

    def advance(self, seconds: float) -> None:
        """Move the clock, running every timer that comes due, in order."""
        target = self.now + seconds
        while True:
            due = [h for h in self.handles if not h.cancelled and h.when <= target]
            if not due:
                break
            handle = min(due, key=lambda h: h.when)
            self.handles.remove(handle)
            self.now = max(self.now, handle.when)
            handle.callback()
        self.now = target

    @property
    def pending(self) -> int:
        return sum(1 for h in self.handles if not h.cancelled)


class FakeHandle:
    def __init__(self, when, callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Conn:
    def __init__(self, name: str, fired: list) -> None:
        self.name = name
        self.deadline = 0.0
        self.queued = 0.0
        self.fired = fired

    def expired(self) -> None:
        self.fired.append((self.name, round(LOOP.now, 3)))


LOOP = FakeLoop()


def setup_function() -> None:
    global LOOP
    LOOP = FakeLoop()


def test_a_deadline_fires_once_when_it_passes():
    fired = []
    timers = Deadlines(LOOP)
    conn = Conn("a", fired)
    timers.arm(conn, 5)
    LOOP.advance(4.9)
    assert fired == []
    LOOP.advance(0.2)
    assert fired == [("a", 105.0)]
    LOOP.advance(10)
    assert fired == [("a", 105.0)]


def test_moving_a_deadline_later_costs_no_new_timer():
    fired = []
    timers = Deadlines(LOOP)
    conn = Conn("a", fired)
    timers.arm(conn, 5)
    handles = len(LOOP.handles)
    for step in range(1, 100):  # a request every 0.04 s re-arms the keep-alive deadline
        LOOP.advance(0.04)
        timers.arm(conn, 5)
    assert len(LOOP.handles) == handles  # no timer was created for any of the re-arms
    assert fired == []
    LOOP.advance(5.1)
    assert len(fired) == 1 and abs(fired[0][1] - (100 + 99 * 0.04 + 5)) < 0.01


def test_an_earlier_deadline_is_honoured():
    fired = []
    timers = Deadlines(LOOP)
    conn = Conn("a", fired)
    timers.arm(conn, 30)
    timers.arm(conn, 2)
    LOOP.advance(2.1)
    assert fired == [("a", 102.0)]
    LOOP.advance(40)
    assert fired == [("a", 102.0)]  # the stale 30 s entry does not fire it again


def test_disarm_cancels_and_many_connections_fire_in_order():
    fired = []
    timers = Deadlines(LOOP)
    conns = [Conn(str(i), fired) for i in range(5)]
    for i, conn in enumerate(conns):
        timers.arm(conn, 5 - i)
    timers.disarm(conns[2])
    LOOP.advance(10)
    assert [name for name, _ in fired] == ["4", "3", "1", "0"]


def test_an_expiry_may_arm_again():
    fired = []
    timers = Deadlines(LOOP)

    class Repeating(Conn):
        def expired(self) -> None:
            super().expired()
            if len(self.fired) < 3:
                timers.arm(self, 1)

    timers.arm(Repeating("r", fired), 1)
    LOOP.advance(10)
    assert [t for _, t in fired] == [101.0, 102.0, 103.0]
    assert LOOP.pending == 0
