"""``proxy explain``: what the proxy would do with one request, without sending anything.

A dry run through the same code the server runs: the request is built as
bytes and fed to the request parser of the configured engine (so every rule
applies), ``Decider.decide`` (http/decide.py) chooses the action, and this
module prints it: the static file the open-file cache would find, the server
the balancer would pick, and the headers ``upstream_request_headers`` would
send. For teaching, and for debugging a configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Config, UnixAddress, authority
from .errors import ClientError
from .http import codec, static
from .http.cache import CONDITIONAL
from .http.decide import Check, ConnFacts, Decider, Delayed, Forward, Purge, Reply, Static, StatusPage
from .http.encoding import choose, negotiate
from .http.headers import connection_tokens, request_id, upstream_request_headers, why_dropped
from .http.placeholders import Vars
from .http.responses import HTML, error_page


class _StillClock:
    """The balancer's bookkeeping needs a clock; a dry run has no passing time."""

    @staticmethod
    def time() -> float:
        return 0.0


def build_request(method: str, target: str, headers: list[tuple[str, str]], host: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if not any(name.lower() == "host" for name, _ in headers):
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Unanswered(Exception):
    """The bytes hold no complete request: the proxy would wait, then answer 408 (``status``) or,
    when not one byte of a request came, close without a word (``status`` None)."""

    def __init__(self, status: int | None) -> None:
        super().__init__("incomplete request")
        self.status = status


def parse(cfg: Config, raw: bytes, eof: bool = False):
    """The RequestHead the server would work from, once the whole first request (body included)
    was read as the server reads it; or the ClientError that refuses it, or Unanswered."""
    parser = codec.request_parser(cfg.server.http_engine, cfg.limits)
    parser.feed(raw)
    if eof:
        parser.feed(b"")
    head = None
    while True:
        event = parser.next_event()
        if type(event) is codec.RequestHead:
            head = event
        elif event is codec.EndOfMessage:
            return head
        elif event is codec.NEED_DATA:
            raise Unanswered(408 if head is not None or parser.head_started else None)
        elif event is codec.CLOSED:
            raise Unanswered(None)


@dataclass(frozen=True)
class Explanation:
    """What the proxy would do: the lines ``proxy explain`` prints, the status of the answer the proxy
    itself would make, and whether the request would be forwarded (then the upstream answers; status None).
    Neither: no answer at all."""

    lines: tuple[str, ...]
    status: int | None
    forwarded: bool = False
    encoding: str | None = None  # the Content-Encoding of the answer the proxy itself would make

    def __str__(self) -> str:
        return "\n".join(self.lines)


def explain(cfg: Config, method: str, target: str, headers: list[tuple[str, str]],
            client_ip: str = "127.0.0.1", scheme: str = "http", server_name: str | None = None) -> str:
    raw = build_request(method, target, headers, authority(cfg.server.listen[0].address))
    return str(explain_bytes(cfg, raw, client_ip, scheme, shown=headers, server_name=server_name))


def explain_bytes(cfg: Config, raw: bytes, client_ip: str = "127.0.0.1", scheme: str = "http",
                  shown: list[tuple[str, str]] | None = None, eof: bool = False,
                  server_name: str | None = None) -> Explanation:
    """The first request in ``raw``, as the server would take it (the corpus tests feed raw bytes here).
    ``server_name``: the SNI name of a TLS connection (``scheme`` "https")."""
    local = authority(cfg.server.listen[0].address)
    line = raw.lstrip(b"\r\n").split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")[:200]
    try:
        head = parse(cfg, raw, eof)
    except ClientError as exc:
        return Explanation((f"request: {line}", f"answer:  {exc.status} from the proxy itself: {exc}",
                            "(refused before routing: nothing would reach an upstream)"), exc.status)
    except Unanswered as wait:
        if wait.status is None:
            return Explanation((f"request: {line}", "answer:  none: no request came, the connection is closed"), None)
        return Explanation((f"request: {line}", "answer:  408 once header_timeout or body_timeout passes: "
                            "the request is incomplete"), 408)
    if shown is None:
        shown = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers]
    decider = Decider(cfg)
    https_ports = [e.address.port for e in (cfg.tls.listen if cfg.tls else ()) if type(e.address) is not UnixAddress]
    connection = ConnFacts(scheme.encode(), client_ip, local.encode(), https_ports[0] if https_ports else None,
                           server_name)
    facts = decider.request_facts(head.headers, connection)
    rid = request_id(head.get(b"x-request-id"))
    trace: list[str] = []
    action = decider.decide(head, facts, rid, trace)
    out = [f"request: {head.request_line}  (from {client_ip}, Host: {head.host.decode('latin-1')})",
           f"path:    {head.path}  (decoded and normalised; routing uses this)"]
    out += _client_lines(cfg)
    if facts.peer is not None:
        out.append(f"client:  {facts.client_ip} (X-Forwarded-For: {facts.peer} is in [server] trusted_proxies)")
    elif decider.trusted is not None:
        out.append(f"client:  {facts.client_ip} (" + ("X-Forwarded-For names no other client)"
                                                       if decider.trusted.trusts(client_ip)
                                                       else "not a trusted proxy: X-Forwarded-For is ignored)"))
    site = decider.site_for(head, facts) if head.path != "*" else None
    if decider.sites.only is None and head.path != "*":
        out.append(_site_line(decider, head, facts, site))
    route = _route_of(action)
    if route is None and type(action) is Reply and site is not None:
        route = site.router.match(head.path)
    if route is not None and site is not None:
        matching = [r.prefix for r in site.router.matching(head.path)]
        others = f"; also matched: {', '.join(matching[1:])}" if len(matching) > 1 else ""
        out.append(f"route:   {route.where} prefix {route.prefix!r} (the longest matching prefix{others})")
    out += trace
    lines, status, coding = describe(cfg, action, head, facts, shown, rid)
    if route is not None and route.compress is not None and type(action) is not Reply:
        lines.append(_compress_line(route.compress, head))
    return Explanation(tuple(out + lines), status, forwarded=status is None, encoding=coding)


