"""One task per client connection: read a request, answer it, repeat while keep-alive holds.

The decisions are made by the sans-IO modules (inbound, routing, static,
headers); this module waits for bytes, applies the timeouts, and is the one
place where a ProxyError becomes a response (the "edge" of STYLE.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from time import perf_counter  # durations: loop.time() is cached per loop turn (to the ms in uvloop)

import h11

from .. import metrics
from ..accesslog import AccessRecord
from ..errors import ALLOW_GET_HEAD, ClientError, ClientTimeout, ProxyError
from ..http import static
from ..http import upgrade
from ..http.inbound import ClientConnection, RequestHead
from ..http.responses import error_bytes, error_page, reason as reason_phrase
from ..tls import https_location
from .buffers import RequestBody
from .channel import Channel
from .forward import forward
from .sendfile import send_file

log = logging.getLogger("proxy")

DRAIN_IDLE = 1.0  # seconds an idle connection may still bring a request after a stop begins
LINGER_SECONDS = 2.0  # after an error answer, unread input is drained this long so the answer is not lost to an RST
LINGER_BYTES = 1024 * 1024
PIPELINE_TURN = 16  # requests on one connection before it lets the others have the loop


class Exchange:
    """The mutable facts about one request while it is handled; frozen into an AccessRecord at the end."""

    __slots__ = ("head", "started", "wall", "request_id", "status", "body_bytes", "route", "handler",
                 "upstream_addr", "upstream_status", "connect_time", "header_time", "response_time", "reused",
                 "tunnel")

    def __init__(self, head: RequestHead | None, started: float, request_id: bytes) -> None:
        self.head = head
        self.started = started
        self.wall = time.time()
        self.request_id = request_id
        self.status = 0
        self.body_bytes = 0
        self.route = ""
        self.handler = "local"
        self.upstream_addr: list[str] = []
        self.upstream_status: list[str] = []
        self.connect_time: float | None = None
        self.header_time: float | None = None
        self.response_time: float | None = None
        self.reused: bool | None = None
        self.tunnel = None  # a server.tunnel.Tunnel once the request was upgraded (101)

    def record(self, remote_addr: str, now: float) -> AccessRecord:
        head = self.head
        return AccessRecord(
            remote_addr=remote_addr,
            time=self.wall,
            request=head.request_line if head else "-",
            status=self.status,
            body_bytes_sent=self.body_bytes,
            referer=_text(head.get(b"referer")) if head else "",
            user_agent=_text(head.get(b"user-agent")) if head else "",
            request_time=now - self.started,
            request_id=self.request_id.decode(),
            route=self.route,
            handler=self.handler,
            upstream_addr=", ".join(self.upstream_addr),
            upstream_status=", ".join(self.upstream_status),
            upstream_connect_time=self.connect_time,
            upstream_header_time=self.header_time,
            upstream_response_time=self.response_time,
            **(_tunnel_fields(self.tunnel) if self.tunnel is not None else {}),
        )

    def server_timing(self, now: float) -> bytes:
        """Server-Timing entries for the proxy's part (RFC-less but W3C-specified header)."""
        parts = [b'proxy;dur=%.3f;desc="%s %s"' % ((now - self.started) * 1000, self.handler.encode(),
                                                    self.route.encode())]
        if self.connect_time is not None:
            parts.append(b'upstream-connect;dur=%.3f;desc="%s"' % (
                self.connect_time * 1000, b"reused" if self.reused else b"new"))
        if self.header_time is not None:
            parts.append(b"upstream-ttfb;dur=%.3f" % (self.header_time * 1000))
        return b", ".join(parts)


def _tunnel_fields(tunnel) -> dict:
    return {"tunnel": tunnel.protocol.decode("latin-1"), "tunnel_bytes_to_upstream": tunnel.bytes["to_upstream"],
            "tunnel_bytes_to_client": tunnel.bytes["to_client"], "tunnel_end": tunnel.ended_by}


def _text(value: bytes | None) -> str:
    return value.decode("latin-1") if value else ""


