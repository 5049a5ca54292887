"""After a 101: the client and upstream connections relay raw bytes to each other until the tunnel ends.

Strategy: no task, no buffer and no copy of our own. Once the upstream has
answered 101 and the 101 is on its way to the client, each connection's
transport gets a small protocol (``_End``) through ``transport.set_protocol``,
and bytes received on one end are written straight to the other's
transport. Backpressure is asyncio's own flow control: when one transport's
write buffer passes its high-water mark (channel.WRITE_HIGH_WATER) it calls
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

import h11

from ..http.upgrade import switching_headers


class _End(asyncio.Protocol):
    """One connection of a tunnel; ``other`` is the connection its bytes go to."""

    __slots__ = ("tunnel", "side", "channel", "transport", "other", "direction", "eof", "tls")

    def __init__(self, tunnel: "Tunnel", side: str, direction: str) -> None:
        self.tunnel = tunnel
        self.side = side  # "client" or "upstream": who ended the tunnel, in the log
        self.direction = direction  # where this end's bytes go, for the counters
        self.channel = None  # the Channel this end took over; told when the connection is gone
        self.transport: asyncio.Transport | None = None
        self.other: _End
        self.eof = False
        self.tls = False

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
        self.channel.connection_lost(exc)  # so whoever waits on the Channel's close (the handler) is released
        self.tunnel.finish(self.side)

    def pause_writing(self) -> None:
        self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        self.other.transport.resume_reading()


class Tunnel:
    """Two transports joined after a 101. ``done`` completes when the tunnel has ended."""

    __slots__ = ("loop", "runtime", "metrics", "protocol", "idle_timeout", "close_timeout", "client", "upstream", "done",
                 "ended_by", "last_activity", "started", "bytes", "_timer", "_closing")

    def __init__(self, runtime, protocol: bytes, idle_timeout: float, close_timeout: float) -> None:
        loop = self.loop = runtime.loop
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.protocol = protocol
        self.idle_timeout = idle_timeout
        self.close_timeout = close_timeout  # a side that stops reading may hold a closing transport this long
        self.client = _End(self, "client", "to_upstream")
        self.upstream = _End(self, "upstream", "to_client")
        self.client.other, self.upstream.other = self.upstream, self.client
        self.done: asyncio.Future = loop.create_future()
        self.ended_by = ""
        self.started = self.last_activity = loop.time()
        self.bytes = {"to_upstream": 0, "to_client": 0}
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    def __repr__(self) -> str:
        state = f"ended by {self.ended_by}" if self.ended_by else "open"
        return (f"<Tunnel {self.protocol.decode('latin-1')} {state} to_upstream={self.bytes['to_upstream']} "
                f"to_client={self.bytes['to_client']}>")

    def count(self, direction: str, n: int) -> None:
        self.bytes[direction] += n
        self.metrics.tunnel_bytes[direction] += n

    def start(self, client_channel, upstream_channel, to_upstream: bytes, to_client: bytes) -> None:
        """Take over both connections from their Channels, with the bytes already read on each side."""
        self.metrics.tunnels_open += 1
        self.metrics.tunnels_total += 1
        ends = ((self.client, client_channel, to_upstream), (self.upstream, upstream_channel, to_client))
        for end, channel, _ in ends:
            end.channel, end.transport = channel, channel.transport
            end.tls = not channel.transport.can_write_eof()
            channel.on_lost = None  # the handler's 499 logic is for requests; the tunnel logs its own end
        for end, channel, early in ends:
            if early:
                self.count(end.direction, len(early))
                end.other.transport.write(early)
            end.transport.set_protocol(end)
            if channel.write_paused:  # the Channel saw pause_writing: hold the other side until resume_writing
                end.other.transport.pause_reading()
        for end, channel, _ in ends:
            if channel.lost or end.transport.is_closing():
                self.finish(end.side)
            elif channel.at_eof:
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
        self.ended_by = "shutdown" if self.runtime.closing else ended_by
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
        if not self.done.done():
            self.done.set_result(None)

    def _abort(self) -> None:
        for end in (self.client, self.upstream):
            if end.transport is not None:
                end.transport.abort()

    @property
    def duration(self) -> float:
        return self.loop.time() - self.started


def _drain(channel) -> bytes:
    """Every chunk a Channel received and nobody read yet."""
    parts = []
    while channel.has_data:
        parts.append(channel.take())
    return b"".join(parts)


async def run_tunnel(handler, conn, response: h11.InformationalResponse, exchange, upstream) -> None:
    """Answer 101 to the client and relay both ways until the tunnel ends; one access-log line follows."""
    runtime = handler.runtime
    client = handler.conn
    headers = [(b"server", runtime.server_name), (b"date", runtime.clock.date()),
               (b"x-request-id", exchange.request_id), *switching_headers(list(response.headers), via=runtime.via)]
    handler.channel.write(client.send(h11.InformationalResponse(
        status_code=101, headers=headers, reason=response.reason or b"Switching Protocols")))
    exchange.status = 101
    # Bytes that came after the heads (a client may send its first frame before it sees the 101, a server
    # right after it) are in h11's buffers and the Channels', in that order.
    to_upstream = bytes(client.h11.trailing_data[0]) + _drain(handler.channel)
    to_client = bytes(conn.protocol.h11.trailing_data[0]) + _drain(conn.channel)
    protocol = next((v for n, v in response.headers if n == b"upgrade"), b"?")
    tunnel = Tunnel(runtime, protocol, upstream.websocket_idle_timeout, runtime.config.limits.send_timeout)
    exchange.tunnel = tunnel
    tunnel.start(handler.channel, conn.channel, to_upstream, to_client)
    handler.busy = False  # an open tunnel is not a request in flight: a graceful stop closes it at once
    try:
        await tunnel.done
    finally:
        tunnel.finish("shutdown")  # cancelled (grace period over): no-op when it had ended
        exchange.body_bytes = tunnel.bytes["to_client"]
