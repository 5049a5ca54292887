"""After a 101: the client and upstream connections relay raw bytes to each other until the tunnel ends.

Strategy: no task, no buffer and no copy of our own. Once the upstream has
answered 101 and the 101 is on its way to the client, each connection's
transport gets a small protocol (``_End``) through ``transport.set_protocol``,
and bytes received on one end are written straight to the other's
transport. Backpressure is asyncio's own flow control: when one transport's
write buffer passes its high-water mark (client.WRITE_HIGH_WATER) it calls
``pause_writing`` on its protocol, which pauses reading on the other
transport, and ``resume_writing`` resumes it. A tunnel therefore holds at
most about one write buffer per direction, however fast either side sends
and however slowly the other reads; the kernel's socket buffers and TCP
flow control carry the pressure back to the sender.

Ending: EOF from one side is passed on as EOF (``write_eof``, a TCP
half-close) and the other side may go on sending; the tunnel ends when both
sides have sent EOF, when either connection is lost, or after
``websocket_idle_timeout`` seconds without a byte either way. TLS has no
half-close in asyncio: EOF from a TLS client closes its connection (and so
the tunnel), and EOF towards it closes it once the buffered bytes are out.
On a graceful stop open tunnels are closed at once: the upgrade request is
long finished, and WebSocket clients reconnect.

Bytes are counted as they pass (the status page and metrics are live), and
the access log gets one line per tunnel when it ends.
"""

from __future__ import annotations

import asyncio
from time import perf_counter

from ..http import codec
from ..http.responses import reason as reason_phrase
from ..http.upgrade import switching_headers


class _End(asyncio.Protocol):
    """One connection of a tunnel; ``other`` is the connection its bytes go to."""

    __slots__ = ("tunnel", "side", "transport", "other", "direction", "eof", "tls", "on_lost")

    def __init__(self, tunnel: "Tunnel", side: str, direction: str) -> None:
        self.tunnel = tunnel
        self.side = side  # "client" or "upstream": who ended the tunnel, in the log
        self.direction = direction  # where this end's bytes go, for the counters
        self.transport: asyncio.Transport | None = None
        self.other: _End
        self.eof = False
        self.tls = False
        self.on_lost = None  # told when this connection is gone (the client side: the worker's books)

    def __repr__(self) -> str:
        return f"<_End {self.side} eof={self.eof}>"

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        tunnel.last_activity = tunnel.loop.time()
        tunnel.count(self.direction, len(data))
        if not tunnel.ended_by:
            self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.tunnel.end_of_input(self)
        return not self.tls  # over TCP keep our write side open: the other side may still answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.finish(self.side)
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        self.other.transport.resume_reading()


