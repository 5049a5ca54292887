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
3. ACME http-01 challenges (http/challenge.py), on a plain connection, for
   the names of ``acme = true`` sites: answered before any route or redirect.
   Then ``[tls] redirect_http`` on a plain connection: 308, which keeps the
   method and body, unlike 301/302 (RFC 9110 section 15.4.9).
4. The site the Host names (http/sites.py); none, and no default site: 404,
   or 421 over TLS when the SNI name differs from Host.
5. The longest matching route prefix of that site; none matches: 404.
6. The route's policy, when it has one (http/policy.py): rate and
   connection limits, allow/deny, basic authentication, then a redirect.
7. A static route answers GET and HEAD from its folder; with an upstream too,
   a path with no file is forwarded (nginx ``try_files $uri @app``); other
   methods go to the upstream, or get 405 when there is none.
8. Forwarding: the upgrade a request asks for must be one the group allows
   (http/upgrade.py), else 400; ``strip_prefix``/``upstream_prefix`` give
   the target the upstream receives.

Behind a load balancer (``[server] trusted_proxies``) the client is the
address X-Forwarded-For names (http/clientip.py): ``Decider.request_facts``
works it out from the connection's facts before ``decide``, and the status
pages, the policies, the logs and the upstream all see that address.

``decide(head, conn, trace)`` appends a line to ``trace`` (a list) for each
policy step it takes: ``proxy explain`` prints them, so what it shows is
what the server did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from ..config import Config, Route, Status, acme_sites
from ..errors import ALLOW_GET_HEAD, ClientError
from ..tls import https_location
from . import cache as cache_rules
from . import upgrade as upgrade_rules
from .challenge import CONTENT_TYPE as CHALLENGE_TYPE, PREFIX as CHALLENGE_PATH, Http01
from .clientip import TrustedProxies
from .placeholders import Vars
from .policy import Applied, Credentials, RoutePolicy, limit_key
from .routing import Router, normalize_path
from .rules import split_target
from .sites import Sites, misdirected
from .upgrade import Upgrade

# What OPTIONS * answers: the methods the proxy forwards (TRACE and CONNECT are refused by the rules).
ALLOW_ALL = ((b"allow", b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),)
_GET_HEAD = (b"GET", b"HEAD")


# Actions are immutable values made once per request: NamedTuples, which cost a fraction of a
# frozen dataclass to build (see codec.py's events). ConnFacts, made once per connection, is one.

@dataclass(frozen=True, slots=True)
class ConnFacts:
    """What the decision needs to know about the connection a request came on.

    ``client_ip`` is the peer's address; for a request that came through a trusted proxy,
    ``Decider.request_facts`` gives facts whose ``client_ip`` is the client's and ``peer`` the proxy's.
    """

    scheme: bytes  # b"http" or b"https"
    client_ip: str
    local: bytes  # "host:port" the client reached: the Host of an HTTP/1.0 request that sent none
    https_port: int | None = None  # the first [tls] listener's port, for redirect_http
    server_name: str | None = None  # the SNI name of a TLS connection, lower-cased
    peer: str | None = None  # set when client_ip was read from X-Forwarded-For: the trusted proxy


class Reply(NamedTuple):
    """An answer the proxy makes itself. ``body`` None means the standard page for the status (or the
    route's error page)."""

    status: int
    why: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes | None = None
    handler: str = "local"  # for the access log: "local", "redirect"
    keep_alive: bool = True  # the framing is intact: the connection may serve another request
    policy: Applied | None = None  # the route's policy: its response headers and error pages apply


class StatusPage(NamedTuple):
    """``[status] path`` (JSON) or ``metrics_path`` (Prometheus text)."""

    kind: str  # "status" or "metrics"
    policy = None


class Forward(NamedTuple):
    """Send the request to a server of ``group``; ``target`` is what the upstream receives (the client's,
    or rewritten by strip_prefix/upstream_prefix)."""

    route: Route
    group: str
    host: bytes  # the Host the upstream receives
    upgrade: Upgrade | None = None
    target: bytes | None = None  # None: the client's target as it is
    policy: Applied | None = None
    cache: cache_rules.CacheUse | None = None  # the route has a cache: what it does with this request


