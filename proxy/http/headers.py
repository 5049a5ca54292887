"""Header rewriting in both directions, as plain functions over (name, value) pairs.

Names are lower-case bytes, as h11 hands them over. Nothing here awaits.

Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection, not the
message: Connection, every header Connection names, and the fixed list below
are never forwarded, in either direction. Proxy-Connection is not in the RFC
but old clients send it and nginx strips it too.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from random import getrandbits as _random_bits

from .proxyproto import UNIX_CLIENT

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te",
    b"transfer-encoding", b"upgrade", b"trailer",
})

# Headers that describe how the client reached us. A client can write anything
# in them, so they are replaced, never extended (the app tier trusts exactly
# one hop: ours).
CLIENT_SUPPLIED_FORWARDING = frozenset({
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
    b"x-forwarded-prefix", b"x-real-ip", b"forwarded",
})

# httpoxy (CVE-2016-5385): CGI-style servers, WSGI ones included, turn a
# request's ``Proxy:`` header into ``HTTP_PROXY``, which many HTTP client
# libraries read as the proxy for the app's own outgoing requests. No standard
# request header is named Proxy, so it is dropped, as nginx deployments were
# told to do (proxy_set_header Proxy "").
HTTPOXY = frozenset({b"proxy"})

# Set by us on the upstream request: the body is buffered and re-framed with
# Content-Length, so the client's framing and Expect never go upstream.
_REQUEST_REPLACED = HOP_BY_HOP | CLIENT_SUPPLIED_FORWARDING | HTTPOXY | {
    b"host", b"content-length", b"expect", b"x-request-id", b"via",
}

# Headers of the upstream's response that we set ourselves instead.
_RESPONSE_REPLACED = HOP_BY_HOP | {b"content-length", b"server", b"date", b"x-request-id"}

# Framing headers a Connection header must never name (an old smuggling trick:
# a proxy that strips what Connection names would strip the framing).
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})

_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._~:+/=-]{1,128}$")


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """The lower-cased tokens of every Connection header."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return tokens


class _Ids:
    """New request ids: 64 random bits drawn once per process, then a counter (32 hex digits).

    Unique across workers and restarts without a system call or 128 random bits per
    request; an id has to be unique, not unguessable. The prefix is drawn again in every
    forked worker (``random`` is reseeded in the child too), so workers never share one.
    """

    __slots__ = ("prefix", "count")

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.prefix = b"%016x" % _random_bits(64)
        self.count = 0

    def next(self) -> bytes:
        self.count += 1
        return b"%s%016x" % (self.prefix, self.count)


_IDS = _Ids()
os.register_at_fork(after_in_child=_IDS.restart)


def request_id(client_value: bytes | None) -> bytes:
    """The client's X-Request-ID when well formed, else a new one."""
    if client_value is not None and _REQUEST_ID_RE.match(client_value):
        return client_value
    return _IDS.next()


def forwarded_for(ip: str) -> bytes:
    """RFC 7239 node: IPv6 addresses are quoted and bracketed; a unix socket's client ("unix:") has no
    address to give, which RFC 7239 section 6 writes "unknown"."""
    if ":" not in ip:
        return ip.encode()
    return b"unknown" if ip == UNIX_CLIENT else f'"[{ip}]"'.encode()


