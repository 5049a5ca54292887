"""One client connection as an asyncio Protocol: bytes in, the codec's events, the decided action carried out.

Strategy: ``data_received`` feeds the request parser (http/codec.py: llhttp
or h11 behind one interface, the proxy's rules above both) and handles every
event it can produce at once; a request head goes to ``Decider.decide``
(http/decide.py), and when the request is complete its action is carried
out: an answer the proxy makes itself is written in one piece, a static file
by ``files.FileSender``, a forwarded request by ``forward.Forwarding``. There
is no task and no future per request or per read: waiting is being called
back. Each connection keeps one deadline (what it waits for decides which
timeout applies) and the worker's shared timer (timers.py) checks them.

States, in order:

* IDLE: no byte of the next request yet (keep-alive idle, or a new
  connection): ``keepalive_timeout`` (``header_timeout`` for the first).
* HEAD: a head has begun: ``header_timeout`` -> 408.
* BODY: the head was decided; the body is read (buffered when the request
  may be forwarded, so a slow upload never holds an app server worker,
  dropped otherwise): ``body_timeout`` between reads -> 408.
* RESPOND: the answer is being produced. The parser holds any pipelined
  bytes until the answer is complete (reading pauses past READ_HIGH_WATER).
  While the client does not take bytes, ``send_timeout`` -> closed.
* LINGER: after an error answer that closes the connection, what the client
  still sends is read and dropped for a while (nginx's lingering close), so
  the answer is not destroyed by a reset.
* TUNNEL: the upstream answered 101; both transports belong to a
  tunnel.Tunnel until it ends (the request is logged then).
* CLOSED.

This module is also the edge where a ProxyError becomes a response
(``fail``): the one place exceptions turn into bytes.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter

from .. import metrics
from ..errors import ClientError, ClientTimeout, ProxyError
from ..http import codec, encoding
from ..http.decide import Check, Delayed, Forward, Purge, Reply, Seen, Static, StatusPage, refusal
from ..http.exchange import Exchange
from ..http.placeholders import Vars
from ..http.responses import HTML, error_page, reason as reason_phrase
from .buffers import RequestBody, Spool
from .caching import purge, serve_cached
from .files import serve_static
from .forward import Forwarding
from .sockets import peer_ip, prepare

log = logging.getLogger("proxy")

IDLE, HEAD, BODY, RESPOND, LINGER, TUNNEL, CLOSED = "idle", "head", "body", "respond", "linger", "tunnel", "closed"
_READING = frozenset({IDLE, HEAD, BODY})

READ_HIGH_WATER = 256 * 1024  # pipelined bytes held while an answer is produced, before reading pauses
WRITE_HIGH_WATER = 64 * 1024  # the transport's buffer; past it the producer of the answer waits
LINGER_SECONDS = 2.0  # after an error answer, unread input is drained this long so the answer is not lost to an RST
LINGER_BYTES = 1024 * 1024
DRAIN_IDLE = 1.0  # seconds an idle connection may still bring a request after a stop begins
PIPELINE_TURN = 16  # requests answered in one go before the connection lets the others have the loop


class ClientProtocol(asyncio.Protocol):
    """Serves one client connection (see the module docstring)."""

    __slots__ = ("w", "scheme", "transport", "parser", "facts", "client_ip", "state", "exchange", "action",
                 "body", "responder", "spool", "write_paused", "deadline", "queued", "framing", "keep_alive",
                 "eof", "tunnel", "_spool_limits", "compress", "encoder", "_advancing", "_turn", "_held",
                 "_read_paused", "_dropped")

    takes_sendfile = True  # a FileSender may hand the transport to loop.sendfile (an HTTP/2 stream may not)

    def __init__(self, worker, scheme: bytes = b"http", client_ip: str | None = None) -> None:
        self.w = worker
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.parser = codec.request_parser(worker.config.server.http_engine, worker.config.limits)
        self.facts = None
        self.client_ip = client_ip or ""  # given: the client a PROXY header named (server/proxied.py)
        self.state = IDLE
        self.exchange: Exchange | None = None
        self.action = None
        self.body: RequestBody | None = None
        self.responder = None  # what produces the current answer: a FileSender or a Forwarding
        self.spool = None  # a Forwarding's buffers.Spool while it relays a response
        self._spool_limits: tuple[int, int] | None = None
        self.write_paused = False
        self.deadline = 0.0
        self.queued = 0.0
        self.framing = "none"
        self.keep_alive = True
        self.eof = False  # the client sent FIN
        self.tunnel = None
        self.compress = None  # the route's config.Compress while its answer is produced (http/encoding.py)
        self.encoder = None  # the body's encoder when the answer is compressed
        self._advancing = False
        self._turn = 0
        self._held = 0
        self._read_paused = False
        self._dropped = 0

    def __repr__(self) -> str:
        return f"<ClientProtocol {self.client_ip} {self.state} requests={self.parser.requests}>"

    # --- asyncio.Protocol callbacks ---

    def connection_made(self, transport) -> None:
        self.transport = transport
        prepare(transport, WRITE_HIGH_WATER)
        if not self.client_ip:
            self.client_ip = peer_ip(transport)
        w = self.w
        self.facts = w.conn_facts(transport, self.scheme, self.client_ip)
        w.conns.add(self)
        w.timers.arm(self, DRAIN_IDLE if w.conns.closing else w.config.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception:
            self.crashed()

    def _received(self, data: bytes) -> None:
        state = self.state
        if state is LINGER:
            self._dropped += len(data)
            if self._dropped >= LINGER_BYTES:
                self._close()
            return
        if state is CLOSED:
            return
        self.parser.feed(data)
        if state is RESPOND:
            # The next pipelined request (or bytes after an upgrade request): kept for later.
            self._held += len(data)
            if self._held > READ_HIGH_WATER and not self._read_paused:
                self._read_paused = True
                self.transport.pause_reading()
            return
        if state is BODY:
            self.w.timers.arm(self, self.w.config.limits.body_timeout)
        self._advance()

    def handed_over(self) -> None:
        """The connection turned out to be HTTP/2 before a byte reached this protocol (h2conn.PriorKnowledge):
        it is no longer this one's to count or to time."""
        self.state = CLOSED
        self.w.timers.disarm(self)
        self.w.conns.discard(self)

    def crashed(self) -> None:
        """A bug in the proxy while serving this connection: logged with its traceback, the connection cut
        (the worker and every other connection go on)."""
        log.exception("internal error while serving %s", self.client_ip)
        exchange = self.exchange
        if exchange is not None and not exchange.status:
            exchange.status = 500
        self.abort()

    def eof_received(self) -> bool:
        self.eof = True
        if self.state is LINGER:
            self._close()
            return False
        if self.state is not CLOSED:
            self.parser.feed(b"")
            if self.state is not RESPOND:
                self._advance()
        return True  # keep the write side open: a half-closed client still gets its answer

    def connection_lost(self, exc: Exception | None) -> None:
        w = self.w
        self.state = CLOSED
        w.timers.disarm(self)
        w.conns.discard(self)
        if self.exchange is not None:
            # The client hung up while its request was handled (nginx logs these as 499).
            responder = self.responder
            if responder is not None:
                responder.client_lost()
            exchange = self.exchange
            exchange.status = exchange.status or 499
            self._end_exchange()
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.state is RESPOND or self.state is CLOSED:
            self.w.timers.arm(self, self.w.config.limits.send_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.state is RESPOND:
            self.w.timers.disarm(self)
        spool = self.spool
        if spool is not None:
            spool.pump()
        responder = self.responder
        if responder is not None:
            responder.writable()

    # --- the one deadline ---

    def expired(self) -> None:
        state = self.state
        if state is IDLE:
            self._close()  # keep-alive over, or a connection that never sent a byte
        elif state is HEAD:
            self._refuse(ClientTimeout("request head not received in time"))
        elif state is BODY:
            self._refuse(ClientTimeout("request body not received in time"))
        elif state is LINGER:
            self._close()
        else:  # RESPOND, or closing with bytes queued: the client took nothing for send_timeout
            self.abort()

    # --- reading requests ---

    def _advance(self) -> None:
        """Handle every event the parser has; returns when it needs more bytes or an answer is under way."""
        if self._advancing:
            return  # called back from inside the loop below (an answer completed at once)
        self._advancing = True
        parser = self.parser
        try:
            while self.state in _READING:
                try:
                    event = parser.next_event()
                except ClientError as exc:
                    self._refuse(exc)
                    return
                kind = type(event)
                if kind is codec.RequestHead:
                    self._on_head(event)
                elif kind is codec.Data:
                    if self.body is not None:
                        self.body.append(event.data)
                elif event is codec.EndOfMessage:
                    self._on_end()
                    self._turn += 1
                    if self._turn >= PIPELINE_TURN and self.state is IDLE:
                        # Pipelined requests already read need no wait, so without this a client that sends
                        # thousands at once would keep the loop to itself and stall every other connection.
                        self._turn = 0
                        self.w.loop.call_soon(self._advance)
                        return
                elif event is codec.NEED_DATA:
                    if self.state is IDLE and parser.head_started:
                        self.state = HEAD
                        self.w.timers.arm(self, self.w.config.limits.header_timeout)
                    return
                elif event is codec.CLOSED:
                    self._close()
                    return
                else:  # PAUSED: an answer must complete first
                    return
        finally:
            self._advancing = False

    def _on_head(self, head) -> None:
        w = self.w
        decider = w.decider
        facts = self.facts if decider.trusted is None else decider.request_facts(head.headers, self.facts)
        request_id = w.new_request_id(head.get(b"x-request-id"))
        self.exchange = exchange = Exchange(head, request_id, facts.client_ip)
        w.conns.active += 1
        action = self.action = decider.decide(head, facts, request_id)
        exchange.policy = action.policy
        self.state = BODY
        if not head.has_body:
            return
        kind = type(action)
        while kind is Delayed or kind is Check:
            action = action.then
            kind = type(action)
        if kind is Forward or (kind is Static and type(action.otherwise) is Forward):
            limits = w.config.limits
            self.body = RequestBody(limits.body_buffer_bytes, w.config.server.temp_dir)
        if head.expect_continue:
            self.transport.write(codec.CONTINUE)
        exchange.route = getattr(getattr(action, "route", None), "prefix", "")
        w.timers.arm(self, w.config.limits.body_timeout)

    def _on_end(self) -> None:
        self.state = RESPOND
        self.w.timers.disarm(self)
        self._held = 0
        try:
            self.execute(self.action)
        except ProxyError as exc:
            self.fail(exc)

    def carry_out(self, action) -> None:
        """``execute``, with a ProxyError answered (what a deferred action calls back into)."""
        try:
            self.execute(action)
        except ProxyError as exc:
            self.fail(exc)

    # --- carrying out an action ---

    def execute(self, action) -> None:
        """Carry out ``action`` for the current request (also what a static miss falls back to)."""
        route = getattr(action, "route", None)  # whatever answers for a route is compressed as the route says
        if route is None:
            applied = action.policy  # a Reply of a route's policy (a refusal, a redirect): the route's answer too
            route = None if applied is None else applied.policy.route
        self.compress = None if route is None else route.compress
        kind = type(action)
        if kind is Forward:
            self.exchange.route = action.route.prefix
            if action.cache is not None:
                serve_cached(self, action)  # server/caching.py: the answer may come from the cache
                return
            self.responder = Forwarding(self, action, self.body)
            self.responder.start()
        elif kind is Static:
            self.exchange.route = action.route.prefix
            serve_static(self, action)
        elif kind is Reply:
            self.reply(action)
        elif kind is StatusPage:
            self._status_page(action)
        elif kind is Purge:
            purge(self, action)
        elif kind is Check:
            self.responder = Verifying(self, action)
        elif kind is Delayed:
            self.responder = Waiting(self, action)
        else:
            raise TypeError(f"unknown action {action!r}")

    def reply(self, reply: Reply) -> None:
        exchange = self.exchange
        exchange.handler = reply.handler
        if reply.status >= 500:
            line = exchange.head.request_line if exchange.head is not None else "-"
            log.info("%s %s: %s", exchange.client_ip, line, reply.why)
        headers = list(reply.headers)
        body = reply.body
        if body is None:
            body = self.error_body(reply.status, headers)
        self.respond(reply.status, headers, body, keep_alive=reply.keep_alive)

    def error_body(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The page for an error the proxy makes: the route's error page for it, else the standard one
        (its Content-Type is appended to ``headers``)."""
        applied = self.exchange.policy
        page = applied.policy.page(status) if applied is not None else None
        if page is None:
            headers.append(HTML)
            return error_page(status, self.w.server_name)
        headers.append((b"content-type", page[1]))
        return page[0]

    def placeholder_values(self, seen=None) -> Vars:
        """What the placeholders of this request's header rules stand for (``seen``: of a refused head)."""
        exchange = self.exchange
        head = exchange.head if seen is None else seen
        return Vars(head, head.host or self.facts.local, self.scheme, exchange.client_ip, exchange.request_id,
                    exchange.policy.policy.prefix)

    def _status_page(self, page: StatusPage) -> None:
        w = self.w
        if page.kind == "status":
            document = metrics.status_document(w.merged_metrics(), w.config.server.name)
            if w.acme is not None:
                document["certificates"] = w.acme.status()
            body = metrics.render_json(document)
            kind = b"application/json"
        else:
            body = metrics.render_prometheus(w.merged_metrics())
            if w.acme is not None:
                body += ("\n".join(w.acme.samples()) + "\n").encode()
            kind = b"text/plain; version=0.0.4; charset=utf-8"
        self.respond(200, [(b"content-type", kind), (b"cache-control", b"no-store")], body)

    # --- writing the answer: the interface FileSender and Forwarding use (respond, start_response,
    # write, finish, fail, write_paused; resume_writing calls the responder's ``writable``) ---

    def head_bytes(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None,
                   reason: bytes = b"", keep_alive: bool = True) -> bytes:
        """The serialised head of the answer, the proxy's headers added and the framing chosen."""
        w = self.w
        exchange = self.exchange
        head = exchange.head
        keep_alive = (keep_alive and head is not None and head.keep_alive and not w.conns.closing
                      and self.parser.requests < w.config.limits.keepalive_requests)
        framing = codec.response_framing(
            head.http_version if head is not None else b"1.1", head.method if head is not None else b"GET",
            keep_alive, status, length)
        self.framing = framing.kind
        self.keep_alive = framing.keep_alive
        exchange.status = status
        headers += framing.headers
        added = w.stamp.headers(exchange, date=w.clock.date(), https=self.scheme == b"https",
                                client_ip=exchange.client_ip, now=perf_counter(), present=headers)
        applied = exchange.policy
        if applied is not None and applied.policy.response_rules is not None:
            rules = applied.policy.response_rules
            return codec.response_head(status, reason or reason_phrase(status),
                                       rules.apply(added + headers, self.placeholder_values() if rules.dynamic else None))
        return codec.response_head(status, reason or reason_phrase(status), added + headers)

    def start_response(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None,
                       reason: bytes = b"", spool: tuple[int, int] | None = None) -> None:
        """Send the head of an answer whose body follows through ``write`` and ends with ``finish``.

        ``spool`` (memory limit, file limit): queue what the client cannot take yet (buffers.Spool),
        so a fast producer (an upstream) is read at its own pace; without it, the producer writes only
        while ``write_paused`` is false (a FileSender).
        """
        self._spool_limits = spool  # the Spool itself is made only when the client falls behind
        if self.compress is not None:
            headers, length, self.encoder = encoding.begin(self.compress, self.exchange.head, status, headers, length)
        self.transport.write(self.head_bytes(status, headers, length, reason))

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *,
                length: int | None = None, keep_alive: bool = True) -> None:
        """A complete answer in one write (one send(2)), then the next request. ``length``: the
        Content-Length of a body that is not sent (HEAD, 304), when it differs from ``len(body)``."""
        if length is None:
            length = len(body)
        if self.compress is not None:
            headers, length, body = encoding.complete(self.compress, self.exchange.head, status, headers, length,
                                                      body)
        payload = self.head_bytes(status, headers, length, keep_alive=keep_alive)
        if self.framing != "none" and body:
            payload += body
            self.exchange.body_bytes += len(body)
        self.transport.write(payload)
        self.finish()

    def write(self, data) -> None:
        """Bytes of the body, compressed when the answer is (and flushed: a streamed body stays live),
        framed (chunked when the length was not known)."""
        if self.encoder is not None:
            data = self.encoded(data)
        if self.framing == "chunked":
            data = codec.chunk(data)
        elif self.framing == "none":
            return
        self.write_raw(data)

    def finish(self) -> None:
        """The producer handed over the whole body: end it, then complete once the last byte is queued."""
        if self.encoder is not None:
            self.write(self.encoded_tail())
        if self.framing == "chunked":
            self.write_raw(codec.LAST_CHUNK)
        spool = self.spool
        if spool is not None and spool.pending:
            spool.when_flushed(self._complete)
        else:
            self._complete()

    def encoded(self, data) -> bytes:
        """``data`` through the answer's encoder, flushed so that a streamed body stays live (both protocols'
        ``write``); the exchange counts the bytes that go out, the producer having counted what it handed over."""
        encoder = self.encoder
        coded = encoder.feed(data) + encoder.flush()
        self.exchange.body_bytes += len(coded) - len(data)
        return coded

    def encoded_tail(self) -> bytes:
        """The end of the compressed body (both protocols' ``finish``); the encoder is done with."""
        encoder, self.encoder = self.encoder, None
        tail = encoder.finish()
        self.exchange.body_bytes += len(tail)
        return tail

    def write_raw(self, data: bytes) -> None:
        spool = self.spool
        if spool is None:
            limits = self._spool_limits
            if not self.write_paused or limits is None:
                self.transport.write(data)
                return
            spool = self.spool = Spool(self, limits[0], limits[1], self.w.config.server.temp_dir)
        spool.push(data)

    def _complete(self) -> None:
        if self.state is not RESPOND:
            return
        self._end_exchange()
        if not self.keep_alive:
            self.state = CLOSED
            self.transport.close()  # after the buffered bytes are sent
            if self.transport.get_write_buffer_size():
                self.w.timers.arm(self, self.w.config.limits.send_timeout)
            return
        self.state = IDLE
        self.parser.start_next_cycle()
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        w = self.w
        w.timers.arm(self, DRAIN_IDLE if w.conns.closing else w.config.limits.keepalive_timeout)
        self._advance()

    def _end_exchange(self) -> None:
        """Log the request and forget it."""
        self.w.conns.active -= 1
        self._log_exchange()

    def _log_exchange(self) -> None:
        exchange = self.exchange
        self.exchange = None
        self.action = None
        self.responder = None
        self.compress = self.encoder = None
        if self.body is not None:
            self.body.close()
            self.body = None
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        self._spool_limits = None
        applied = exchange.policy
        if applied is not None and applied.hold is not None:
            applied.release()  # conn_limit: this request no longer counts
        self.w.log.write(exchange, exchange.client_ip)

    # --- errors: the edge ---

    def fail(self, exc: ProxyError) -> None:
        """Answer an error raised while a request was handled; the connection stays open when it can."""
        exchange = self.exchange
        if exchange is None or self.state is CLOSED:
            return
        if exchange.status:  # the answer had started: all that can be done is to cut it short
            log.info("%s %s: %s (answer cut short)", exchange.client_ip,
                     exchange.head.request_line if exchange.head else "-", exc)
            self.abort()
            return
        self.responder = None
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        self._spool_limits = None
        keep_alive = not isinstance(exc, ClientError) or exc.keep_alive
        self.reply(Reply(exc.status, str(exc), tuple(exc.headers), keep_alive=keep_alive))

    def _refuse(self, exc: ClientError) -> None:
        """The request itself is refused (malformed, too large, too slow): answer, then close."""
        w = self.w
        seen = None
        if self.exchange is None:
            head = getattr(exc, "head", None)
            facts = self.facts
            if head is not None:
                seen = Seen.of(head)
                if w.decider.trusted is not None:
                    facts = w.decider.request_facts(list(head.fields), facts)
            self.exchange = Exchange(head, w.new_request_id(None), facts.client_ip)
            if seen is not None:
                self.exchange.policy = w.decider.pages_for(seen, facts)
            w.conns.active += 1
        exchange = self.exchange
        exchange.handler = "local"
        if exc.status >= 500:
            log.info("%s %s: %s", exchange.client_ip, exchange.head.request_line if exchange.head else "-", exc)
        reply = refusal(exc)
        headers = list(reply.headers)
        body = self.error_body(reply.status, headers)
        self.framing = "length"
        head = exchange.head
        headers += [(b"content-length", b"%d" % len(body)), (b"connection", b"close")]
        added = w.stamp.headers(exchange, date=w.clock.date(), https=self.scheme == b"https",
                                client_ip=exchange.client_ip, now=perf_counter(), present=headers)
        exchange.status = reply.status
        headers = added + headers
        applied = exchange.policy
        if applied is not None and applied.policy.response_rules is not None:
            rules = applied.policy.response_rules
            headers = rules.apply(headers, self.placeholder_values(seen) if rules.dynamic else None)
        payload = codec.response_head(reply.status, reason_phrase(reply.status), headers)
        if head is None or head.method != b"HEAD":
            payload += body
            exchange.body_bytes = len(body)
        self.transport.write(payload)
        self.state = RESPOND  # so _end_exchange and the counters see one finished request
        self._end_exchange()
        self._linger()

    def _linger(self) -> None:
        """Half-close, then read and drop what the client still sends (nginx's lingering close)."""
        self.state = LINGER
        self._dropped = 0
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        if self.transport.can_write_eof():
            try:
                self.transport.write_eof()
            except OSError:
                pass
        self.w.timers.arm(self, LINGER_SECONDS)

    # --- closing ---

    def _close(self) -> None:
        self.state = CLOSED
        self.w.timers.disarm(self)
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def stopping(self, linger: float) -> None:
        """The worker is stopping: an idle connection is closed after ``linger`` seconds; a busy one
        finishes its request and is answered with Connection: close."""
        if self.state is IDLE and not self.parser.head_started:
            self.w.timers.arm(self, linger)
        elif self.state is TUNNEL:
            self.tunnel.finish("shutdown")

    # --- a tunnel (tunnel.start_tunnel) ---

    def became_tunnel(self, tunnel) -> None:
        """The transport now belongs to ``tunnel``; an open tunnel is not a request in flight (a graceful
        stop closes it at once), so it no longer counts as active."""
        self.state = TUNNEL
        self.tunnel = tunnel
        self.responder = None
        self.w.timers.disarm(self)
        self.w.conns.active -= 1

    def tunnel_ended(self) -> None:
        if self.exchange is not None:
            self._log_exchange()

    def tunnel_lost(self) -> None:
        self.state = CLOSED
        self.w.conns.discard(self)

    @property
    def busy(self) -> bool:
        return self.exchange is not None



class Verifying:
    """Carries out a ``Check``: the password is checked in a thread (bcrypt takes milliseconds by design,
    and releases the GIL), then the request goes on, or gets its 401 and a line in the error log."""

    __slots__ = ("client", "action", "future")

    def __init__(self, client: ClientProtocol, action: Check) -> None:
        self.client = client
        self.action = action
        self.future = client.w.loop.run_in_executor(None, action.credentials.verify)
        self.future.add_done_callback(self._checked)

    def __repr__(self) -> str:
        return f"<Verifying {self.action.credentials!r}>"

    def _checked(self, future) -> None:
        client = self.client
        if future.cancelled() or client.responder is not self:
            return  # the client went away meanwhile
        client.responder = None
        credentials = self.action.credentials
        try:
            good = future.result()
        except Exception:
            client.crashed()
            return
        try:
            if good:
                credentials.auth.remember(credentials)
                client.carry_out(self.action.then)
            else:
                exchange = client.exchange
                credentials.auth.failed(credentials.user, exchange.client_ip, exchange.head.request_line)
                client.carry_out(self.action.otherwise)
        except Exception:
            client.crashed()

    def writable(self) -> None:
        pass

    def client_lost(self) -> None:
        self.future.cancel()


class Waiting:
    """Carries out a ``Delayed``: the request waits out its rate limit's delay, then goes on."""

    __slots__ = ("client", "action", "handle")

    def __init__(self, client: ClientProtocol, action: Delayed) -> None:
        self.client = client
        self.action = action
        self.handle = client.w.loop.call_later(action.seconds, self._go)

    def __repr__(self) -> str:
        return f"<Waiting {self.action.seconds:.3g}s>"

    def _go(self) -> None:
        client = self.client
        if client.responder is not self:
            return
        client.responder = None
        try:
            client.carry_out(self.action.then)
        except Exception:
            client.crashed()

    def writable(self) -> None:
        pass

    def client_lost(self) -> None:
        self.handle.cancel()
