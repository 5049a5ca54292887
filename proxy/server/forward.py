"""Forward one buffered request to an upstream and relay the response back.

Order of events, and why:
1. The request body is already buffered (client.py), so a slow upload never
   holds an app server worker.
2. A server is picked and a pooled connection reused or a new one opened.
3. Head and body are sent; the response head is awaited (read_timeout).
4. The response streams back through a Spool: written straight to the client
   when its socket has room, queued (memory, then temp file) when not, so the
   upstream is read at its own pace and returned to the pool as soon as its
   response ends, whatever the client's speed.

A stale pooled connection (the server closed it while the request was on the
way) gives no response bytes at all; an idempotent request is then sent again
on a new connection, so the client never sees a 502 for it.
"""

from __future__ import annotations

import h11

from ..errors import UpstreamError, UpstreamTimeout
from ..http.headers import client_response_headers, upstream_request_headers
from .buffers import RequestBody, Spool

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class _Stale(Exception):
    """A reused connection failed before the upstream sent a single byte."""


async def forward(handler, head, body: RequestBody | None, group, exchange) -> None:
    runtime = handler.runtime
    loop = runtime.loop
    upstream = group.config
    exchange.handler = "proxy"
    host = head.host or runtime.local_host(handler.channel)
    headers = upstream_request_headers(
        head.headers, host=host, client_ip=handler.client_ip, scheme=handler.scheme,
        request_id=exchange.request_id, via=runtime.via,
        body_length=body.size if body is not None else (0 if head.has_body else None))
    tried: set = set()
    retried_stale = False
    server = group.pick(frozenset(tried))
    if server is None:
        raise UpstreamError(f"upstream {group.name} has no servers")
    while True:
        began = loop.time()
        server.requests += 1
        exchange.upstream_addr.append(str(server.address))
        try:
            conn, reused = await server.acquire()
        except UpstreamError as exc:
            server.failures += 1
            exchange.upstream_status.append("502" if type(exc) is UpstreamError else "504")
            exchange.response_time = loop.time() - began
            raise
        exchange.reused = reused
        exchange.connect_time = 0.0 if reused else loop.time() - began
        server.in_flight += 1
        try:
            try:
                response = await _exchange(conn, head, headers, body, upstream, reused)
            except _Stale:
                conn.channel.close()
                if retried_stale or head.method not in IDEMPOTENT:
                    raise UpstreamError(f"{server.address} closed a kept-alive connection") from None
                retried_stale = True
                exchange.upstream_status.append("-")
                continue
            except BaseException:
                conn.channel.close()
                raise
            exchange.header_time = loop.time() - began
            exchange.upstream_status.append(str(response.status_code))
            await _relay(handler, conn, response, exchange, upstream)
            exchange.response_time = loop.time() - began
            return
        finally:
            server.in_flight -= 1


async def _exchange(conn, head, headers, body, upstream, reused: bool) -> h11.Response:
    """Send the request and return the response head (informational responses skipped)."""
    channel = conn.channel
    protocol = conn.protocol
    received = False
    try:
        channel.write(protocol.request(head.method, head.target, headers))
        if body is not None:
            for chunk in body.chunks():
                channel.write(protocol.data(chunk))
                await channel.drain(upstream.send_timeout)
        channel.write(protocol.end())
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                data = await channel.recv(upstream.read_timeout)
                received = received or bool(data)
                protocol.receive_data(data)
                continue
            if type(event) is h11.InformationalResponse:
                continue  # 100 Continue, 103 Early Hints: the body was sent already
            return event
    except TimeoutError:
        raise UpstreamTimeout(f"{conn.pool.address} did not answer in time") from None
    except (ConnectionError, UpstreamError) as exc:
        if reused and not received:
            raise _Stale() from None
        if isinstance(exc, UpstreamError):
            raise
        raise UpstreamError(f"{conn.pool.address}: {exc}") from None


async def _relay(handler, conn, response: h11.Response, exchange, upstream) -> None:
    """Stream the response body to the client through a Spool, then release the upstream."""
    runtime = handler.runtime
    channel = conn.channel
    protocol = conn.protocol
    client = handler.conn
    framing = [(n, v) for n, v in response.headers if n == b"content-length"]
    headers = client_response_headers(list(response.headers), via=runtime.via, extra=framing)
    handler.start_response(exchange, response.status_code, headers, response.reason)
    spool = Spool(handler.channel, upstream.buffer_bytes, upstream.max_temp_file_bytes,
                  runtime.config.server.temp_dir)
    client_timeout = runtime.config.limits.send_timeout
    try:
        while True:
            event = protocol.next_event()
            kind = type(event)
            if kind is h11.Data:
                spool.push(client.send(event))
                exchange.body_bytes += len(event.data)
                if spool.full:
                    await spool.room(client_timeout)
            elif kind is h11.EndOfMessage:
                spool.push(client.send(h11.EndOfMessage()))
                break
            else:
                try:
                    data = await channel.recv(upstream.read_timeout)
                except TimeoutError:
                    raise UpstreamTimeout(f"{conn.pool.address} stalled mid-response") from None
                protocol.receive_data(data)
        if protocol.reusable:
            conn.pool.release(conn)
        else:
            channel.close()
        await spool.flushed(client_timeout)
    except BaseException:
        channel.close()
        raise
    finally:
        spool.close()
