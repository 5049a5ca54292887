"""Forward one buffered request to an upstream and relay the response back, by callbacks alone.

Order of events, and why:
1. The request body is already buffered (client.py), so a slow upload never
   holds an app server worker.
2. A server is picked (the group's balancing policy); when every server is
   at ``max_conns`` the request waits in the group's queue (nginx Plus
   ``queue``) for up to ``queue_timeout``, never failing at once. A pooled
   connection is reused or a new one opened (upstream/pool.py).
3. Head and body are written; the response head is awaited (``read_timeout``).
4. The response streams back through the client's Spool: written straight
   to the client when its socket has room, queued (memory, then temp file)
   when not, so the upstream is read at its own pace and returned to the
   pool as soon as its response ends, whatever the client's speed. When the
   spool is full too, reading from the upstream pauses until it drains.

A stale pooled connection (the server closed it while the request was on the
way) gives no response bytes at all; an idempotent request is then sent again
on a new connection, so the client never sees a 502 for it. Other failures
are retried on another server as ``next_upstream`` allows, and only when no
byte of the response has reached the client.
"""

from __future__ import annotations

from time import perf_counter

from ..errors import NoUpstreamAvailable, UpstreamError, UpstreamTimeout, connection_error
from ..http import codec
from ..http.headers import client_response_headers, upstream_request_headers

# RFC 9110 section 9.2.2. A request with one of these methods may be sent twice;
# a POST or PATCH never is.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Upstream statuses that nginx's proxy_next_upstream can name.
RETRY_STATUSES = {502: "http_502", 503: "http_503", 504: "http_504"}

PICKING, QUEUED, CONNECTING, SENDING, WAITING, RELAYING, DONE = (
    "picking", "queued", "connecting", "sending", "waiting", "relaying", "done")