def _compress_line(policy, head) -> str:
    coding = negotiate(head.get(b"accept-encoding"), policy.codings)
    if coding is None:
        return (f"compress: none for this Accept-Encoding (the route offers {', '.join(policy.encodings)}); "
                "answers that could be compressed say Vary: Accept-Encoding")
    return (f"compress: {coding.decode()} at level {policy.levels[coding]} for answers without Content-Encoding "
            f"of {', '.join(policy.types)} and {policy.min_length} bytes or more (or of unknown length)")


def _route_of(action):
    while type(action) in (Check, Delayed):
        action = action.then
    return getattr(action, "route", None)


def _site_line(decider: Decider, head, facts: ConnFacts, site) -> str:
    host = (head.host or facts.local).decode("latin-1")
    if site is None:
        return f"site:    none serves Host {host!r}, and no site is the default"
    names = ", ".join(site.site.names) or "no names"
    how = "its names" if decider.sites.named(head.host or facts.local) else "the default site"
    return f"site:    {site.site.where} ({names}) for Host {host!r}, by {how}"


def _client_lines(cfg: Config) -> list[str]:
    """Where the client address comes from on listeners that do not take it from the TCP peer."""
    entries = [*cfg.server.listen, *(cfg.tls.listen if cfg.tls else ())]
    proxied = [str(e.address) for e in entries if e.proxy_protocol]
    unix = [str(e.address) for e in entries if type(e.address) is UnixAddress and not e.proxy_protocol]
    out = []
    if proxied:
        out.append(f"client:  on {', '.join(proxied)} (proxy_protocol) the address its PROXY header names "
                   "(what --client-ip stands for here)")
    if unix:
        out.append(f"client:  on {', '.join(unix)} \"unix:\" (a unix socket's client has no address)")
    return out


