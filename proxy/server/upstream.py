"""One connection to an upstream server as an asyncio Protocol.

It belongs to its server's pool (upstream/pool.py, which keeps its state)
and, while a request uses it, to that request's ``Forwarding`` (its
``owner``), to which it passes every event: bytes, EOF, loss, room to write,
and its deadline (connect, send and read timeouts are that one deadline,
checked by the worker's shared timer). An idle connection that receives
bytes nobody asked for, or EOF, or outlives ``idle_timeout``, is closed:
it can never be trusted with another request.
"""

from __future__ import annotations

import asyncio

from ..http import codec
from .sockets import prepare

WRITE_HIGH_WATER = 64 * 1024


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("pool", "transport", "parser", "state", "owner", "idle_since", "deadline", "queued",
                 "write_paused", "eof")

    def __init__(self, pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = codec.response_parser(pool.engine)
        self.state = ""  # set by the pool (pool.CONNECTING, ...)
        self.owner = None  # the Forwarding using it
        self.idle_since = 0.0
        self.deadline = 0.0
        self.queued = 0.0
        self.write_paused = False
        self.eof = False

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.pool.address} {self.state} owner={self.owner!r}>"

    @property
    def usable(self) -> bool:
        """Fit for a request: open, nothing received since the last response, no EOF."""
        transport = self.transport
        return transport is not None and not self.eof and not transport.is_closing()

    # --- asyncio.Protocol callbacks ---

    def connection_made(self, transport) -> None:
        self.transport = transport
        prepare(transport, WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            try:
                owner.upstream_data(data)
            except Exception:
                owner.crashed()
        else:
            self.pool.close_conn(self)  # bytes nobody asked for: response queue poisoning if reused

    def eof_received(self) -> bool:
        self.eof = True
        owner = self.owner
        if owner is not None:
            owner.upstream_eof()
            return True
        self.pool.close_conn(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.pool.lost(self)
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.owner is not None:
            self.owner.upstream_writable()

    def expired(self) -> None:
        owner = self.owner
        if owner is not None:
            owner.upstream_timeout()
        else:
            self.pool.close_conn(self)  # idle_timeout

    def close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
