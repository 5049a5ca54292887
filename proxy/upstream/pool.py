"""Connections to one upstream server: each in an explicit state, kept alive between requests.

States, and the only moves between them::

    CONNECTING --connected--> ACTIVE --release--> IDLE --acquire--> ACTIVE
        |                       |                   |
        +--failed--> CLOSED     +--discard--> CLOSING --lost--> CLOSED
                                                    (idle_timeout, EOF, trimmed past keepalive)

The counters in ``__repr__`` and on the status page are these states counted
as connections move, never inferred from transports.

Idle connections are kept newest-last and reused newest-first (LIFO), so the
ones at the old end are the first to pass ``idle_timeout`` and be closed. A
connection the server closed while it sat idle (Gunicorn closes after its own
keep-alive) has seen EOF by the time it is picked, and is replaced; the
narrower race, a close in flight as the request is sent, is handled by the
caller retrying idempotent requests on a new connection (server/forward.py).

A waiter (the request that wants a connection) is called back:
``connected(conn, reused)`` or ``connect_failed(error)``; nothing here awaits
except opening a new connection, the one step that needs a task.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass
from typing import Callable, Protocol

from ..config import Address, UnixAddress
from ..errors import UpstreamError, connect_error

CONNECTING, IDLE, ACTIVE, CLOSING, CLOSED = "connecting", "idle", "active", "closing", "closed"


class Waiter(Protocol):
    cancelled: bool

    def connected(self, conn, reused: bool) -> None: ...

    def connect_failed(self, error: UpstreamError) -> None: ...


@dataclass(frozen=True, slots=True)
class TlsTarget:
    """HTTPS to one server: the group's client context, and the name sent in SNI and checked in its
    certificate (upstream/group.py chooses both)."""

    context: ssl.SSLContext
    server_name: str


async def open_connection(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.BaseProtocol],
                          address: "Address | UnixAddress", tls: TlsTarget | None = None):
    """Connect ``factory``'s protocol to a server: TCP (and TLS when ``tls`` is given) or a unix socket.
    The caller bounds the time (connect_timeout covers the TLS handshake too)."""
    if type(address) is UnixAddress:
        return await loop.create_unix_connection(factory, address.path)
    if tls is None:
        return await loop.create_connection(factory, address.host, address.port)
    return await loop.create_connection(factory, address.host, address.port, ssl=tls.context,
                                        server_hostname=tls.server_name)


class ServerPool:
    """The connections of one server and the counters that describe its use."""

    def __init__(self, address: "Address | UnixAddress", *, keepalive: int, idle_timeout: float,
                 connect_timeout: float, loop: asyncio.AbstractEventLoop, timers, engine: str = "auto",
                 tls: TlsTarget | None = None) -> None:
        self.address = address
        self.tls = tls
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.loop = loop
        self.timers = timers  # server.timers.Deadlines: closes idle connections after idle_timeout
        self.engine = engine
        self.idle: collections.deque = collections.deque()
        self.counts = {CONNECTING: 0, ACTIVE: 0, IDLE: 0, CLOSING: 0}
        self.connects = 0
        self._opening: set[asyncio.Task] = set()

    def __repr__(self) -> str:
        counts = " ".join(f"{state}={n}" for state, n in self.counts.items())
        return f"<ServerPool {self.address} {counts} connects={self.connects}>"

    def move(self, conn, state: str) -> None:
        """Every state change of a connection goes through here, so the counts stay true."""
        old = conn.state
        if old in self.counts:
            self.counts[old] -= 1
        conn.state = state
        if state in self.counts:
            self.counts[state] += 1

    # --- a request's side ---

    def acquire(self, waiter: Waiter, settle: bool = False) -> None:
        """Give ``waiter`` a connection: a pooled one if one is fit, else a new one.

        ``settle`` (for a request that must not be sent twice) lets the loop turn once before a
        pooled connection is trusted: a FIN the server sent as it closed the idle connection is
        then seen, and a new connection taken, instead of the request failing after it was sent.
        """
        now = self.loop.time()
        while self.idle:
            conn = self.idle.pop()
            if conn.usable and now - conn.idle_since < self.idle_timeout:
                self.move(conn, ACTIVE)
                self.timers.disarm(conn)
                if settle:
                    self.loop.call_soon(self._settled, conn, waiter)
                else:
                    waiter.connected(conn, True)
                return
            self.close_conn(conn)
        self._open(waiter)

    def _settled(self, conn, waiter: Waiter) -> None:
        if waiter.cancelled:
            self.release(conn)
        elif conn.usable:
            waiter.connected(conn, True)
        else:
            self.close_conn(conn)
            self._open(waiter)

    def _open(self, waiter: Waiter) -> None:
        from ..server.upstream import UpstreamConnection

        conn = UpstreamConnection(self)
        self.move(conn, CONNECTING)
        self.connects += 1
        task = self.loop.create_task(self._connect(conn, waiter))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _connect(self, conn, waiter: Waiter) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                await open_connection(self.loop, lambda: conn, self.address, self.tls)
        except (OSError, TimeoutError) as exc:
            self.move(conn, CLOSED)
            if not waiter.cancelled:
                waiter.connect_failed(connect_error(exc, self.address))
            return
        except asyncio.CancelledError:
            self.move(conn, CLOSED)
            raise
        if conn.state is not CONNECTING:  # lost in the instant after it was made
            if not waiter.cancelled:
                waiter.connect_failed(UpstreamError(f"{self.address} closed the connection at once"))
            return
        self.move(conn, ACTIVE)
        if waiter.cancelled:
            self.release(conn)  # nobody wants it now: keep it for the next request
        else:
            waiter.connected(conn, False)

    def release(self, conn) -> None:
        """Give back a connection whose last exchange ended cleanly and left it reusable."""
        conn.owner = None
        if self.keepalive == 0 or not conn.usable or not conn.parser.reusable:
            self.close_conn(conn)
            return
        conn.parser.start_next_cycle()
        conn.idle_since = self.loop.time()
        self.move(conn, IDLE)
        self.idle.append(conn)
        self.timers.arm(conn, self.idle_timeout)
        while len(self.idle) > self.keepalive:
            self.close_conn(self.idle.popleft())

    def detach(self, conn) -> None:
        """The connection leaves the pool for good (it became a tunnel)."""
        conn.owner = None
        self.move(conn, CLOSED)

    # --- the connection's side ---

    def close_conn(self, conn) -> None:
        """Close a connection (an idle one that expired or went stale, or an active one that failed)."""
        conn.owner = None
        if conn.state is IDLE:
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
        if conn.state in (CONNECTING, CLOSED):
            return
        self.timers.disarm(conn)
        self.move(conn, CLOSING)
        conn.close_transport()

    def lost(self, conn) -> None:
        """The connection is gone (whoever closed it)."""
        if conn.state is IDLE:
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
        self.timers.disarm(conn)
        self.move(conn, CLOSED)

    def close(self) -> None:
        for task in list(self._opening):
            task.cancel()
        while self.idle:
            self.close_conn(self.idle[-1])