class Static(NamedTuple):
    """Serve a file of ``route.static``. ``otherwise`` is what a path with no file gets: None for
    404, or (a route with an upstream too) the Forward, or the Reply that refuses forwarding it."""

    route: Route
    otherwise: Forward | Reply | None = None
    policy: Applied | None = None


class Purge(NamedTuple):
    """Remove entries from ``caches``: every entry of ``uri`` (PURGE), or of ``key`` (DELETE on
    ``[status] cache_path``; a key ending in ``*`` stands for every key it begins)."""

    caches: tuple[str, ...]
    uri: bytes = b""
    key: bytes = b""
    policy: Applied | None = None


class Check(NamedTuple):
    """Credentials to verify before carrying out ``then``; ``otherwise`` (401) when they are wrong.
    A bcrypt check takes milliseconds by design, so the server does it off the event loop."""

    credentials: Credentials
    then: "Action"
    otherwise: Reply
    policy: Applied | None = None


class Delayed(NamedTuple):
    """Within the rate limit's burst but beyond its ``delay``: carried out ``seconds`` from now (nginx
    limit_req without nodelay)."""

    seconds: float
    then: "Action"
    policy: Applied | None = None


Action = Reply | StatusPage | Static | Forward | Check | Delayed | Purge


def refusal(error: ClientError) -> Reply:
    """A ClientError raised by a rule, as the Reply that answers it."""
    return Reply(error.status, str(error), tuple(error.headers), keep_alive=error.keep_alive)


class _SiteEntry:
    """What decide keeps per site: its router and its routes' policies (by route identity)."""

    __slots__ = ("site", "router", "policies")

    def __init__(self, site, router: Router, policies: dict[int, RoutePolicy]) -> None:
        self.site = site
        self.router = router
        self.policies = policies