class Tunnel:
    """Two transports joined after a 101; ``on_end`` is called once when the tunnel has ended."""

    __slots__ = ("loop", "closing", "metrics", "protocol", "idle_timeout", "close_timeout", "client", "upstream",
                 "on_end", "ended_by", "last_activity", "bytes", "_timer")

    def __init__(self, loop, metrics, protocol: bytes, idle_timeout: float, close_timeout: float,
                 on_end, closing=lambda: False) -> None:
        self.loop = loop
        self.closing = closing  # True while the worker stops: the log then says "shutdown"
        self.metrics = metrics
        self.protocol = protocol
        self.idle_timeout = idle_timeout
        self.close_timeout = close_timeout  # a side that stops reading may hold a closing transport this long
        self.client = _End(self, "client", "to_upstream")
        self.upstream = _End(self, "upstream", "to_client")
        self.client.other, self.upstream.other = self.upstream, self.client
        self.on_end = on_end
        self.ended_by = ""
        self.last_activity = loop.time()
        self.bytes = {"to_upstream": 0, "to_client": 0}
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        state = f"ended by {self.ended_by}" if self.ended_by else "open"
        return (f"<Tunnel {self.protocol.decode('latin-1')} {state} to_upstream={self.bytes['to_upstream']} "
                f"to_client={self.bytes['to_client']}>")

    def count(self, direction: str, n: int) -> None:
        self.bytes[direction] += n
        self.metrics.tunnel_bytes[direction] += n

    def start(self, client, upstream, to_upstream: bytes, to_client: bytes) -> None:
        """Take over both connections' transports (``client`` and ``upstream`` are their protocols),
        with the bytes already read on each side."""
        self.metrics.tunnels_open += 1
        self.metrics.tunnels_total += 1
        ends = ((self.client, client, to_upstream), (self.upstream, upstream, to_client))
        for end, owner, _ in ends:
            end.transport = owner.transport
            end.tls = not owner.transport.can_write_eof()
        for end, owner, early in ends:
            if early:
                self.count(end.direction, len(early))
                end.other.transport.write(early)
            end.transport.set_protocol(end)
            if owner.write_paused:  # it saw pause_writing: hold the other side until resume_writing
                end.other.transport.pause_reading()
        for end, owner, _ in ends:
            if end.transport.is_closing():
                self.finish(end.side)
            elif owner.eof:
                end.eof = True
                self.end_of_input(end)
        if not self.ended_by:
            self._timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def end_of_input(self, end: _End) -> None:
        """``end`` will send nothing more: pass the EOF on, or finish when neither side will."""
        other = end.other
        if other.eof or end.tls or other.tls:
            self.finish(end.side)
        else:
            other.transport.write_eof()  # sends what is buffered first, then FIN

    def _check_idle(self) -> None:
        remaining = self.last_activity + self.idle_timeout - self.loop.time()
        if remaining > 0:
            self._timer = self.loop.call_later(remaining, self._check_idle)
        else:
            self._timer = None
            self.finish("idle")

    def finish(self, ended_by: str) -> None:
        """End the tunnel (once): close both connections, flushing what they still hold."""
        if self.ended_by:
            return
        self.ended_by = "shutdown" if self.closing() else ended_by
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.metrics.tunnels_open -= 1
        stuck = False
        for end in (self.client, self.upstream):
            transport = end.transport
            if transport is None or transport.is_closing():
                continue
            if ended_by == "idle":
                transport.abort()  # nothing moved for idle_timeout: whatever is buffered is not being read
            else:
                transport.close()
                stuck = stuck or transport.get_write_buffer_size() > 0
        if stuck:  # close() waits for the peer to read the buffer; a peer that never does is cut off
            self.loop.call_later(self.close_timeout, self._abort)
        self.on_end(self)

    def _abort(self) -> None:
        for end in (self.client, self.upstream):
            if end.transport is not None:
                end.transport.abort()


def start_tunnel(client, conn, response, upstream, on_end) -> None:
    """Answer 101 to the client and relay both ways until the tunnel ends; one access-log line follows.

    ``client`` is the ClientProtocol, ``conn`` the UpstreamConnection that answered 101 (already out
    of its pool); ``on_end`` is called when the tunnel has ended.
    """
    w = client.w
    exchange = client.exchange
    headers = switching_headers(list(response.headers), via=w.via)
    added = w.stamp.headers(exchange, date=w.clock.date(), https=client.scheme == b"https",
                            client_ip=exchange.client_ip, now=perf_counter(), present=headers)
    exchange.status = 101
    client.transport.write(codec.response_head(101, reason_phrase(101), added + headers))
    # Bytes that came after the heads (a client may send its first frame before it sees the 101, a server
    # right after it) are held by each side's parser.
    to_upstream = client.parser.take_trailing()
    to_client = conn.parser.take_trailing()
    protocol = next((v for n, v in response.headers if n == b"upgrade"), b"?")

    def ended(tunnel: Tunnel) -> None:
        exchange.tunnel = (protocol.decode("latin-1"), tunnel.bytes["to_upstream"], tunnel.bytes["to_client"],
                           tunnel.ended_by)
        exchange.body_bytes = tunnel.bytes["to_client"]
        client.tunnel_ended()
        on_end()

    tunnel = Tunnel(w.loop, w.metrics, protocol, upstream.websocket_idle_timeout, w.config.limits.send_timeout,
                    ended, closing=lambda: w.conns.closing)
    client.became_tunnel(tunnel)
    tunnel.client.on_lost = client.tunnel_lost
    tunnel.start(client, conn, to_upstream, to_client)