class ClientHandler:
    """Serves one client connection. ``busy`` is true while a request is in progress."""

    def __init__(self, runtime, channel: Channel, scheme: bytes = b"http") -> None:
        self.runtime = runtime
        self.channel = channel
        self.scheme = scheme
        self.conn = ClientConnection(runtime.config.limits)
        self.client_ip = channel.peer[0] if channel.peer else ""
        self.busy = False
        self.task: asyncio.Task | None = None
        self.client_gone = False
        self.forwarding = False
        channel.on_lost = self._lost

    def __repr__(self) -> str:
        return f"<ClientHandler {self.client_ip} busy={self.busy} {self.conn!r}>"

    def close_if_idle(self) -> None:
        """Close unless a request has begun (used while stopping)."""
        if not self.busy and not self.channel.has_data and not self.conn.head_started:
            self.channel.close()

    def _lost(self) -> None:
        # The client hung up. While we wait on an upstream nothing else would notice,
        # so stop the exchange (nginx logs these as 499).
        self.client_gone = True
        if self.forwarding and self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        try:
            await self._serve()
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading: nothing left to tell it
        except asyncio.CancelledError:
            if not self.client_gone:
                raise
        except Exception:
            log.exception("internal error while serving %s", self.client_ip)
            self.channel.abort()
        finally:
            await self.channel.close_and_wait(self.runtime.config.limits.send_timeout)

    async def _serve(self) -> None:
        runtime = self.runtime
        limits = runtime.config.limits
        loop = runtime.loop
        deadline = loop.time() + limits.header_timeout
        while True:
            self.busy = False
            try:
                head = await self._read_head(deadline)
            except ClientError as exc:
                self._answer_error(exc, Exchange(None, perf_counter(), runtime.new_request_id(None)))
                await self._linger()
                return
            if head is None:
                return
            self.busy = True
            exchange = Exchange(head, perf_counter(), runtime.new_request_id(head.get(b"x-request-id")))
            try:
                await self._handle(head, exchange)
            except ProxyError as exc:
                if exchange.status:  # the answer had started: all we can do is cut it short
                    self._log(exchange)
                    self.channel.abort()
                    return
                if not self._answer_error(exc, exchange):
                    await self._linger()
                    return
            except asyncio.CancelledError:
                if self.client_gone:
                    exchange.status = exchange.status or 499
                    self._log(exchange)
                raise
            except (ConnectionError, TimeoutError):
                exchange.status = exchange.status or 499
                self._log(exchange)
                raise
            else:
                self._log(exchange)
            if not self.conn.can_keep_alive:
                self.channel.write_eof()
                return
            self.conn.start_next_cycle()
            if self.conn.requests % PIPELINE_TURN == 0:
                # Pipelined requests already read need no wait, so without this a client that sends
                # thousands at once would keep the loop to itself and stall every other connection.
                await asyncio.sleep(0)
            # Stopping began after this answer promised keep-alive: the client may reuse the
            # connection right away, so it gets a short while to do so (and Connection: close).
            idle = DRAIN_IDLE if runtime.closing else limits.keepalive_timeout
            deadline = loop.time() + idle

    def _log(self, exchange: Exchange) -> None:
        self.runtime.log_access(exchange.record(self.client_ip, perf_counter()))

    # --- reading ---

    async def _read_head(self, deadline: float) -> RequestHead | None:
        """The next request head, or None when the client closed or stayed idle too long."""
        conn = self.conn
        loop = self.runtime.loop
        waiting_idle = conn.requests > 0 and not conn.head_started
        while True:
            event = conn.next_event()
            if type(event) is RequestHead:
                return event
            if event is h11.NEED_DATA:
                remaining = deadline - loop.time()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    data = await self.channel.recv(remaining)
                except TimeoutError:
                    if conn.head_started:
                        raise ClientTimeout("request head not received in time") from None
                    return None
                if self.runtime.closing and not conn.head_started and not data:
                    return None
                conn.receive_data(data)
                if waiting_idle and conn.head_started:
                    waiting_idle = False
                    deadline = loop.time() + self.runtime.config.limits.header_timeout
                continue
            return None  # ConnectionClosed

    async def _read_body(self, head: RequestHead) -> RequestBody | None:
        """The whole request body, buffered (memory, then a temp file), or None when there is none."""
        conn = self.conn
        limits = self.runtime.config.limits
        if not head.has_body:
            event = conn.next_event()
            assert type(event) is h11.EndOfMessage, event
            return None
        if conn.h11.they_are_waiting_for_100_continue:
            self.channel.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = RequestBody(limits.body_buffer_bytes, self.runtime.config.server.temp_dir)
        try:
            while True:
                event = conn.next_event()
                kind = type(event)
                if kind is h11.Data:
                    body.append(event.data)
                elif kind is h11.EndOfMessage:
                    return body
                elif event is h11.NEED_DATA:
                    try:
                        conn.receive_data(await self.channel.recv(limits.body_timeout))
                    except TimeoutError:
                        raise ClientTimeout("request body not received in time") from None
                else:
                    raise ClientError("unexpected event while reading the body")
        except BaseException:
            body.close()
            raise

    # --- dispatch ---

    async def _handle(self, head: RequestHead, exchange: Exchange) -> None:
        runtime = self.runtime
        body = await self._read_body(head)
        try:
            if head.path == "*":  # OPTIONS * asks about the server itself (RFC 9110 9.3.7)
                self.respond(exchange, 200, b"", [(b"allow", b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")])
                return
            status = runtime.config.status
            if status is not None and head.path in (status.path, status.metrics_path):
                self._serve_status(head, exchange, status)
                return
            tls = runtime.tls
            if tls is not None and tls.settings.redirect_http and self.scheme == b"http":
                # [tls] redirect_http: 308 keeps the method and body, unlike 301/302 (RFC 9110 15.4.9).
                exchange.handler = "redirect"
                location = https_location(head.host or runtime.local_host(self.channel), head.target,
                                          runtime.edge.https_port or 443)
                self.respond(exchange, 308, error_page(308, runtime.server_name),
                             [(b"location", location), (b"content-type", b"text/html; charset=utf-8")])
                return
            route = runtime.router.match(head.path)
            if route is None:
                raise ClientError("no route", 404, keep_alive=True)
            exchange.route = route.prefix
            if route.static is not None:
                if head.method in (b"GET", b"HEAD"):
                    try:
                        await self._serve_static(route, head, exchange)
                        return
                    except ClientError as exc:
                        if exc.status != 404 or not route.upstream:
                            raise
                elif not route.upstream:
                    raise ClientError("method not allowed", 405, ALLOW_GET_HEAD, keep_alive=True)
            group = runtime.groups[route.upstream]
            wanted = upgrade.decide(head.headers, head.http_version, group.config.upgrade)  # 400 if refused
            self.forwarding = True
            try:
                await forward(self, head, body, group, exchange, wanted)
            finally:
                self.forwarding = False
        finally:
            if body is not None:
                body.close()

    def _serve_status(self, head: RequestHead, exchange: Exchange, status) -> None:
        """The proxy's own pages; 404 for clients outside ``[status] allow`` so they learn nothing."""
        if not status.allows(self.client_ip):
            raise ClientError("status page not allowed for this client", 404, keep_alive=True)
        if head.method not in (b"GET", b"HEAD"):
            raise ClientError("method not allowed", 405, ALLOW_GET_HEAD, keep_alive=True)
        if head.path == status.path:
            document = metrics.status_document(self.runtime.merged_metrics(), self.runtime.config.server.name)
            body = metrics.render_json(document)
            kind = b"application/json"
        else:
            body = metrics.render_prometheus(self.runtime.merged_metrics())
            kind = b"text/plain; version=0.0.4; charset=utf-8"
        self.respond(exchange, 200, body, [(b"content-type", kind), (b"cache-control", b"no-store")])

    async def _serve_static(self, route, head: RequestHead, exchange: Exchange) -> None:
        exchange.handler = "static"
        runtime = self.runtime
        files = runtime.files
        found = files.lookup(route, head.path, head.query, runtime.loop.time())
        if type(found) is static.Redirect:
            self.respond(exchange, 301, error_page(301, self.runtime.server_name),
                         [(b"location", found.location), (b"content-type", b"text/html; charset=utf-8")])
            return
        if type(found) is static.Listing:
            page = static.listing_page(found.folder, found.url_path, route.dotfiles)
            self.respond(exchange, 200, page, [(b"content-type", b"text/html; charset=utf-8")])
            return
        variant = found.choose(head.get(b"accept-encoding"))
        plan = static.plan(variant, head.method, head.headers)
        fd = None
        try:
            if plan.body is None:  # the bytes are not cached: open the file
                try:
                    fd = os.open(variant.path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    files.forget(route, head.path)
                    raise ClientError("no such file", 404, keep_alive=True) from None
                except OSError:
                    files.forget(route, head.path)
                    raise ClientError("cannot open file", 403, keep_alive=True) from None
                info = os.fstat(fd)
                if not variant.matches(info):
                    # Changed since it was looked up: the next request looks it up again, and
                    # this one is answered for the file actually opened.
                    files.forget(route, head.path)
                    variant = variant.restated(info)
                    plan = static.plan(variant, head.method, head.headers)
            if plan.status == 412:
                raise ClientError("precondition failed", 412, keep_alive=True)
            if plan.status == 416:
                self.respond(exchange, 416, error_page(416, self.runtime.server_name),
                             [(b"content-type", b"text/html; charset=utf-8"), *plan.headers])
                return
            data = plan.body
            if data is None and head.method == b"GET" and len(plan.parts) == 1 \
                    and plan.content_length <= static.SMALL_FILE:
                offset, length = plan.parts[0]
                data = os.pread(fd, length, offset)
                if len(data) != length:
                    data = None
            if data is not None:
                # A small file goes out with its head in one write (one send(2), not two).
                payload = self.response_head(exchange, plan.status, plan.headers)
                if data:
                    payload += self.conn.send(h11.Data(data=data))
                    exchange.body_bytes += len(data)
                self.channel.write(payload + self.conn.send(h11.EndOfMessage()))
                return
            self.start_response(exchange, plan.status, plan.headers)
            await send_file(self, fd, plan.parts, exchange)
        finally:
            if fd is not None:
                os.close(fd)

    # --- writing ---

    def _base_headers(self, exchange: Exchange) -> list[tuple[bytes, bytes]]:
        runtime = self.runtime
        headers = [(b"server", runtime.server_name), (b"date", runtime.clock.date()),
                   (b"x-request-id", exchange.request_id)]
        conn = self.conn
        head = exchange.head
        if (runtime.closing or conn.requests >= runtime.config.limits.keepalive_requests
                or (head is not None and not head.keep_alive)):
            headers.append((b"connection", b"close"))
        return headers

    def start_response(self, exchange: Exchange, status: int, headers: list[tuple[bytes, bytes]],
                       reason: bytes = b"") -> None:
        self.channel.write(self.response_head(exchange, status, headers, reason))

    def response_head(self, exchange: Exchange, status: int, headers: list[tuple[bytes, bytes]],
                      reason: bytes = b"") -> bytes:
        """The serialised head of our answer (the proxy's own headers added)."""
        now = perf_counter()
        exchange.status = status
        all_headers = self._base_headers(exchange)
        all_headers += headers  # a list or a tuple (static.Plan's are shared, so tuples)
        if self.scheme == b"https" and self.runtime.tls is not None and self.runtime.tls.hsts \
                and not any(name == b"strict-transport-security" for name, _ in headers):
            all_headers += self.runtime.tls.hsts  # [tls] hsts, unless the app sent its own
        all_headers.append((b"server-timing", exchange.server_timing(now)))
        # Every name and value here was parsed by h11 already or made by the proxy from
        # validated parts (config strings are checked at load), so h11's per-header regexes
        # are skipped (_parsed=True; tests/unit/test_h11_contract.py guards the assumption).
        return self.conn.send(h11.Response(
            status_code=status, headers=all_headers, reason=reason or reason_phrase(status), _parsed=True))

    def respond(self, exchange: Exchange, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """A complete response the proxy makes itself."""
        if not any(name == b"content-length" for name, _ in headers):
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        conn = self.conn
        payload = self.response_head(exchange, status, headers)
        if body and exchange.head is not None and exchange.head.method != b"HEAD" and status not in (204, 304):
            payload += conn.send(h11.Data(data=body))
            exchange.body_bytes += len(body)
        self.channel.write(payload + conn.send(h11.EndOfMessage()))  # one write: one send(2)

    def _answer_error(self, exc: ProxyError, exchange: Exchange) -> bool:
        """Answer an error; True when the connection stays open for the next request.

        It stays open only when the request was read completely and the error
        does not doubt the framing (404, 405, 412...); otherwise the answer
        carries Connection: close and the caller drains what is left.
        """
        runtime = self.runtime
        status = exc.status
        if status >= 500:
            log.info("%s %s: %s", self.client_ip, exchange.head.request_line if exchange.head else "-", exc)
        extra = list(exc.headers)
        h11_conn = self.conn.h11
        # MIGHT_SWITCH_PROTOCOL: a request that asked to upgrade was read completely; answering it denies the switch.
        if (not isinstance(exc, ClientError) or exc.keep_alive) \
                and h11_conn.their_state in (h11.DONE, h11.MIGHT_SWITCH_PROTOCOL) \
                and h11_conn.our_state is h11.SEND_RESPONSE:
            self.respond(exchange, status, error_page(status, runtime.server_name),
                         [(b"content-type", b"text/html; charset=utf-8"), *extra])
            self._log(exchange)
            return self.conn.can_keep_alive
        exchange.status = status
        head_only = exchange.head is not None and exchange.head.method == b"HEAD"
        extra.append((b"x-request-id", exchange.request_id))
        if self.scheme == b"https" and runtime.tls is not None:
            extra += runtime.tls.hsts
        self.channel.write(error_bytes(status, runtime.server_name, runtime.clock.date(),
                                       head_only=head_only, extra=extra))
        exchange.body_bytes = 0 if head_only else len(error_page(status, runtime.server_name))
        self._log(exchange)
        return False

    async def _linger(self) -> None:
        """Half-close, then read and drop what the client still sends (nginx's lingering close)."""
        self.channel.write_eof()
        loop = self.runtime.loop
        deadline = loop.time() + LINGER_SECONDS
        dropped = 0
        while dropped < LINGER_BYTES:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                data = await self.channel.recv(remaining)
            except TimeoutError:
                return
            if not data:
                return
            dropped += len(data)