def describe(cfg: Config, action, head, facts: ConnFacts, headers: list[tuple[str, str]],
             rid: bytes = b"") -> tuple[list[str], int | None, str | None]:
    """The lines that say what ``action`` does with ``head``, the status the proxy would answer
    (None: forwarded) and the Content-Encoding of that answer (None: identity, or forwarded)."""
    kind = type(action)
    if kind is StatusPage:
        return [f"answer:  200 the proxy's own {action.kind} page"], 200, None
    if kind is Delayed:
        lines, status, coding = describe(cfg, action.then, head, facts, headers, rid)
        return [f"delay:   {action.seconds:.3g}s (rate limit), then:", *lines], status, coding
    if kind is Check:
        credentials = action.credentials
        if credentials.verify():
            lines, status, coding = describe(cfg, action.then, head, facts, headers, rid)
            return [f"auth:    user {credentials.user!r}: the password matches", *lines], status, coding
        refused = action.otherwise
        return [f"auth:    user {credentials.user!r}: wrong user or password (logged)",
                *_response_lines(cfg, refused, head, facts, rid)], refused.status, _reply_coding(cfg, refused, head)
    if kind is Purge:
        return _explain_purge(action), 200, None
    lines = _response_lines(cfg, action, head, facts, rid)
    if kind is Reply:
        coding = _reply_coding(cfg, action, head)
        coded = [f"compress: the page goes out with Content-Encoding {coding} (the route's compress)"] if coding else []
        return [_reply_line(action), *lines, *coded], action.status, coding
    if kind is Static:
        line, status, coding = _explain_static(cfg, action, head)
        if status is not None or action.otherwise is None:
            return [line, *lines], status if status is not None else 404, coding
        more, status, coding = describe(cfg, action.otherwise, head, facts, headers, rid)
        return [line, *more], status, coding
    return _explain_forward(cfg, action, head, facts, headers, rid) + lines, None, None


def _response_lines(cfg: Config, action, head, facts: ConnFacts, rid: bytes) -> list[str]:
    """What the route's policy does to the answer: header rules and error pages."""
    applied = action.policy
    if applied is None:
        return []
    policy = applied.policy
    out = []
    if policy.response_rules is not None:
        values = Vars(head, head.host or facts.local, facts.scheme, facts.client_ip, rid, policy.prefix)
        out.append("response headers (response_headers): " + "; ".join(policy.response_rules.describe(values)))
    status = getattr(action, "status", None)
    if status is not None and status >= 400 and policy.pages is not None and policy.pages.file(status):
        out.append(f"page:    {policy.pages.file(status)} (error_pages)")
    elif policy.pages is not None:
        codes = ", ".join(sorted(policy.pages.files))
        also = " and upstream errors (intercept_errors)" if policy.intercept else ""
        out.append(f"pages:   error_pages for {codes}: the proxy's own errors{also}")
    return out


def _reply_line(reply: Reply) -> str:
    if reply.status == 404 and reply.why.endswith("[status] allow"):
        return f"answer:  404 ({reply.why}: the status pages stay hidden)"
    location = next((v for n, v in reply.headers if n == b"location"), None)
    if location is not None:
        return f"answer:  {reply.status} to {location.decode('latin-1')} ({reply.why})"
    return f"answer:  {reply.status} from the proxy: {reply.why}"


def _explain_static(cfg: Config, action: Static, head) -> tuple[str, int | None, str | None]:
    """One line about the file, the status it gets (None: no file, the upstream of the route takes it)
    and the Content-Encoding of the answer."""
    route = action.route
    try:
        found = static.lookup(route, head.path, head.query)
    except ClientError as exc:
        where = Path(route.static, head.path[len(route.prefix):].lstrip("/"))
        if route.upstream and exc.status == 404:
            return f"static:  no file {where} ({exc}) -> forwarded to upstream {route.upstream!r}", None, None
        coding = _error_coding(cfg, route, action.policy, head, exc.status, exc.headers)
        coded = f", Content-Encoding {coding}" if coding else ""
        return f"answer:  {exc.status} from the proxy: {exc} ({where}{coded})", exc.status, coding
    if type(found) is static.Redirect:
        coding = _coded(route, head, 301, (HTML,), len(error_page(301, cfg.server.name.encode())))
        return f"answer:  301 to {found.location.decode()} (a folder: the trailing slash is added)", 301, coding
    if type(found) is static.Listing:
        page = static.listing_page(found.folder, found.url_path, route.dotfiles)
        coding = _coded(route, head, 200, ((b"content-type", b"text/html"),), len(page))
        coded = f", Content-Encoding {coding}" if coding else ""
        return f"answer:  200 listing of {found.folder} (autoindex{coded})", 200, coding
    accept = head.get(b"accept-encoding")
    variant = found.choose(accept)
    coding = static.coding_for(found, variant, route, head.headers, accept)
    if coding is not None:
        variant = static.encode(found, coding, route.compress.levels[coding]) or variant
    plan = static.plan(variant, head.method, head.headers)
    encoding = f", Content-Encoding {variant.encoding.decode()}" if variant.encoding else ""
    if coding is not None:
        encoding += (" (compressed once, then kept in the open-file cache)" if variant.encoding == coding else
                     f", Content-Encoding {coding.decode()} (compressed as it is sent: too large to keep)")
    # What the client gets: the variant's own coding, or the one the server's seam adds on the way
    # (server/files.py: 412 is raised, so its page is the route's; 416 gets the standard page).
    sent = next((value.decode() for name, value in plan.headers if name == b"content-encoding"), None)
    if plan.status == 412:
        sent = _error_coding(cfg, route, action.policy, head, 412)
    elif plan.status == 416:
        sent = _coded(route, head, 416, (HTML, *plan.headers), len(error_page(416, cfg.server.name.encode())))
    elif sent is None:
        sent = _coded(route, head, plan.status, plan.headers, plan.content_length if plan.status != 304 else None)
    return (f"file:    {variant.path} ({variant.content_type.decode()}{encoding}, {variant.size} bytes) "
            f"-> {plan.status} from the proxy, the app tier is not involved"), plan.status, sent