def upstream_request_headers(
    headers: list[tuple[bytes, bytes]],
    *,
    host: bytes,
    client_ip: str,
    scheme: bytes,
    request_id: bytes,
    via: bytes,
    body_length: int | None,
    upgrade: bytes | None = None,
    named: frozenset[bytes] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The header list the upstream receives.

    ``headers`` are the client's (already checked); ``body_length`` is None
    when the request had no body framing at all, else the buffered length.
    ``upgrade`` is the protocol of an allowed upgrade (http/upgrade.py): the
    one case where Connection and Upgrade are passed on.
    """
    if named is None:
        named = connection_tokens(headers)
    out: list[tuple[bytes, bytes]] = [(b"host", host)] if host else []
    client_via = None
    for name, value in headers:
        if name in _REQUEST_REPLACED or name in named or b"_" in name:
            if name == b"via" and name not in named:  # a Via that Connection names is hop-by-hop: dropped
                client_via = value
            continue
        out.append((name, value))
    before, after = _forwarding(client_ip, scheme, host)
    out += before
    out += [(b"via", client_via + b", " + via if client_via else via), (b"x-request-id", request_id)]
    out += after
    if body_length is not None:
        out.append((b"content-length", str(body_length).encode()))
    if upgrade is not None:
        out += [(b"connection", b"upgrade"), (b"upgrade", upgrade)]
    return out


@lru_cache(maxsize=4096)
def _forwarding(client_ip: str, scheme: bytes, host: bytes) -> tuple[tuple, tuple]:
    """The forwarding headers for one client address, scheme and host: the same for every request of a
    connection, so they are built once (the fields before Via and X-Request-ID, and those after)."""
    ip = client_ip.encode()
    before = ((b"x-forwarded-for", ip), (b"x-forwarded-proto", scheme), (b"x-real-ip", ip),
              (b"forwarded", b"for=" + forwarded_for(client_ip) + b";proto=" + scheme
               + (b";host=" + _quoted(host) if host else b"")))
    return before, (((b"x-forwarded-host", host),) if host else ())


def why_dropped(name: bytes, named: set[bytes]) -> str | None:
    """Why ``upstream_request_headers`` leaves a client header out (None: it is kept).

    For ``proxy explain``; the test suite checks it agrees with the function above.
    """
    if b"_" in name:
        return "underscore in the name (Gunicorn reads _ and - alike)"
    if name in HOP_BY_HOP:
        return "hop-by-hop (RFC 9110 7.6.1)"
    if name in named:
        return "named by Connection, so hop-by-hop"
    if name in CLIENT_SUPPLIED_FORWARDING or name in (b"via", b"x-request-id"):
        return "replaced by the proxy's own value"
    if name in (b"content-length", b"expect"):
        return "the body is buffered and re-framed by the proxy"
    if name in HTTPOXY:
        return "httpoxy: the app would read it as HTTP_PROXY (CVE-2016-5385)"
    return None


def _quoted(value: bytes) -> bytes:
    # RFC 7239 section 4: a host with ":" (a port, an IPv6 literal) must be a quoted-string.
    return b'"' + value + b'"' if b":" in value or b"[" in value else value


def client_response_headers(
    headers: list[tuple[bytes, bytes]],
    *,
    via: bytes,
    extra: list[tuple[bytes, bytes]],
    named: frozenset[bytes] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers as the client receives them.

    Content-Length is kept only when the caller passes it in ``extra``: the
    client connection frames the body itself (codec.response_framing).
    ``named``: the response's Connection tokens, when already known.
    """
    if named is None:
        named = connection_tokens(headers)
    out = []
    upstream_via = None
    for n, v in headers:
        if n in _RESPONSE_REPLACED or n in named:
            continue
        if n == b"via":
            upstream_via = v if upstream_via is None else upstream_via
            continue
        out.append((n, v))
    out.append((b"via", upstream_via + b", " + via if upstream_via is not None else via))
    out += extra
    return out


class Stamp:
    """The headers the proxy adds to every response it sends, built here and nowhere else.

    Server and Date (RFC 9110 sections 10.2.4 and 6.6.1), X-Request-ID (the
    id the upstream received too, so a line in either tier's log finds the
    other), Server-Timing (W3C Server Timing: the proxy's share, for the demo
    page and browser dev tools; ``[server] server_timing`` says who gets it),
    Strict-Transport-Security on HTTPS when ``[tls] hsts`` is set and the app
    did not send its own, and ``Connection: close`` when this is the
    connection's last response. Via is part of relaying an upstream's
    headers (``client_response_headers``).
    """

    __slots__ = ("server", "hsts", "timing", "_trusted")

    def __init__(self, server: bytes, *, hsts: str = "", server_timing: str = "all",
                 trusted=None) -> None:
        self.server = server
        self.hsts = ((b"strict-transport-security", hsts.encode()),) if hsts else ()
        self.timing = server_timing  # "all", "trusted" or "off"
        self._trusted = trusted  # client_ip -> bool, for "trusted"

    def __repr__(self) -> str:
        return f"<Stamp {self.server.decode()} hsts={bool(self.hsts)} server_timing={self.timing}>"

    def timing_for(self, client_ip: str) -> bool:
        if self.timing == "all":
            return True
        return self.timing == "trusted" and self._trusted is not None and self._trusted(client_ip)

    def headers(self, exchange, *, date: bytes, https: bool, client_ip: str, now: float,
                present: list[tuple[bytes, bytes]] = ()) -> list[tuple[bytes, bytes]]:
        """The proxy's headers for ``exchange``'s response; ``present`` are the headers already chosen."""
        out = [(b"server", self.server), (b"date", date), (b"x-request-id", exchange.request_id)]
        if https and self.hsts and not any(name == b"strict-transport-security" for name, _ in present):
            out += self.hsts
        if self.timing_for(client_ip):
            out.append((b"server-timing", exchange.server_timing(now)))
        return out
