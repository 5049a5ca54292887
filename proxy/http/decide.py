"""What a request gets: the one place its fate is chosen.

``decide(head, conn, config)`` takes a request head that passed every rule
(codec.py, rules.py), the facts of the connection it came on, and the
configuration, and returns an Action: an answer the proxy makes itself
(``Reply``), one of its status pages (``StatusPage``), a static file
(``Static``, possibly falling back to a ``Forward``), or a request to forward
to an upstream group (``Forward``). The server carries the action out;
``proxy explain`` prints it; a test runs the hostile-input corpus and a table
of requests through both and requires the same answer.

It sees requests, not connections: an HTTP/2 stream gets its decision from
the same function. Nothing here touches a socket, a file or a clock (the
static file lookup, which needs the file system, is the next step:
``static.OpenFileCache``), so tests call it directly.

The order of the steps is the order nginx users expect:

1. ``OPTIONS *`` asks about the server itself (RFC 9110 section 9.3.7): 200.
2. The status pages, for the ``[status] allow`` networks (404 for others, so
   they learn nothing), GET and HEAD only.
3. ``[tls] redirect_http`` on a plain connection: 308, which keeps the method
   and body, unlike 301/302 (RFC 9110 section 15.4.9).
4. The longest matching route prefix; none matches: 404.
5. A static route answers GET and HEAD from its folder; with an upstream too,
   a path with no file is forwarded (nginx ``try_files $uri @app``); other
   methods go to the upstream, or get 405 when there is none.
6. Forwarding: the upgrade a request asks for must be one the group allows
   (http/upgrade.py), else 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..config import Config, Route
from ..errors import ALLOW_GET_HEAD, ClientError
from ..tls import https_location
from . import upgrade as upgrade_rules
from .routing import Router
from .upgrade import Upgrade

# What OPTIONS * answers: the methods the proxy forwards (TRACE and CONNECT are refused by the rules).
ALLOW_ALL = ((b"allow", b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),)
_GET_HEAD = (b"GET", b"HEAD")


# Actions are immutable values made once per request: NamedTuples, which cost a fraction of a
# frozen dataclass to build (see codec.py's events). ConnFacts, made once per connection, is one.

@dataclass(frozen=True, slots=True)
class ConnFacts:
    """What the decision needs to know about the connection a request came on."""

    scheme: bytes  # b"http" or b"https"
    client_ip: str
    local: bytes  # "host:port" the client reached: the Host of an HTTP/1.0 request that sent none
    https_port: int | None = None  # the first [tls] listener's port, for redirect_http


class Reply(NamedTuple):
    """An answer the proxy makes itself. ``body`` None means the standard page for the status."""

    status: int
    why: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes | None = None
    handler: str = "local"  # for the access log: "local", "redirect"
    keep_alive: bool = True  # the framing is intact: the connection may serve another request


class StatusPage(NamedTuple):
    """``[status] path`` (JSON) or ``metrics_path`` (Prometheus text)."""

    kind: str  # "status" or "metrics"


class Forward(NamedTuple):
    """Send the request to a server of ``group``."""

    route: Route
    group: str
    host: bytes  # the Host the upstream receives
    upgrade: Upgrade | None = None


class Static(NamedTuple):
    """Serve a file of ``route.static``. ``otherwise`` is what a path with no file gets: None for
    404, or (a route with an upstream too) the Forward, or the Reply that refuses forwarding it."""

    route: Route
    otherwise: Forward | Reply | None = None


Action = Reply | StatusPage | Static | Forward


def refusal(error: ClientError) -> Reply:
    """A ClientError raised by a rule, as the Reply that answers it."""
    return Reply(error.status, str(error), tuple(error.headers), keep_alive=error.keep_alive)


class Decider:
    """``decide`` with what it needs from the config prepared once (the routes, sorted)."""

    __slots__ = ("config", "router", "_status_paths")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config.routes)
        status = config.status
        self._status_paths = {} if status is None else {status.path: "status", status.metrics_path: "metrics"}

    def __repr__(self) -> str:
        return f"<Decider {self.router!r}>"

    def decide(self, head, conn: ConnFacts) -> Action:
        path = head.path
        method = head.method
        if path == "*":
            return Reply(200, "OPTIONS * asks about the server itself", ALLOW_ALL, b"")
        page = self._status_paths.get(path)
        if page is not None:
            if not self.config.status.allows(conn.client_ip):
                return Reply(404, f"{conn.client_ip} is not in [status] allow")
            if method not in _GET_HEAD:
                return Reply(405, "the status pages answer GET and HEAD", ALLOW_GET_HEAD)
            return StatusPage(page)
        tls = self.config.tls
        if tls is not None and tls.redirect_http and conn.scheme == b"http":
            location = https_location(head.host or conn.local, head.target, conn.https_port or 443)
            return Reply(308, "[tls] redirect_http", ((b"location", location),), handler="redirect")
        route = self.router.match(path)
        if route is None:
            return Reply(404, "no route matches")
        if route.static is not None and method in _GET_HEAD:
            return Static(route, self._forward(route, head, conn) if route.upstream else None)
        if route.upstream:
            return self._forward(route, head, conn)
        return Reply(405, f"static route; {method.decode()} is not GET or HEAD", ALLOW_GET_HEAD)

    def _forward(self, route: Route, head, conn: ConnFacts) -> Forward | Reply:
        if head.upgrade is None:  # the rules found no request to switch protocols (the usual case)
            return Forward(route, route.upstream, head.host or conn.local, None)
        upstream = self.config.upstreams[route.upstream]
        try:
            wanted = upgrade_rules.decide(head.headers, head.http_version, upstream.upgrade)
        except ClientError as exc:
            allowed = ", ".join(upstream.upgrade) or "no upgrades"
            return Reply(exc.status, f"{exc} (upstream {upstream.name!r} allows {allowed})", keep_alive=exc.keep_alive)
        return Forward(route, route.upstream, head.host or conn.local, wanted)


def decide(head, conn: ConnFacts, config: Config) -> Action:
    """What ``head`` gets; see the module docstring. Builds a Decider: servers keep one instead."""
    return Decider(config).decide(head, conn)
