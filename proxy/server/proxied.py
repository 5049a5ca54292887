"""Connections on a ``proxy_protocol`` listener: the PROXY header first, then HTTP.

``PendingHeader`` owns a new connection until its PROXY header
(http/proxyproto.py) is complete, then hands the transport to a
``ClientProtocol`` that takes the client address the header named, and
feeds it whatever followed the header in the same read. The HTTP codec never
sees the header, and a connection costs nothing more once it is handed over:
the shell is gone, so no request pays for it.

A connection whose first bytes are not a valid PROXY header, or that sends
none within ``header_timeout``, is closed without a word (the peer is meant
to be a load balancer; an answer would only be read as the start of a
response by one that is misconfigured). Refusals are logged once a minute at
most, with their count (``EdgeState.proxy_header_refused``); a connection
closed before it sent a byte (a balancer's TCP health check) is not one.

TLS listeners read the header in ``server/tls.py``, before the handshake.
"""

from __future__ import annotations

import asyncio

from ..errors import ProxyHeaderError
from ..http import proxyproto
from .client import DRAIN_IDLE, ClientProtocol
from .h2conn import PriorKnowledge


class PendingHeader(asyncio.Protocol):
    """A connection whose PROXY header is still being read; one of the worker's connections meanwhile
    (it counts toward max_connections and a graceful stop closes it)."""

    __slots__ = ("w", "transport", "buffer", "deadline", "queued")

    def __init__(self, worker) -> None:
        self.w = worker
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.deadline = 0.0
        self.queued = 0.0

    def __repr__(self) -> str:
        return f"<PendingHeader {len(self.buffer)} bytes>"

    def connection_made(self, transport) -> None:
        self.transport = transport
        w = self.w
        w.conns.add(self)
        w.timers.arm(self, DRAIN_IDLE if w.conns.closing else w.config.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        try:
            header = proxyproto.parse(buffer)
        except ProxyHeaderError as exc:
            self._refuse(exc)
            return
        if header is not None:
            self._hand_over(header.client_ip, bytes(buffer[header.length:]))

    def _hand_over(self, client_ip: str | None, rest: bytes) -> None:
        w = self.w
        transport = self.transport
        w.timers.disarm(self)
        w.conns.discard(self)
        # None (LOCAL, UNKNOWN): the connection's own peer. With [server] h2c, HTTP/2 may follow the header.
        client = PriorKnowledge(w, client_ip) if w.config.server.h2c else ClientProtocol(w, b"http", client_ip)
        transport.set_protocol(client)
        client.connection_made(transport)
        if rest:
            client.data_received(rest)

    def eof_received(self) -> bool:
        if self.buffer:
            self._refuse(ProxyHeaderError("the connection closed before its PROXY header ended"))
        return False

    def connection_lost(self, exc) -> None:
        self.w.timers.disarm(self)
        self.w.conns.discard(self)

    def expired(self) -> None:
        if self.buffer or not self.w.conns.closing:
            self._refuse(ProxyHeaderError("no PROXY header within header_timeout"))
        else:
            self.abort()

    def _refuse(self, exc: ProxyHeaderError) -> None:
        self.w.edge.proxy_header_refused(exc, self.transport.get_extra_info("peername"), self.w)
        self.abort()

    def stopping(self, linger: float) -> None:
        if not self.buffer:
            self.w.timers.arm(self, linger)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