class Decider:
    """``decide`` with what it needs from the config prepared once: sites, routes sorted, policies.

    ``zones`` hold the rate and connection limits (server/zones.py; shared between the worker processes
    when the master made them); ``clock`` is time.monotonic, the clock those limits count in.
    """

    __slots__ = ("config", "sites", "router", "trusted", "clock", "_status_paths", "_http01")

    def __init__(self, config: Config, zones=None, clock=time.monotonic, challenges=None) -> None:
        """``challenges``: token -> key authorization of a pending ACME http-01 challenge, or None (the server
        reads the storage folder; without it no challenge is pending)."""
        if zones is None:
            from ..server.zones import Zones  # a process of its own (explain, tests): limits of its own

            zones = Zones()
        self.config = config
        self.clock = clock
        self.sites = Sites(config.sites, lambda site: self._prepare(site, zones))
        self.router = self.sites.entries[0][1].router if len(self.sites.entries) == 1 else None
        trusted = config.server.trusted_proxies
        self.trusted = TrustedProxies(trusted) if trusted else None
        status = config.status
        self._status_paths = {} if status is None else {status.path: "status", status.metrics_path: "metrics",
                                                        status.cache_path: "cache"}
        acme = config.tls.acme if config.tls is not None else None
        names = [name for site in acme_sites(config) for name in site.names]
        self._http01 = Http01(names, challenges or _none_pending) \
            if names and acme is not None and "http-01" in acme.challenges else None

    def _prepare(self, site, zones) -> _SiteEntry:
        policies = {id(route): RoutePolicy(route, zones, self.config.rate_limits)
                    for route in site.routes if _has_policy(route)}
        return _SiteEntry(site, Router(site.routes), policies)

    def __repr__(self) -> str:
        return f"<Decider {self.sites!r}>"

    def request_facts(self, headers: list[tuple[bytes, bytes]], conn: ConnFacts) -> ConnFacts:
        """The facts of a request's connection with the client's real address (``[server] trusted_proxies``,
        from the request's ``headers``); ``conn`` itself when nothing changes."""
        trusted = self.trusted
        if trusted is None:
            return conn
        client = trusted.client(conn.client_ip, headers)
        if client == conn.client_ip:
            return conn
        return ConnFacts(conn.scheme, client, conn.local, conn.https_port, conn.server_name, conn.client_ip)

    def site_for(self, head, conn: ConnFacts) -> _SiteEntry | None:
        sites = self.sites
        only = sites.only
        return only if only is not None else sites.pick(head.host or conn.local)

    def pages_for(self, seen: "Seen", conn: ConnFacts) -> Applied | None:
        """The policy of the route a refused request named (its body was declared too large), for its error
        page and response headers only: it counts in no limit, and nothing else is decided."""
        site = self.sites.only or self.sites.pick(seen.host or conn.local)
        route = site.router.match(seen.path) if site is not None and site.policies else None
        policy = site.policies.get(id(route)) if route is not None else None
        return policy.plain if policy is not None else None

    def decide(self, head, conn: ConnFacts, request_id: bytes = b"", trace: list[str] | None = None) -> Action:
        """What ``head`` gets. ``request_id`` is for the {request_id} of a redirect; ``trace`` collects a line
        per policy step (for explain)."""
        path = head.path
        method = head.method
        if path == "*":
            return Reply(200, "OPTIONS * asks about the server itself", ALLOW_ALL, b"")
        page = self._status_paths.get(path)
        if page is not None:
            if not self.config.status.allows(conn.client_ip):
                return Reply(404, f"{conn.client_ip} is not in [status] allow")
            if page == "cache":
                return self._cache_page(head)
            if method not in _GET_HEAD:
                return Reply(405, "the status pages answer GET and HEAD", ALLOW_GET_HEAD)
            return StatusPage(page)
        http01 = self._http01
        if http01 is not None and conn.scheme == b"http" and path.startswith(CHALLENGE_PATH):
            answer = http01.answer(path, head.host or conn.local)
            if answer is not None:
                status, why, body = answer
                if method not in _GET_HEAD:
                    return Reply(405, "ACME http-01 challenges answer GET and HEAD", ALLOW_GET_HEAD)
                return Reply(status, why, CHALLENGE_TYPE if body is not None else (), body, handler="acme")
        tls = self.config.tls
        if tls is not None and tls.redirect_http and conn.scheme == b"http":
            location = https_location(head.host or conn.local, head.target, conn.https_port or 443)
            return Reply(308, "[tls] redirect_http", ((b"location", location),), handler="redirect")
        sites = self.sites
        site = sites.only
        if site is None:
            site = sites.pick(head.host or conn.local)
            if site is None:
                return _unknown_host(head.host or conn.local, conn)
        route = site.router.match(path)
        if route is None:
            return Reply(404, "no route matches")
        if site.policies:
            policy = site.policies.get(id(route))
            if policy is not None:
                return self._with_policy(route, policy, head, conn, request_id, trace)
        if route.static is not None and method in _GET_HEAD:
            return Static(route, self._forward(route, head, conn) if route.upstream else None)
        if route.cache and method == b"PURGE":
            return self._purge(route, head, conn)
        if route.upstream:
            return self._forward(route, head, conn)
        return Reply(405, f"static route; {method.decode()} is not GET or HEAD", ALLOW_GET_HEAD)

    def _forward(self, route: Route, head, conn: ConnFacts, policy: RoutePolicy | None = None,
                 applied: Applied | None = None) -> Forward | Reply:
        if head.upgrade is None:  # the rules found no request to switch protocols (the usual case)
            if policy is None:
                if route.cache:
                    return Forward(route, route.upstream, head.host or conn.local, None, None, None,
                                   self._cache_use(route, head, conn))
                return Forward(route, route.upstream, head.host or conn.local, None)
            wanted = None
        else:
            upstream = self.config.upstreams[route.upstream]
            try:
                wanted = upgrade_rules.decide(head.headers, head.http_version, upstream.upgrade)
            except ClientError as exc:
                allowed = ", ".join(upstream.upgrade) or "no upgrades"
                return Reply(exc.status, f"{exc} (upstream {upstream.name!r} allows {allowed})",
                             keep_alive=exc.keep_alive, policy=applied)
        cache = self._cache_use(route, head, conn) if route.cache and wanted is None else None
        if policy is None:
            return Forward(route, route.upstream, head.host or conn.local, wanted, None, None, cache)
        target = policy.target(head) if policy.rewrite else None
        return Forward(route, route.upstream, head.host or conn.local, wanted,
                       None if target == head.target else target, applied, cache)

    # --- the response cache ---

    def _cache_use(self, route: Route, head, conn: ConnFacts) -> cache_rules.CacheUse:
        if not head.host:  # an HTTP/1.0 request without Host: the address it reached is the host in the key
            head = head._replace(host=conn.local)
        return cache_rules.use(head, conn.scheme, self.config.caches[route.cache])

    def _purge(self, route: Route, head, conn: ConnFacts) -> Purge | Reply:
        if not (self.config.status or Status()).allows(conn.client_ip):
            return Reply(405, f"PURGE is for the [status] allow networks, not {conn.client_ip}", ALLOW_ALL)
        return Purge((route.cache,), uri=cache_rules.effective_uri(conn.scheme, head.host or conn.local, head.target))

    def _cache_page(self, head) -> Purge | Reply:
        if head.method != b"DELETE":
            return Reply(405, "the cache page answers DELETE ?key=...", ((b"allow", b"DELETE"),))
        keys = [unquote_to_bytes(value) for name, _, value in (p.partition(b"=") for p in head.query.split(b"&"))
                if name == b"key" and value]
        if len(keys) != 1:
            return Reply(400, "DELETE on the cache page takes one ?key=KEY (a trailing * for every key it begins)")
        return Purge(tuple(self.config.caches), key=keys[0])

    # --- a route with a policy (http/policy.py: the order of the steps and why) ---

    def _with_policy(self, route: Route, policy: RoutePolicy, head, conn: ConnFacts, request_id: bytes,
                     trace: list[str] | None) -> Action:
        # Lines for explain are made only when it asks (``trace``): the server pays for none of them.
        client_ip = conn.client_ip
        wait = 0.0
        zone = policy.rate
        if zone is not None:
            settings = zone.settings
            key = client_ip if settings.key == "client_ip" else limit_key(settings.key, head, client_ip)
            verdict = zone.take(hash(key), self.clock()) if key is not None else None
            if trace is not None:
                trace.append(_rate_line(settings, key, verdict))
            if verdict is not None:
                if not verdict.allowed:
                    return Reply(429, f"over rate_limits.{settings.name}",
                                 ((b"retry-after", b"%d" % verdict.retry_after),), policy=policy.plain)
                wait = verdict.wait
        applied = policy.plain
        if policy.conns is not None:
            key = limit_key(route.conn_limit_key, head, client_ip)
            if key is not None:
                hold = hash(f"{route.where}\0{key}")
                counted = policy.conns.acquire(hold, route.conn_limit)
                if trace is not None:
                    trace.append(f"conns:   conn_limit {route.conn_limit} per {route.conn_limit_key} {key!r}: "
                                 + ("counted while in progress" if counted else "that many are in progress"))
                if not counted:
                    return Reply(route.conn_limit_status, f"conn_limit ({route.conn_limit}) reached for {key}",
                                 policy=applied)
                applied = Applied(policy, hold)
        if policy.allow or policy.deny:
            why = policy.refuses(client_ip)
            if trace is not None:
                trace.append(f"access:  {why or policy.allowed_by(client_ip)}")
            if why is not None:
                return Reply(403, why, policy=applied)
        credentials = None
        auth = policy.auth
        if auth is not None:
            found = auth.credentials(head)
            if type(found) is str:
                if trace is not None:
                    trace.append(f"auth:    basic, realm {auth.settings.realm!r}: {found}")
                return Reply(401, found, auth.challenge, policy=applied)
            known = auth.known_good(found)
            if trace is not None:
                trace.append(f"auth:    basic, realm {auth.settings.realm!r}: user {found.user!r}, "
                             + ("checked before" if known else "checked (bcrypt, off the event loop) before the rest"))
            if not known:
                credentials = found
        action = self._content(route, policy, applied, head, conn, request_id, trace)
        if credentials is not None:
            action = Check(credentials, action, Reply(401, f"wrong credentials for {credentials.user!r}",
                                                      auth.challenge, policy=applied), applied)
        if wait:
            action = Delayed(wait, action, applied)
        return action

    def _content(self, route: Route, policy: RoutePolicy, applied: Applied, head, conn: ConnFacts,
                 request_id: bytes, trace: list[str] | None) -> Action:
        method = head.method
        if route.redirect is not None:
            values = Vars(head, head.host or conn.local, conn.scheme, conn.client_ip, request_id, route.prefix)
            location = route.redirect.expand(values)
            if trace is not None:
                trace.append(f"redirect: {route.redirect} -> {location.decode('latin-1')}")
            return Reply(route.redirect_status, "redirect", ((b"location", location),), handler="redirect",
                         policy=applied)
        if route.static is not None and method in _GET_HEAD:
            otherwise = self._forward(route, head, conn, policy, applied) if route.upstream else None
            return Static(route, otherwise, applied)
        if route.cache and method == b"PURGE":
            return self._purge(route, head, conn)
        if route.upstream:
            return self._forward(route, head, conn, policy, applied)
        return Reply(405, f"static route; {method.decode()} is not GET or HEAD", ALLOW_GET_HEAD, policy=applied)


