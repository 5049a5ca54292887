"""HTTP/2 to clients: one connection as an asyncio Protocol, each stream answered as an HTTP/1.1 request is.

Strategy: ``data_received`` feeds the ``h2`` library's state machine
(``h2.connection.H2Connection``: frames in, events out, frames to send
buffered) and handles every event it returns; what h2 queued to send is
written once at the end, so the answers to many streams read at once leave
in one write. A request on a stream becomes a ``Stream``: its header list
becomes the same ``RequestHead`` an HTTP/1.1 head becomes (http/http2.py,
the same rules), ``Decider.decide`` chooses its action, and the action is
carried out by the same code as for HTTP/1.1 (``execute``: static files,
``Forwarding`` over the same upstream pools, the status pages, the proxy's
own answers), because a Stream offers the responder interface
``ClientProtocol`` offers: ``respond``, ``start_response``, ``write``,
``finish``, ``fail``, ``write_paused``, and calls the responder's
``writable`` and ``client_lost``. A forwarded response goes through the
same ``buffers.Spool`` (memory, then a temporary file), so a slow reader
holds no more memory than over HTTP/1.1 and the upstream is released early.

Flow control (RFC 9113 section 5.2): a stream's bytes leave as DATA frames as
far as its window and the connection's allow; what is left waits on the
stream, and past STREAM_HIGH_WATER the stream's producer is paused
(``write_paused``) until a WINDOW_UPDATE makes room. Streams with bytes
waiting share the connection window a frame at a time, so one stream whose
reader stopped does not stall the others. A request body is acknowledged
(WINDOW_UPDATE) as it is stored (memory, then a temporary file, as for
HTTP/1.1). While the socket itself does not take bytes (``pause_writing``)
nothing is sent and nothing more is read, so a client that sends but does
not read cannot make the proxy queue answers.

One deadline per connection (timers.py), the earliest of: the connection idle
(no stream) for ``keepalive_timeout`` -> GOAWAY and close; the socket not
taking bytes for ``send_timeout`` -> closed; a stream whose window stayed shut
for ``send_timeout`` -> that stream reset; a request body with no byte for
``body_timeout`` -> 408 on that stream.

Floods (http/http2.Budget): streams the client resets while they are being
answered (rapid reset, CVE-2023-44487), and frames that make the server work
or answer (PING, SETTINGS, PRIORITY, empty DATA), each spend a token bucket;
when one is empty the connection gets GOAWAY ENHANCE_YOUR_CALM and is closed.
What h2 refuses itself (a header block past the decoder's limit: the HPACK
bomb; more than 64 CONTINUATION frames; streams past
SETTINGS_MAX_CONCURRENT_STREAMS; malformed frames) is a ProtocolError: h2
queues the GOAWAY, this module sends it and closes.

A graceful stop (reload, SIGTERM) or ``keepalive_requests`` sends GOAWAY
with the last stream id taken: those streams finish, a newer one is refused
with REFUSED_STREAM (the client retries it, on a new connection), and the
connection closes once idle. h2 itself would stop every stream at its first
GOAWAY, so this one is written beside it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from ..errors import ClientError, ClientTimeout
from ..http import encoding, http2
from ..http.decide import Check, ConnFacts, Delayed, Forward, Seen, Static, refusal
from ..http.exchange import Exchange
from .buffers import RequestBody, Spool
from .client import CLOSED, DRAIN_IDLE, WRITE_HIGH_WATER, ClientProtocol
from .sockets import peer_ip, prepare

log = logging.getLogger("proxy")

STREAM_HIGH_WATER = 64 * 1024  # bytes a stream holds beyond its window before its producer waits
# Rapid reset: streams the client may reset while they are answered, at once and then per second.
RESET_BURST, RESET_RATE = 200, 50
# PING, SETTINGS, PRIORITY, unknown and empty DATA frames: at once, then per second.
CONTROL_BURST, CONTROL_RATE = 500, 100
# HPACK decoding stops (COMPRESSION error, connection closed) at this multiple of max_header_bytes; up to
# it a too-large head is a 431 on its stream, as for HTTP/1.1. HPACK counts 32 bytes more per field.
DECODER_LIMIT = 2

# Header validation is http/http2.py's (with the same rules as HTTP/1.1), so h2's own is off; h2 still
# joins cookie crumbs (RFC 9113 8.2.3). The proxy's response fields are lower-case and carry no
# connection-specific field already (headers.py).
_CONFIG = h2.config.H2Configuration(
    client_side=False, header_encoding=None, validate_inbound_headers=False, normalize_inbound_headers=True,
    validate_outbound_headers=False, normalize_outbound_headers=False)

# A stream's states: its request body is arriving; its answer is produced; it was answered or cut (CLOSED,
# ClientProtocol's name for it, so the code both share reads the same state).
BODY, RESPOND, DONE = "body", "respond", CLOSED


class Http2Protocol(asyncio.Protocol):
    """Serves one HTTP/2 client connection (see the module docstring)."""

    __slots__ = ("w", "scheme", "transport", "h2", "facts", "client_ip", "streams", "deadline", "queued",
                 "write_paused", "closed", "served", "last_stream", "reading", "stalled", "sending", "idle_since",
                 "paused_since", "resets", "control", "_receiving", "_flush_soon", "_read_paused")

    def __init__(self, worker, scheme: bytes = b"https", client_ip: str | None = None) -> None:
        self.w = worker
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.h2: h2.connection.H2Connection | None = None
        self.facts: ConnFacts | None = None
        self.client_ip = client_ip or ""  # given: the client a PROXY header named
        self.streams: dict[int, Stream] = {}
        self.deadline = 0.0
        self.queued = 0.0
        self.write_paused = False
        self.closed = False
        self.served = 0  # streams taken, for keepalive_requests
        self.last_stream: int | None = None  # set once GOAWAY is sent: the last stream id served
        self.reading: set[Stream] = set()  # streams whose request body is still arriving
        self.stalled: set[Stream] = set()  # streams with bytes waiting for their window
        self.sending: dict[Stream, None] = {}  # streams with bytes (or their END_STREAM) to send, in order
        self.idle_since = 0.0
        self.paused_since = 0.0
        self.resets: http2.Budget | None = None
        self.control: http2.Budget | None = None
        self._receiving = False
        self._flush_soon = False
        self._read_paused = False

    def __repr__(self) -> str:
        return f"<Http2Protocol {self.client_ip} streams={len(self.streams)} served={self.served}>"

    # --- asyncio.Protocol callbacks ---

    def connection_made(self, transport) -> None:
        self.transport = transport
        prepare(transport, WRITE_HIGH_WATER)
        if not self.client_ip:
            self.client_ip = peer_ip(transport)
        w = self.w
        limits = w.config.limits
        self.facts = w.conn_facts(transport, self.scheme, self.client_ip)
        now = w.loop.time()
        self.idle_since = now
        self.resets = http2.Budget(RESET_BURST, RESET_RATE, now)
        self.control = http2.Budget(CONTROL_BURST, CONTROL_RATE, now)
        conn = self.h2 = h2.connection.H2Connection(config=_CONFIG)
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
        })
        conn.initiate_connection()
        conn.decoder.max_header_list_size = DECODER_LIMIT * limits.max_header_bytes
        w.conns.add(self)
        metrics = w.metrics
        metrics.http2_open += 1
        metrics.http2_connections += 1
        if w.conns.closing:
            self._go_away("shutdown")
        self._flush()
        self._arm()

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception:
            self.crashed()

    def _received(self, data: bytes) -> None:
        if self.closed:
            return
        self._receiving = True
        try:
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                # h2 queued a GOAWAY with the error code: send it, then close.
                self._fatal(type(exc).__name__, str(exc))
                return
            handlers = _HANDLERS
            for event in events:
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(self, event)
                    if self.closed:
                        return
        finally:
            self._receiving = False
        self._flush()
        self._arm()

    def eof_received(self) -> bool:
        return False  # an HTTP/2 client that half-closes is gone (and TLS has no half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        w = self.w
        if not self.closed:
            self.closed = True
        w.timers.disarm(self)
        for stream in list(self.streams.values()):
            stream.lost()
        self.streams.clear()
        self.reading.clear()
        self.stalled.clear()
        self.sending.clear()
        if self.h2 is not None:
            w.metrics.http2_open -= 1
            self.h2 = None  # its buffers and streams go now, not with the last reference
        w.conns.discard(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.paused_since = self.w.loop.time()
        for stream in self.streams.values():
            stream.write_paused = True
        if not self._read_paused and not self.closed:
            # A client that does not read gets nothing more read either: no answer is queued for it.
            self._read_paused = True
            self.transport.pause_reading()
        self._arm()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._read_paused and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()
        for stream in self.streams.values():  # each stream's producer may go on (see _settle)
            self.sending[stream] = None
        self.dirty()

    # --- the one deadline ---

    def _arm(self) -> None:
        """The connection's deadline: the earliest of the waits in the module docstring."""
        if self.closed:
            return
        w = self.w
        limits = w.config.limits
        if not self.streams:
            linger = DRAIN_IDLE if self.last_stream is not None else limits.keepalive_timeout
            when = self.idle_since + linger
        else:
            when = float("inf")
            if self.write_paused:
                when = self.paused_since + limits.send_timeout
            for stream in self.stalled:
                when = min(when, stream.stalled_since + limits.send_timeout)
            for stream in self.reading:
                when = min(when, stream.last_read + limits.body_timeout)
            if when == float("inf"):
                w.timers.disarm(self)
                return
        w.timers.arm(self, max(0.0, when - w.loop.time()))

    def expired(self) -> None:
        if self.closed:
            return
        now = self.w.loop.time()
        limits = self.w.config.limits
        if not self.streams:
            if now >= self.idle_since + (DRAIN_IDLE if self.last_stream is not None else limits.keepalive_timeout):
                self._go_away("idle")
                self._close()
                return
        elif self.write_paused and now >= self.paused_since + limits.send_timeout:
            self.abort()  # the client took no byte for send_timeout
            return
        stalled = [s for s in self.stalled if now >= s.stalled_since + limits.send_timeout]
        if stalled and self.h2.outbound_flow_control_window <= 0:
            self.abort()  # the connection's own window stayed shut: the client reads nothing at all
            return
        for stream in stalled:
            # Only this stream's reader kept its window shut: the stream is cut, the others go on.
            stream.abort(ErrorCodes.CANCEL)
        for stream in [s for s in self.reading if now >= s.last_read + limits.body_timeout]:
            stream.refuse(ClientTimeout("request body not received in time"))
        self._flush()
        self._arm()

    # --- events (h2.events -> what the proxy does) ---

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self.last_stream is not None and stream_id > self.last_stream:
            # Sent after our GOAWAY: not served, and safe for the client to retry elsewhere (RFC 9113 8.7).
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        state = self.h2.streams.get(stream_id)
        if state is None or state.closed:
            # Reset in the same read as it was opened: the rapid reset pattern. No work is done for it.
            self._spend_reset()
            return
        stream = self.streams[stream_id] = Stream(self, stream_id)
        self.served += 1
        if self.served >= self.w.config.limits.keepalive_requests:
            self._go_away("keepalive_requests")
        stream.begin(event.headers, event.stream_ended is not None)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        # Stored (or dropped) at once, so acknowledged at once: memory is bounded by the body buffers.
        if event.flow_controlled_length:
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif event.stream_ended is None and not self._spend_control():
            return
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.data(event.data)

    def _on_end(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.request_ended()

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            self._spend_control()
            return
        self._spend_reset()
        stream.lost()

    def _on_window(self, event: h2.events.WindowUpdated) -> None:
        pass  # the streams waiting for it are in self.sending: the flush at the end of this read sends more

    def _on_settings(self, event) -> None:
        self._spend_control()  # INITIAL_WINDOW_SIZE or MAX_FRAME_SIZE may have changed: the flush sends

    def _on_settings_acked(self, event) -> None:
        # h2 sets the decoder's limit to the advertised one when the client acknowledges it; between the
        # two a head is answered 431 on its stream rather than the connection closed.
        self.h2.decoder.max_header_list_size = DECODER_LIMIT * self.w.config.limits.max_header_bytes

    def _on_control(self, event) -> None:
        self._spend_control()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        # The client is leaving: streams under way finish when it said NO_ERROR, else everything stops.
        if event.error_code:
            self._close()
        else:
            self.last_stream = self.last_stream if self.last_stream is not None else event.last_stream_id
            if not self.streams:
                self._close()

    # --- floods ---

    def _spend_reset(self) -> None:
        self.w.metrics.http2_resets += 1
        if not self.resets.spend(self.w.loop.time()):
            self._calm("rapid_reset")

    def _spend_control(self) -> bool:
        if self.control.spend(self.w.loop.time()):
            return True
        self._calm("control_flood")
        return False

    def _calm(self, reason: str) -> None:
        log.info("%s: HTTP/2 %s: GOAWAY ENHANCE_YOUR_CALM", self.client_ip, reason.replace("_", " "))
        self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        self._fatal(reason, "")

    def _fatal(self, reason: str, detail: str) -> None:
        """The connection ends on an error: the GOAWAY h2 queued goes out, every stream is cut."""
        if detail:
            log.info("%s: HTTP/2 protocol error, connection closed: %s", self.client_ip, detail)
        self.w.metrics.http2_goaway[reason] += 1
        self._flush()
        self._close()

    # --- sending ---

    def dirty(self) -> None:
        """Something is to be sent: written at the end of this read, or else soon (once per loop turn)."""
        if not self._receiving and not self._flush_soon:
            self._flush_soon = True
            self.w.loop.call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._flush_soon = False
        self._flush()
        self._arm()

    def _flush(self) -> None:
        """The streams' bytes become DATA frames (as far as the windows allow), then everything h2 queued is
        written at once. A body's bytes wait until here, so the answers to the streams of one read leave in
        one write, and a body that ends in the same turn it was written carries END_STREAM on its last frame."""
        conn = self.h2
        if conn is None:
            return
        if self.sending and not self.write_paused:
            self._pump()
        data = conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _pump(self) -> None:
        """A frame from each stream with bytes to send in turn, while the windows allow; then settle each."""
        sending = self.sending
        waiting = list(sending)
        send = self._send_frame
        while waiting:
            waiting = [stream for stream in waiting if send(stream)]
        for stream in list(sending):
            self._settle(stream)

    def _send_frame(self, stream: Stream) -> bool:
        """One DATA frame of ``stream``'s bytes (or the END_STREAM of an answer whose bytes are all sent);
        True when it has more and its window has room."""
        out = stream.out
        conn = self.h2
        stream_id = stream.id
        if not out:
            if stream.ending and stream.state is not DONE:
                conn.end_stream(stream_id)
                stream.ended = True
            return False
        window = conn.local_flow_control_window(stream_id)
        if window <= 0:
            return False
        size = min(window, conn.max_outbound_frame_size)
        data = out[0]
        n = len(data)
        if n > size:
            if type(data) is not memoryview:
                data = memoryview(data)
            out[0] = data[size:]
            data = data[:size]
            n = size
        else:
            out.popleft()
        stream.out_size -= n
        end = stream.ending and not out
        conn.send_data(stream_id, data, end_stream=end)
        stream.ended = end
        stream.stalled_since = 0.0
        return bool(out)

    def _settle(self, stream: Stream) -> None:
        """After sending: complete the stream, or note that it waits for its window, or let its producer on."""
        if stream.state is DONE:
            self.sending.pop(stream, None)
            return
        if stream.ended:
            self.sending.pop(stream, None)
            stream.complete()
            return
        if not stream.out and not stream.ending:
            self.sending.pop(stream, None)
        if stream.out and not self.write_paused:
            if not stream.stalled_since:
                stream.stalled_since = self.w.loop.time()
                self.stalled.add(stream)
        else:  # _send_frame zeroes stalled_since on progress: the set must lose the stream here too, or
            # expired() would read 0.0 as a stall that began at time zero and cancel a stream that is fine
            stream.stalled_since = 0.0
            self.stalled.discard(stream)
        paused = self.write_paused or stream.out_size >= STREAM_HIGH_WATER
        if stream.write_paused and not paused:
            stream.resume()
        else:
            stream.write_paused = paused

    # --- streams' ends, the connection's end ---

    def stream_done(self, stream: Stream, request_open: bool) -> None:
        """``stream`` was answered (or cut); ``request_open``: the client was still sending its request."""
        self.streams.pop(stream.id, None)
        self.reading.discard(stream)
        self.stalled.discard(stream)
        self.sending.pop(stream, None)
        if request_open and not self.closed:
            # RFC 9113 8.1: the answer is complete, the rest of the request is not wanted.
            try:
                self.h2.reset_stream(stream.id, ErrorCodes.NO_ERROR)
            except h2.exceptions.StreamClosedError:
                pass
            self.dirty()
        if not self.streams:
            self.idle_since = self.w.loop.time()

    def _go_away(self, reason: str) -> None:
        """The graceful GOAWAY: streams up to the last one taken finish, newer ones are refused."""
        if self.last_stream is not None or self.closed:
            return
        conn = self.h2
        self.last_stream = conn.highest_inbound_stream_id
        self._flush()  # what h2 queued goes first, in order
        frame = GoAwayFrame(0, last_stream_id=self.last_stream, error_code=ErrorCodes.NO_ERROR)
        self.transport.write(frame.serialize())
        self.w.metrics.http2_goaway[reason] += 1
        if not self.streams:
            self.idle_since = self.w.loop.time()
            self._arm()

    def stopping(self, linger: float) -> None:
        """The worker is stopping: GOAWAY now; streams under way finish, then the connection closes (an idle
        one after ``linger`` seconds, so a request already on its way is refused, not lost to a reset)."""
        self._go_away("shutdown")
        if not self.streams and not self.closed:
            self.w.timers.arm(self, linger)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.w.timers.disarm(self)
        for stream in list(self.streams.values()):
            stream.lost()
        self._flush()
        self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def crashed(self) -> None:
        """A bug while serving this connection: logged with its traceback, the connection cut."""
        log.exception("internal error while serving %s (HTTP/2)", self.client_ip)
        self.abort()


class _StreamSink:
    """The transport a responder sees for one stream (buffers.Spool, files.FileSender): bytes written here
    become the stream's DATA frames."""

    __slots__ = ("stream",)

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def write(self, data) -> None:
        self.stream.send(data)

    def is_closing(self) -> bool:
        return self.stream.state is DONE

    def get_write_buffer_size(self) -> int:
        return self.stream.out_size


class Stream:
    """One request on an HTTP/2 connection, and the responder interface ClientProtocol offers for one on
    HTTP/1.1, so the same responders serve both."""

    __slots__ = ("conn", "id", "w", "client_ip", "scheme", "exchange", "action", "body", "responder", "spool",
                 "write_paused", "transport", "state", "request_open", "out", "out_size", "ending", "ended",
                 "bodiless", "received", "last_read", "stalled_since", "_spool_limits", "facts", "seen",
                 "compress", "encoder")

    takes_sendfile = False  # the bytes go through h2, not straight from a file to the socket

    # How an action is carried out, how an error becomes an answer and how a request is logged are the
    # same for both protocols: the same functions.
    execute = ClientProtocol.execute
    carry_out = ClientProtocol.carry_out
    reply = ClientProtocol.reply
    error_body = ClientProtocol.error_body
    placeholder_values = ClientProtocol.placeholder_values
    _status_page = ClientProtocol._status_page
    fail = ClientProtocol.fail
    _end_exchange = ClientProtocol._end_exchange
    _log_exchange = ClientProtocol._log_exchange
    encoded = ClientProtocol.encoded
    encoded_tail = ClientProtocol.encoded_tail

    def __init__(self, conn: Http2Protocol, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.w = conn.w
        self.client_ip = conn.client_ip
        self.scheme = conn.scheme
        self.facts = conn.facts
        self.seen = None  # what a refused request's head says of its target (decide.Seen), for its route's pages
        self.exchange: Exchange | None = None
        self.action = None
        self.body: RequestBody | None = None
        self.responder = None
        self.compress = None  # the route's config.Compress, set by ``execute`` as on HTTP/1.1 (http/encoding.py)
        self.encoder = None  # the body's encoder when the answer is compressed
        self.spool = None
        self._spool_limits = None  # ClientProtocol's, cleared by the methods both share; a Stream spools at once
        self.write_paused = conn.write_paused
        self.transport = _StreamSink(self)
        self.state = BODY
        self.request_open = True  # the client has not ended the stream yet
        self.out: deque = deque()
        self.out_size = 0
        self.ending = False  # the whole answer was handed over; END_STREAM goes with its last byte
        self.ended = False  # END_STREAM was sent
        self.bodiless = False  # the answer has no body: its HEADERS frame ended the stream
        self.received = 0
        self.last_read = 0.0
        self.stalled_since = 0.0

    def __repr__(self) -> str:
        line = self.exchange.head.request_line if self.exchange is not None and self.exchange.head else "-"
        return f"<Stream {self.id} {line!r} {self.state} out={self.out_size}>"

    # --- the request ---

    def begin(self, fields, end_stream: bool) -> None:
        w = self.w
        self.request_open = not end_stream
        try:
            head = http2.request_head(fields, w.config.limits, end_stream)
        except ClientError as exc:
            self.refuse(exc)
            return
        # As ClientProtocol._on_head: the client behind trusted proxies, the decision, the route's policy.
        decider = w.decider
        facts = self.facts if decider.trusted is None else decider.request_facts(head.headers, self.facts)
        request_id = w.new_request_id(head.get(b"x-request-id"))
        self.exchange = exchange = Exchange(head, request_id, facts.client_ip)
        w.conns.active += 1
        action = self.action = decider.decide(head, facts, request_id)
        exchange.policy = action.policy
        if end_stream:
            self._execute()
            return
        kind = type(action)
        while kind is Delayed or kind is Check:  # what comes after the wait or the password check
            action = action.then
            kind = type(action)
        if kind is Forward or (kind is Static and type(action.otherwise) is Forward):
            self.body = RequestBody(w.config.limits.body_buffer_bytes, w.config.server.temp_dir)
        if head.expect_continue:
            self.conn.h2.send_headers(self.id, [(b":status", b"100")])  # RFC 9113 8.1: a 1xx is a HEADERS frame
        exchange.route = getattr(getattr(action, "route", None), "prefix", "")
        self.last_read = w.loop.time()
        self.conn.reading.add(self)

    def data(self, data: bytes) -> None:
        if self.state is not BODY:
            return
        self.received += len(data)
        if self.received > self.w.config.limits.max_body_bytes:
            self.refuse(ClientError("request body too large", 413))
            return
        if self.body is not None:
            self.body.append(data)
        self.last_read = self.w.loop.time()

    def request_ended(self) -> None:
        """The client ended the stream: the request is complete."""
        self.request_open = False
        if self.state is BODY:
            self.conn.reading.discard(self)
            self._execute()

    def _execute(self) -> None:
        self.state = RESPOND
        self.carry_out(self.action)

    def refuse(self, exc: ClientError) -> None:
        """The request itself is refused (malformed, too large, too slow): the answer, then the stream ends
        (and is reset if the client was still sending)."""
        w = self.w
        if self.exchange is None:
            # As ClientProtocol._refuse: the route the request named still gives its error page and headers.
            head = getattr(exc, "head", None)
            facts = self.facts
            if head is not None:
                self.seen = Seen.of(head)
                if w.decider.trusted is not None:
                    facts = w.decider.request_facts(list(head.fields), facts)
            self.exchange = Exchange(head, w.new_request_id(None), facts.client_ip)
            if self.seen is not None:
                self.exchange.policy = w.decider.pages_for(self.seen, facts)
            w.conns.active += 1
        responder, self.responder = self.responder, None
        if responder is not None:
            responder.client_lost()
        self.conn.reading.discard(self)
        self.state = RESPOND  # what the client still sends for it is dropped
        self.exchange.handler = "local"
        self.reply(refusal(exc))

    # --- writing the answer: the responder interface (see ClientProtocol) ---

    def _head(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None, end: bool) -> bool:
        """Send the response's HEADERS frame; True when the answer has no body (it then ends the stream)."""
        w = self.w
        exchange = self.exchange
        exchange.status = status
        head = exchange.head
        added = w.stamp.headers(exchange, date=w.clock.date(), https=self.scheme == b"https",
                                client_ip=exchange.client_ip, now=perf_counter(), present=headers)
        headers = added + headers
        applied = exchange.policy
        if applied is not None and applied.policy.response_rules is not None:  # the route's header rules
            rules = applied.policy.response_rules
            headers = rules.apply(headers, self.placeholder_values(self.seen) if rules.dynamic else None)
        fields, bodiless = http2.response_fields(status, headers, length,
                                                 head.method if head is not None else b"GET")
        self.bodiless = bodiless
        self.conn.h2.send_headers(self.id, fields, end_stream=end or bodiless)
        self.conn.dirty()
        return bodiless

    def start_response(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None,
                       reason: bytes = b"", spool: tuple[int, int] | None = None) -> None:
        """The head of an answer whose body follows through ``write`` (HTTP/2 has no reason phrase)."""
        if self.state is DONE:
            return
        if spool is not None:
            self.spool = Spool(self, spool[0], spool[1], self.w.config.server.temp_dir)
        if self.compress is not None:  # as on HTTP/1.1: the route's compression, chosen by this request
            headers, length, self.encoder = encoding.begin(self.compress, self.exchange.head, status, headers, length)
        self._head(status, headers, length, False)

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *,
                length: int | None = None, keep_alive: bool = True) -> None:
        """A complete answer: HEADERS, and DATA as the window allows. ``keep_alive`` means nothing here: the
        connection goes on whatever one stream's answer was."""
        if self.state is DONE:
            return
        if length is None:
            length = len(body)
        if self.compress is not None:
            headers, length, body = encoding.complete(self.compress, self.exchange.head, status, headers, length,
                                                      body)
        empty = not body
        if self._head(status, headers, length, empty) or empty:
            self.ending = True
            self.complete()
            return
        self.exchange.body_bytes += len(body)
        self.ending = True
        self.send(body)  # with END_STREAM on its last frame

    def write(self, data) -> None:
        if self.bodiless or self.state is DONE:
            return
        if self.encoder is not None:
            data = self.encoded(data)
        spool = self.spool
        if spool is not None:
            spool.push(data)
        else:
            self.send(data)

    def send(self, data) -> None:
        """Bytes of the body (the sink's ``write``): DATA frames at the connection's next flush, as far as the
        window allows; past STREAM_HIGH_WATER waiting, the producer is paused."""
        if self.state is DONE or not data:
            return
        self.out.append(data)
        self.out_size += len(data)
        if self.out_size >= STREAM_HIGH_WATER:
            self.write_paused = True
        conn = self.conn
        conn.sending[self] = None
        conn.dirty()

    def finish(self) -> None:
        if self.encoder is not None:
            self.write(self.encoded_tail())
        spool = self.spool
        if spool is not None and spool.pending:
            spool.when_flushed(self._finish)
        else:
            self._finish()

    def _finish(self) -> None:
        if self.state is DONE:
            return
        if self.bodiless:  # its HEADERS ended the stream
            self.complete()
            return
        self.ending = True  # END_STREAM goes with the last frame, at the flush (or alone if all is sent)
        conn = self.conn
        conn.sending[self] = None
        conn.dirty()

    def resume(self) -> None:
        """The stream's window (or the socket) has room again: the producer goes on."""
        self.write_paused = False
        spool = self.spool
        if spool is not None:
            spool.pump()
        responder = self.responder
        if responder is not None:
            responder.writable()

    def abort(self, code: ErrorCodes = ErrorCodes.INTERNAL_ERROR) -> None:
        """Cut this stream (RST_STREAM); the connection and its other streams go on."""
        if self.state is DONE:
            return
        conn = self.conn
        if not conn.closed:
            try:
                conn.h2.reset_stream(self.id, code)
            except h2.exceptions.StreamClosedError:
                pass
            conn.dirty()
        self.lost()

    def crashed(self) -> None:
        """A bug while answering this stream: logged with its traceback, the stream cut."""
        log.exception("internal error while serving %s (HTTP/2 stream %d)", self.client_ip, self.id)
        if self.exchange is not None and not self.exchange.status:
            self.exchange.status = 500
        self.abort()

    # --- the end ---

    def complete(self) -> None:
        """The whole answer was handed to h2: the request is logged and forgotten."""
        if self.state is DONE:
            return
        self.state = DONE
        self.conn.stream_done(self, self.request_open)
        self.w.metrics.http2_streams += 1
        self._end_exchange()

    def lost(self) -> None:
        """The client reset the stream, or the connection ended, before the answer was complete (499)."""
        if self.state is DONE:
            return
        self.state = DONE
        self.out.clear()
        self.out_size = 0
        self.conn.stream_done(self, False)  # reset already, by the client or by abort(), or no connection
        responder, self.responder = self.responder, None
        if responder is not None:
            responder.client_lost()
        if self.exchange is not None:
            self.exchange.status = self.exchange.status or 499
            self.w.metrics.http2_streams += 1
            self._end_exchange()


_HANDLERS = {
    h2.events.RequestReceived: Http2Protocol._on_request,
    h2.events.DataReceived: Http2Protocol._on_data,
    h2.events.StreamEnded: Http2Protocol._on_end,
    h2.events.StreamReset: Http2Protocol._on_reset,
    h2.events.WindowUpdated: Http2Protocol._on_window,
    h2.events.RemoteSettingsChanged: Http2Protocol._on_settings,
    h2.events.SettingsAcknowledged: Http2Protocol._on_settings_acked,
    h2.events.PingReceived: Http2Protocol._on_control,
    h2.events.PriorityUpdated: Http2Protocol._on_control,
    h2.events.UnknownFrameReceived: Http2Protocol._on_control,
    h2.events.ConnectionTerminated: Http2Protocol._on_goaway,
    # TrailersReceived: trailers are dropped (the body is re-framed), as for HTTP/1.1; StreamEnded follows.
}


class PriorKnowledge(asyncio.Protocol):
    """A connection on a plain listener with ``[server] h2c = true``: HTTP/2 when its first bytes are the
    HTTP/2 preface (prior knowledge, RFC 9113 section 3.3), else handed to a ClientProtocol as it is.

    The ClientProtocol is made at once, so the connection is counted and its header_timeout runs while
    the first bytes are awaited; only what the connection does with them differs.
    """

    __slots__ = ("w", "http1", "transport", "_seen")

    def __init__(self, worker, client_ip: str | None = None) -> None:
        self.w = worker
        self.http1 = ClientProtocol(worker, b"http", client_ip)
        self.transport = None
        self._seen = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.http1.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        seen = self._seen + data
        n = min(len(seen), len(http2.PREFACE))
        if seen[:n] == http2.PREFACE[:n]:
            if n < len(http2.PREFACE):
                self._seen = seen
                return
            self.http1.handed_over()
            protocol = Http2Protocol(self.w, b"http", self.http1.client_ip)
        else:
            protocol = self.http1
        self.transport.set_protocol(protocol)
        if protocol is not self.http1:
            protocol.connection_made(self.transport)
        protocol.data_received(seen)

    def eof_received(self) -> bool:
        return self.http1.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.http1.connection_lost(exc)

    def pause_writing(self) -> None:
        self.http1.pause_writing()

    def resume_writing(self) -> None:
        self.http1.resume_writing()
