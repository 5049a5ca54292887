"""Keep-alive connections to one upstream server, shared by every client connection.

Idle connections are kept newest-last and reused newest-first (LIFO), so the
ones at the old end are the first to pass ``idle_timeout`` and be closed. A
connection the server closed while it sat idle (Gunicorn closes after its own
keep-alive) has seen EOF by the time it is picked, and is replaced; the
narrower race, a close in flight as the request is sent, is handled by the
caller retrying idempotent requests on a new connection (forward.py).
"""

from __future__ import annotations

import asyncio
import collections
import socket

from ..config import Address
from ..errors import UpstreamError, UpstreamTimeout
from ..http.outbound import UpstreamProtocol
from ..server.channel import Channel


class UpstreamConnection:
    __slots__ = ("channel", "protocol", "pool", "idle_since")

    def __init__(self, channel: Channel, pool: "ServerPool") -> None:
        self.channel = channel
        self.protocol = UpstreamProtocol()
        self.pool = pool
        self.idle_since = 0.0

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.pool.address} requests={self.protocol.requests} {self.channel!r}>"

    @property
    def usable(self) -> bool:
        return not self.channel.at_eof and not self.channel.has_data and not self.channel.transport.is_closing()


class ServerPool:
    """The idle connections of one server and the counters that describe its use."""

    def __init__(self, address: Address, *, keepalive: int, idle_timeout: float, connect_timeout: float,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.address = address
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.loop = loop or asyncio.get_running_loop()
        self.idle: collections.deque[UpstreamConnection] = collections.deque()
        self.connects = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<ServerPool {self.address} idle={len(self.idle)} connects={self.connects}>"

    async def acquire(self, settle: bool = False) -> tuple[UpstreamConnection, bool]:
        """A connection ready for a request, and whether it was reused from the pool.

        ``settle`` (for a request that must not be sent twice) lets the loop turn once before a
        pooled connection is trusted: a FIN the server sent as it closed the idle connection is
        then seen, and a new connection taken, instead of the request failing after it was sent.
        """
        while self.idle:
            conn = self.idle.pop()
            if conn.usable and self.loop.time() - conn.idle_since < self.idle_timeout:
                if settle:
                    await asyncio.sleep(0)
                    if not conn.usable:
                        conn.channel.close()
                        continue
                return conn, True
            conn.channel.close()
        return await self.connect(), False

    async def connect(self) -> UpstreamConnection:
        self.connects += 1
        host, port = self.address.host, self.address.port
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, channel = await self.loop.create_connection(lambda: Channel(self.loop), host, port)
        except TimeoutError:
            raise UpstreamTimeout(f"connect to {self.address} timed out") from None
        except ConnectionRefusedError:
            raise UpstreamError(f"connection refused by {self.address}") from None
        except socket.gaierror as exc:
            raise UpstreamError(f"cannot resolve {host}: {exc.strerror}") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.address}: {exc.strerror or exc}") from None
        return UpstreamConnection(channel, self)

    def release(self, conn: UpstreamConnection) -> None:
        """Give back a connection whose last exchange ended cleanly."""
        if self.keepalive == 0 or not conn.usable:
            conn.channel.close()
            return
        conn.protocol.start_next_cycle()
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        while len(self.idle) > self.keepalive:
            self.idle.popleft().channel.close()
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for longer than idle_timeout; runs while any are idle."""
        self._sweeper = None
        deadline = self.loop.time() - self.idle_timeout
        while self.idle and (self.idle[0].idle_since <= deadline or not self.idle[0].usable):
            self.idle.popleft().channel.close()
        if self.idle:
            delay = max(self.idle[0].idle_since + self.idle_timeout - self.loop.time(), 0.05)
            self._sweeper = self.loop.call_later(delay, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self.idle:
            self.idle.pop().channel.close()