class Seen:
    """What a refused request's head says of its target and host (codec.RefusedHead keeps only the line
    and the fields), for the error page and header rules of the route it named."""

    __slots__ = ("target", "path", "query", "host")

    def __init__(self, target: bytes, path: str, query: bytes, host: bytes) -> None:
        self.target, self.path, self.query, self.host = target, path, query, host

    @classmethod
    def of(cls, refused) -> "Seen | None":
        """None when the line or the path is what was wrong with it."""
        try:
            target = refused.request_line.split(" ")[1].encode("latin-1")
            origin, raw_path, query, host = split_target(target, refused.get(b"host") or b"")
            return cls(origin, normalize_path(raw_path), query, host)
        except (ClientError, IndexError):
            return None


def _none_pending(token: str) -> None:
    return None


def _has_policy(route: Route) -> bool:
    return bool(route.redirect is not None or route.strip_prefix or route.upstream_prefix or route.request_headers
                or route.response_headers or route.error_pages or route.allow or route.deny or route.basic_auth
                or route.rate_limit or route.conn_limit)


def _unknown_host(host: bytes, conn: ConnFacts) -> Reply:
    if misdirected(host, conn.scheme, conn.server_name):
        return Reply(421, f"no site serves {host.decode('latin-1')} (the connection was made for "
                          f"{conn.server_name})")
    return Reply(404, f"no site serves {host.decode('latin-1')}")


def _rate_line(settings, key: str | None, verdict) -> str:
    """What a rate limit did, for explain."""
    if key is None:
        return f"rate:    rate_limits.{settings.name}: no {settings.key[7:]} header, not counted"
    about = f"rate:    rate_limits.{settings.name} ({settings.rate:g}r/s, burst {settings.burst}) for {settings.key} " \
            f"{key!r}"
    if not verdict.allowed:
        return f"{about}: over the limit"
    return f"{about}: within it" + (f", held {verdict.wait:.3g}s (beyond delay {settings.delay})"
                                    if verdict.wait else "")


def decide(head, conn: ConnFacts, config: Config) -> Action:
    """What ``head`` gets; see the module docstring. Builds a Decider: servers keep one instead."""
    return Decider(config).decide(head, conn)
