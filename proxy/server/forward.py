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

from time import perf_counter

import h11

from ..errors import NoUpstreamAvailable, UpstreamError, UpstreamTimeout
from ..http.headers import client_response_headers, upstream_request_headers
from .buffers import RequestBody, Spool
from .tunnel import run_tunnel

# RFC 9110 section 9.2.2. A request with one of these methods may be sent twice;
# a POST or PATCH never is.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Upstream statuses that nginx's proxy_next_upstream can name.
RETRY_STATUSES = {502: "http_502", 503: "http_503", 504: "http_504"}


class _Stale(Exception):
    """A reused connection failed before the upstream sent a single byte."""


class _Retry(Exception):
    """This try failed in a way another server may fix; ``error`` is what the client gets otherwise."""

    def __init__(self, error: UpstreamError, condition: str, sent: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.condition = condition  # "error", "timeout" or "http_50x", as in next_upstream
        self.sent = sent  # the request reached the server, so only idempotent methods may go again


def _failed(exchange, error: UpstreamError, sent: bool) -> _Retry:
    """A try that failed with ``error``: logged as the status nginx would log, classed as next_upstream does."""
    timed_out = isinstance(error, UpstreamTimeout)
    exchange.upstream_status.append("504" if timed_out else "502")
    return _Retry(error, "timeout" if timed_out else "error", sent)


async def forward(handler, head, body: RequestBody | None, group, exchange, upgrade=None) -> None:
    """Send the request to a server of ``group``, trying others as next_upstream allows.

    ``upgrade`` (an http.upgrade.Upgrade) forwards Connection/Upgrade; a 101 then becomes a tunnel.
    """
    runtime = handler.runtime
    upstream = group.config
    exchange.handler = "proxy"
    host = head.host or runtime.local_host(handler.channel)
    headers = upstream_request_headers(
        head.headers, host=host, client_ip=handler.client_ip, scheme=handler.scheme,
        request_id=exchange.request_id, via=runtime.via,
        body_length=body.size if body is not None else (0 if head.has_body else None),
        upgrade=upgrade.protocol if upgrade is not None else None)
    key = handler.client_ip.encode()
    tried: set = set()
    last_error: UpstreamError | None = None
    while True:
        peer = group.pick(key, tried)
        if peer is None:
            if last_error is None:
                raise NoUpstreamAvailable(f"no server of upstream {group.name} is available",
                                          retry_after=group.retry_after())
            raise last_error
        tried.add(peer)
        try:
            more = len(tried) < upstream.tries and group.has_other(tried)
            await _try(handler, peer, head, headers, body, exchange, upstream, more)
            group.succeeded(peer)
            return
        except _Retry as failure:
            last_error = failure.error
            group.failed(peer, str(failure.error))
            may_repeat = not failure.sent or head.method in IDEMPOTENT
            if (len(tried) >= upstream.tries or failure.condition not in upstream.next_upstream
                    or not may_repeat):
                raise failure.error from None


async def _try(handler, peer, head, headers, body, exchange, upstream, more: bool) -> None:
    """One server: connect (or reuse), send, await the head, relay. Raises _Retry for a retryable failure.

    ``more`` says whether another server could still be tried: on the last try
    a 502/503/504 from the upstream is passed on rather than replaced.
    """
    began = perf_counter()
    peer.requests += 1
    peer.in_flight += 1
    exchange.upstream_addr.append(str(peer.address))
    try:
        retried_stale = False
        while True:
            try:
                conn, reused = await peer.pool.acquire(settle=head.method not in IDEMPOTENT)
            except UpstreamError as exc:
                raise _failed(exchange, exc, sent=False) from None
            exchange.reused = reused
            exchange.connect_time = 0.0 if reused else perf_counter() - began
            try:
                response = await _exchange(conn, head, headers, body, upstream, reused)
            except _Stale:
                conn.channel.close()
                if retried_stale or head.method not in IDEMPOTENT:
                    raise _failed(exchange, UpstreamError(f"{peer.address} closed a kept-alive connection"),
                                  sent=True) from None
                retried_stale = True  # the server closed an idle connection: a new one, same server
                continue
            except UpstreamError as exc:
                conn.channel.close()
                raise _failed(exchange, exc, sent=True) from None
            except BaseException:
                conn.channel.close()
                raise
            break
        exchange.header_time = perf_counter() - began
        exchange.upstream_status.append(str(response.status_code))
        condition = RETRY_STATUSES.get(response.status_code)
        if more and condition in upstream.next_upstream and head.method in IDEMPOTENT:
            conn.channel.close()
            raise _Retry(UpstreamError(f"{peer.address} answered {response.status_code}"), condition, sent=True)
        if response.status_code == 101:  # the upgrade was accepted: relay raw bytes until either side is done
            await run_tunnel(handler, conn, response, exchange, upstream)
            exchange.response_time = perf_counter() - began
            return
        spool = await _relay(handler, conn, response, exchange, upstream)
        exchange.response_time = perf_counter() - began
    finally:
        peer.group.finished(peer)
    try:
        await spool.flushed(handler.runtime.config.limits.send_timeout)
    finally:
        spool.close()


async def _exchange(conn, head, headers, body, upstream, reused: bool) -> h11.Response:
    """Send the request and return the response head (informational responses skipped, except 101:
    h11 accepts that only for a request that asked to upgrade)."""
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
            if type(event) is h11.InformationalResponse and event.status_code != 101:
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


async def _relay(handler, conn, response: h11.Response, exchange, upstream) -> Spool:
    """Stream the response body towards the client and release the upstream as soon as it ends.

    Returns the Spool with whatever the client has not taken yet; the caller
    waits for it to drain after the upstream's books are closed.
    """
    runtime = handler.runtime
    channel = conn.channel
    protocol = conn.protocol
    client = handler.conn
    received = list(response.headers)  # h11's Headers iterates item by item: once is enough
    framing = [(n, v) for n, v in received if n == b"content-length"]
    headers = client_response_headers(received, via=runtime.via, extra=framing)
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
    except BaseException:
        channel.close()
        spool.close()
        raise
    if protocol.reusable:
        conn.pool.release(conn)
    else:
        channel.close()
    return spool