class Forwarding:
    """One request to one upstream group: its tries, its connection, and the relay of the response."""

    __slots__ = ("client", "action", "body", "exchange", "head", "group", "upstream", "headers", "tried",
                 "last_error", "peer", "conn", "reused", "began", "received", "state", "retried_stale",
                 "chunks", "deadline", "queued", "cancelled", "more", "tunnel")

    def __init__(self, client, action, body, head=None) -> None:
        self.client = client
        self.action = action
        self.body = body
        self.exchange = client.exchange
        # What is sent: the client's request, or the one a cache sends for it (a GET for a HEAD, its own
        # validators instead of the client's: server/caching.py).
        self.head = head if head is not None else self.exchange.head
        self.group = client.w.groups[action.group]
        self.upstream = self.group.config
        self.headers: list = []
        self.tried: set = set()
        self.last_error: UpstreamError | None = None
        self.peer = None
        self.conn = None
        self.reused = False
        self.began = 0.0
        self.received = False
        self.state = PICKING
        self.retried_stale = False
        self.chunks = None  # the rest of a spilled request body, written as the upstream takes it
        self.deadline = 0.0  # while queued: queue_timeout
        self.queued = 0.0
        self.cancelled = False  # the client went away
        self.more = False
        self.tunnel = None

    def __repr__(self) -> str:
        peer = self.peer.address if self.peer is not None else "-"
        return f"<Forwarding {self.head.method.decode()} {self.group.name} {peer} {self.state}>"

    # --- picking a server ---

    def start(self) -> None:
        client = self.client
        w = client.w
        head = self.head
        body = self.body
        exchange = self.exchange
        exchange.handler = "proxy"
        action = self.action
        upgrade = action.upgrade
        headers = upstream_request_headers(
            head.headers, host=action.host, client_ip=exchange.client_ip, scheme=client.scheme,
            request_id=exchange.request_id, via=w.via,
            body_length=body.size if body is not None else (0 if head.has_body else None),
            upgrade=upgrade.protocol if upgrade is not None else None, named=head.named)
        applied = action.policy
        if applied is not None and applied.policy.request_rules is not None:
            rules = applied.policy.request_rules  # the route's request_headers (and Authorization, once checked)
            headers = rules.apply(headers, client.placeholder_values() if rules.dynamic else None)
        self.headers = headers
        self._pick()

    def _pick(self) -> None:
        group = self.group
        peer = group.pick(self.exchange.client_ip.encode(), self.tried)
        if peer is None:
            if self.last_error is None and group.only_busy(self.tried):
                self.state = QUEUED
                group.enqueue(self)
                self.client.w.timers.arm(self, self.upstream.queue_timeout)
                return
            self._give_up(self.last_error or NoUpstreamAvailable(
                f"no server of upstream {group.name} is available", retry_after=group.retry_after()))
            return
        self.tried.add(peer)
        self.peer = peer
        peer.requests += 1
        peer.in_flight += 1
        self.exchange.upstream_addr.append(peer.name)
        self.more = len(self.tried) < self.upstream.tries and group.has_other(self.tried)
        self._acquire()

    def _acquire(self) -> None:
        self.began = perf_counter()
        self.received = False
        self.state = CONNECTING
        self.peer.pool.acquire(self, settle=self.head.method not in IDEMPOTENT)

    def dequeued(self) -> None:
        """A server of the group finished a request: try again to pick one (called by the group)."""
        if self.state is QUEUED:
            self.client.w.timers.disarm(self)
            self.state = PICKING
            self._pick()

    def expired(self) -> None:
        """queue_timeout passed with every server still busy."""
        if self.state is QUEUED:
            self.group.dequeue(self)
            self._give_up(NoUpstreamAvailable(
                f"every server of upstream {self.group.name} stayed at max_conns for "
                f"{self.upstream.queue_timeout:g}s (queue_timeout)", retry_after=1))

    # --- the pool's callbacks ---

    def connected(self, conn, reused: bool) -> None:
        if self.cancelled:
            conn.pool.release(conn)
            return
        self.conn = conn
        conn.owner = self
        self.reused = reused
        exchange = self.exchange
        exchange.reused = reused
        exchange.connect_time = 0.0 if reused else perf_counter() - self.began
        head = self.head
        action = self.action
        conn.parser.expect(head.method, action.upgrade is not None)
        target = action.target
        payload = codec.request_head(head.method, head.target if target is None else target, self.headers)
        body = self.body
        timers = self.client.w.timers
        if body is None or body.size == 0:
            conn.transport.write(payload)
        elif body.in_memory:
            conn.transport.write(payload + body.joined())
        else:
            conn.transport.write(payload)
            self.chunks = body.chunks()
            self.state = SENDING
            timers.arm(conn, self.upstream.send_timeout)
            self.upstream_writable()
            return
        self.state = WAITING
        timers.arm(conn, self.upstream.read_timeout)

    def connect_failed(self, error: UpstreamError) -> None:
        self._failed(error, sent=False)

    # --- the upstream connection's callbacks ---

    def upstream_writable(self) -> None:
        """Write more of a spilled body while the upstream's socket has room."""
        chunks = self.chunks
        if chunks is None or self.state is not SENDING:
            return
        conn = self.conn
        timers = self.client.w.timers
        for chunk in chunks:
            conn.transport.write(chunk)
            if conn.write_paused:
                timers.arm(conn, self.upstream.send_timeout)
                return
        self.chunks = None
        self.state = WAITING
        timers.arm(conn, self.upstream.read_timeout)

    def upstream_data(self, data: bytes) -> None:
        self.received = True
        conn = self.conn
        conn.parser.feed(data)
        if self.state is not SENDING:
            self.client.w.timers.arm(conn, self.upstream.read_timeout)
        self._events()

    def upstream_eof(self) -> None:
        self.conn.parser.feed(b"")
        self._events()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.state is DONE:
            return
        self.conn = None
        self._broken(connection_error(exc, self.peer.address))

    def upstream_timeout(self) -> None:
        address = self.peer.address
        if self.state is SENDING:
            error = UpstreamTimeout(f"{address} did not take the request in time")
        elif self.state is RELAYING:
            error = UpstreamTimeout(f"{address} stalled mid-response")
        else:
            error = UpstreamTimeout(f"{address} did not answer in time")
        self._broken(error)

    def _events(self) -> None:
        """Handle what the response parser has, until it needs bytes or the client needs to catch up."""
        conn = self.conn
        client = self.client
        while conn is not None and self.state is not DONE:
            try:
                event = conn.parser.next_event()
            except UpstreamError as exc:
                self._broken(exc)
                return
            kind = type(event)
            if kind is codec.Data:
                client.write(event.data)
                self.exchange.body_bytes += len(event.data)
                spool = client.spool
                if spool is not None and spool.full:
                    conn.transport.pause_reading()
                    spool.on_room = self._room
                    return
            elif kind is codec.ResponseHead:
                if not self._on_response(event):
                    return
            elif event is codec.EndOfMessage:
                self._on_end()
                return
            elif kind is codec.Informational:
                if event.status == 101:
                    self._switch(event)
                    return
                # 100 Continue, 103 Early Hints: the body was sent already; the final answer follows.
            else:  # NEED_DATA
                return

    def _room(self) -> None:
        """The client caught up: read from the upstream again."""
        conn = self.conn
        if conn is not None and self.state is RELAYING:
            conn.transport.resume_reading()
            self._events()

    def _on_response(self, response) -> bool:
        """The response head arrived; False when it is retried on another server instead."""
        exchange = self.exchange
        exchange.header_time = perf_counter() - self.began
        exchange.upstream_status.append(str(response.status))
        condition = RETRY_STATUSES.get(response.status)
        if self.more and condition in self.upstream.next_upstream and self.head.method in IDEMPOTENT:
            conn, self.conn = self.conn, None
            conn.pool.close_conn(conn)
            self._retry(UpstreamError(f"{self.peer.address} answered {response.status}"), condition, sent=True)
            return False
        client = self.client
        applied = self.action.policy
        if applied is not None and applied.policy.intercept:
            page = applied.policy.intercepts(response.status)
            if page is not None:
                self._intercept(response.status, page)
                return False
        w = client.w
        self.state = RELAYING
        headers = client_response_headers(response.headers, via=w.via, extra=[], named=response.named)
        client.start_response(response.status, headers, response.content_length, reason=response.reason,
                              spool=(self.upstream.buffer_bytes, self.upstream.max_temp_file_bytes))
        return True

    def _on_end(self) -> None:
        exchange = self.exchange
        exchange.response_time = perf_counter() - self.began
        conn, self.conn = self.conn, None
        self.client.w.timers.disarm(conn)
        if conn.transport is not None and conn.state == "active":
            conn.transport.resume_reading()
        conn.pool.release(conn)
        self.state = DONE
        self.group.succeeded(self.peer)
        self.group.finished(self.peer)
        self.client.finish()

    def _intercept(self, status: int, page: tuple[bytes, bytes]) -> None:
        """The route's error page instead of the upstream's error response (nginx proxy_intercept_errors).
        The upstream's body is not read: its connection is closed rather than drained."""
        exchange = self.exchange
        exchange.response_time = perf_counter() - self.began
        conn, self.conn = self.conn, None
        self.client.w.timers.disarm(conn)
        conn.pool.close_conn(conn)
        self.state = DONE
        self.group.succeeded(self.peer)
        self.group.finished(self.peer)
        self.client.respond(status, [(b"content-type", page[1])], page[0])

    def _switch(self, response) -> None:
        """101: both connections become a tunnel of raw bytes (server/tunnel.py)."""
        from .tunnel import start_tunnel

        conn, self.conn = self.conn, None
        self.client.w.timers.disarm(conn)
        self.state = DONE
        self.exchange.response_time = perf_counter() - self.began
        conn.pool.detach(conn)
        start_tunnel(self.client, conn, response, self.upstream, on_end=self._tunnel_ended)

    def _tunnel_ended(self) -> None:
        self.group.finished(self.peer)

    # --- failures ---

    def _broken(self, error: UpstreamError) -> None:
        """The exchange on this connection failed (protocol error, timeout, connection lost)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.pool.close_conn(conn)
        if self.state is DONE:
            return
        if self.state is RELAYING:  # the client has part of the answer: it can only be cut short
            self.state = DONE
            self.group.failed(self.peer, str(error))
            self.group.finished(self.peer)
            self.client.fail(error)
            return
        if self.reused and not self.received and not isinstance(error, UpstreamTimeout):
            # The server closed a kept-alive connection as the request went out: a new connection, same server.
            if not self.retried_stale and self.head.method in IDEMPOTENT:
                self.retried_stale = True
                self._acquire()
                return
            error = UpstreamError(f"{self.peer.address} closed a kept-alive connection")
        self._failed(error, sent=True)

    def _failed(self, error: UpstreamError, sent: bool) -> None:
        """A try that failed with ``error``: logged as the status nginx would log, classed as next_upstream does."""
        timed_out = isinstance(error, UpstreamTimeout)
        self.exchange.upstream_status.append("504" if timed_out else "502")
        self._retry(error, "timeout" if timed_out else "error", sent)

    def _retry(self, error: UpstreamError, condition: str, sent: bool) -> None:
        self.last_error = error
        group = self.group
        group.failed(self.peer, str(error))
        group.finished(self.peer)
        if self.cancelled:
            self.state = DONE
            return
        may_repeat = not sent or self.head.method in IDEMPOTENT
        if len(self.tried) >= self.upstream.tries or condition not in self.upstream.next_upstream or not may_repeat:
            self._give_up(error)
            return
        self.state = PICKING
        self._pick()

    def _give_up(self, error) -> None:
        self.state = DONE
        self.client.fail(error)

    def crashed(self) -> None:
        """A bug while relaying: both connections are cut, the traceback is logged by the client's side."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.pool.close_conn(conn)
        if self.state is not DONE:
            self.state = DONE
            self.group.finished(self.peer)
        self.client.crashed()

    # --- the client's side ---

    def writable(self) -> None:
        """The client's socket has room again (the spool does the work)."""

    def detached(self) -> None:
        """The client went away but the response is still wanted (a cache fills from it): its spool is
        gone, so read on at the upstream's pace."""
        self._room()

    def client_lost(self) -> None:
        """The client went away: stop this request (the upstream connection is closed, nginx's 499)."""
        self.cancelled = True
        state = self.state
        self.state = DONE
        if state is QUEUED:
            self.group.dequeue(self)
            self.client.w.timers.disarm(self)
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.pool.close_conn(conn)
        if state in (CONNECTING, SENDING, WAITING, RELAYING):
            self.group.finished(self.peer)