def _coded(route, head, status: int, headers, length: int | None) -> str | None:
    """The coding the server gives an answer the proxy makes on ``route`` (http/encoding.py decides)."""
    if route is None or route.compress is None:
        return None
    coding = choose(route.compress, head.headers, head.get(b"accept-encoding"), status, headers, length)
    return coding.decode() if coding else None


def _error_coding(cfg: Config, route, applied, head, status: int, headers=()) -> str | None:
    """The coding of an error the proxy makes on ``route``: the page client.error_body puts in (the
    route's error page, else the standard one), compressed as the route says."""
    if route is None or route.compress is None:
        return None
    page = applied.policy.page(status) if applied is not None else None
    body, content_type = page if page is not None else (error_page(status, cfg.server.name.encode()), HTML[1])
    return _coded(route, head, status, (*headers, (b"content-type", content_type)), len(body))


def _reply_coding(cfg: Config, reply: Reply, head) -> str | None:
    """The coding of a Reply's answer. The server compresses it as its route says (client.execute), and a
    Reply knows its route through its policy: a refusal or a redirect by a route's policy."""
    applied = reply.policy
    if applied is None:
        return None
    route = applied.policy.route
    if reply.body is not None:
        return _coded(route, head, reply.status, reply.headers, len(reply.body))
    return _error_coding(cfg, route, applied, head, reply.status, reply.headers)


def _explain_forward(cfg: Config, action: Forward, head, facts: ConnFacts,
                     headers: list[tuple[str, str]], rid: bytes) -> list[str]:
    upstream = cfg.upstreams[action.group]
    out = _explain_cache(cfg, action.cache) if action.cache is not None else []
    out.append(_explain_server(upstream, facts.client_ip))
    wanted = action.upgrade
    if wanted is not None:
        out.append(f"upgrade: {wanted.protocol.decode('latin-1')}: Connection and Upgrade are forwarded; if the "
                   f"server answers 101 both connections become a tunnel of raw bytes (closed after "
                   f"{upstream.websocket_idle_timeout:g}s without one)")
    body_length = head.content_length if head.has_body else None
    filling = action.cache is not None and action.cache.mode == "lookup"
    if filling:  # what the cache sends for it (server/caching.py Filling)
        head = head._replace(method=b"GET", headers=[(n, v) for n, v in head.headers if n not in CONDITIONAL])
    forwarded = upstream_request_headers(
        head.headers, host=action.host, client_ip=facts.client_ip, scheme=facts.scheme, request_id=rid,
        via=b"1.1 " + cfg.server.name.encode(), body_length=body_length,
        upgrade=wanted.protocol if wanted is not None else None)
    target = head.target if action.target is None else action.target
    if action.target is not None:
        out.append(f"rewrite: {head.target.decode('latin-1')} -> {target.decode('latin-1')} (strip_prefix "
                   f"{str(action.route.strip_prefix).lower()}, upstream_prefix {action.route.upstream_prefix!r})")
    applied = action.policy
    rules = applied.policy.request_rules if applied is not None else None
    if rules is not None:
        values = Vars(head, action.host, facts.scheme, facts.client_ip, rid, applied.policy.prefix)
        forwarded = rules.apply(forwarded, values)
        out.append("request headers (request_headers" + (", basic_auth" if b"authorization" in rules.drop else "")
                   + "): " + "; ".join(rules.describe(values)))
    named = connection_tokens([(n.lower().encode(), v.encode()) for n, v in headers])
    for name, _ in headers:
        if wanted is not None and name.lower() in ("connection", "upgrade"):
            continue  # passed on, rewritten to exactly "upgrade" and the protocol
        reason = why_dropped(name.lower().encode(), named)
        if filling and name.lower().encode() in CONDITIONAL:
            reason = "the cache asks for the whole answer (or revalidates with its own validators) and answers " \
                     "the client's condition itself"
        if reason:
            out.append(f"dropped: {name}: {reason}")
    out.append("sent upstream (hop-by-hop headers removed, forwarding headers set by the proxy):")
    out.append(f"  {head.method.decode()} {target.decode('latin-1')} HTTP/1.1")
    out += [f"  {name.decode()}: {value.decode('latin-1')}" for name, value in forwarded]
    return out


