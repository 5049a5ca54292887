"""The facts about one request while it is handled, frozen into an AccessRecord when it ends.

Plain data: the server fills it in as the request goes (which route, which
upstream tries, how long each step took) and the access log, the metrics and
the Server-Timing header are all read from it, so they cannot disagree.
"""

from __future__ import annotations

import time
from time import perf_counter  # durations: loop.time() is cached per loop turn (to the ms in uvloop)

from ..accesslog import AccessRecord


class Exchange:
    __slots__ = ("head", "started", "wall", "request_id", "client_ip", "policy", "status", "body_bytes", "route",
                 "handler", "upstream_addr", "upstream_status", "connect_time", "header_time", "response_time",
                 "reused", "tunnel", "cache")

    def __init__(self, head, request_id: bytes, client_ip: str = "", started: float | None = None) -> None:
        self.head = head  # a RequestHead, or None when the request was refused before its head was read
        self.started = perf_counter() if started is None else started
        self.wall = time.time()
        self.request_id = request_id
        self.client_ip = client_ip  # the client's address (after [server] trusted_proxies): logged, forwarded
        self.policy = None  # the route's policy as applied to this request (http/policy.py Applied), if any
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
        self.tunnel = None  # (protocol, bytes to upstream, bytes to client, ended by) once a tunnel ended
        self.cache = ""  # what a response cache did: "HIT", "MISS"... (http/cache.py STATUSES)

    def __repr__(self) -> str:
        line = self.head.request_line if self.head is not None else "-"
        return f"<Exchange {line!r} {self.handler} {self.status or 'pending'}>"

    def record(self, remote_addr: str, now: float | None = None) -> AccessRecord:
        head = self.head
        now = perf_counter() if now is None else now
        tunnel = {}
        if self.tunnel is not None:
            protocol, to_upstream, to_client, ended_by = self.tunnel
            tunnel = {"tunnel": protocol, "tunnel_bytes_to_upstream": to_upstream,
                      "tunnel_bytes_to_client": to_client, "tunnel_end": ended_by}
        return AccessRecord(
            remote_addr=remote_addr,
            time=self.wall,
            request=head.request_line if head is not None else "-",
            status=self.status,
            body_bytes_sent=self.body_bytes,
            referer=_text(head.get(b"referer")) if head is not None else "",
            user_agent=_text(head.get(b"user-agent")) if head is not None else "",
            request_time=now - self.started,
            request_id=self.request_id.decode(),
            route=self.route,
            handler=self.handler,
            upstream_addr=", ".join(self.upstream_addr),
            upstream_status=", ".join(self.upstream_status),
            upstream_connect_time=self.connect_time,
            upstream_header_time=self.header_time,
            upstream_response_time=self.response_time,
            cache=self.cache,
            **tunnel,
        )

    def server_timing(self, now: float) -> bytes:
        """Server-Timing entries for the proxy's part (W3C Server Timing), durations in ms to the µs."""
        value = b'proxy;dur=%d.%03d;desc="%s %s"' % (*divmod(int((now - self.started) * 1e6), 1000),
                                                       self.handler.encode(), self.route.encode())
        if self.connect_time is not None:
            value += b', upstream-connect;dur=%d.%03d;desc="%s"' % (
                *divmod(int(self.connect_time * 1e6), 1000), b"reused" if self.reused else b"new")
        if self.header_time is not None:
            value += b', upstream-ttfb;dur=%d.%03d;desc="upstream time to first byte"' % divmod(
                int(self.header_time * 1e6), 1000)
        return value


def _text(value: bytes | None) -> str:
    return value.decode("latin-1") if value else ""