def _explain_server(upstream, client_ip: str) -> str:
    from .upstream.group import UpstreamGroup

    group = UpstreamGroup(upstream, _StillClock())
    peer = group.pick(client_ip.encode(), set())
    named = [str(s.address) for s in upstream.servers if all(p.spec is not s for p in group.peers)]
    late = f"; resolved when the proxy runs: {', '.join(named)}" if named else ""
    if peer is None:
        return f"server:  upstream {upstream.name!r} has no address known before resolution{late}"
    return (f"server:  {peer.address} of upstream {upstream.name!r} ({upstream.balance}, "
            f"first pick of {len(group.peers)} known server(s){late}){_over(upstream, peer.spec)}")


def _over(upstream, spec) -> str:
    """How the proxy reaches the server: a unix socket, plain HTTP, or HTTPS and what it checks."""
    if type(spec.address) is UnixAddress:
        return ", over its unix socket"
    tls = upstream.tls_for(spec)
    if tls is None:
        return ""
    name = tls.server_name or spec.address.host
    if not tls.verify:
        return f", over HTTPS (SNI {name}; the certificate is not checked: verify = false)"
    trusted = f"CAs in {tls.ca_file}" if tls.ca_file else "the system's CAs"
    return f", over HTTPS (certificate checked against {trusted}, for the name {name})"


def _explain_cache(cfg: Config, use) -> list[str]:
    """What the route's cache does with the request (http/cache.py CacheUse)."""
    settings = cfg.caches[use.cache]
    if use.mode == "invalidate":
        return [f"cache:   {use.cache}: {use.why}"]
    if use.mode == "bypass":
        return [f"cache:   {use.cache}: BYPASS: {use.why}; the answer is not stored"]
    where = "memory" + (f", then the disk tier in {settings.path}" if settings.path else "")
    lines = [f"cache:   {use.cache}: key {use.key.decode('latin-1')!r} ({settings.key}), {use.why}",
             f"         a fresh entry ({where}) is the answer (HIT): the upstream below is not involved; "
             f"otherwise it goes there and an answer it allows to be stored is kept"
             + (" (not this one: the client sent no-store)" if use.no_store else "")]
    if settings.lock:
        lines.append(f"         while it is fetched, other requests for this key wait up to {settings.lock_timeout:g}s "
                     "for its answer (collapsed forwarding)")
    return lines


def _explain_purge(purge: Purge) -> list[str]:
    what = f"every entry of {purge.uri.decode('latin-1')}" if purge.uri else \
        f"the key {purge.key.decode('latin-1')!r}" + (" and every key it begins" if purge.key.endswith(b"*") else "")
    return [f"answer:  200 from the proxy: {what} removed from cache(s) {', '.join(purge.caches)} in every tier and "
            "worker (404 when none was stored)"]
