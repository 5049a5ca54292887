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
from .http.decide import Check, ConnFacts, Decider, Delayed, Forward, Reply, Static, StatusPage
from .http.headers import connection_tokens, request_id, upstream_request_headers, why_dropped
from .http.placeholders import Vars


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
    lines, status = describe(cfg, action, head, facts, shown, rid)
    return Explanation(tuple(out + lines), status, forwarded=status is None)


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
             rid: bytes = b"") -> tuple[list[str], int | None]:
    """The lines that say what ``action`` does with ``head``, and the status the proxy would answer
    (None: forwarded)."""
    kind = type(action)
    if kind is StatusPage:
        return [f"answer:  200 the proxy's own {action.kind} page"], 200
    if kind is Delayed:
        lines, status = describe(cfg, action.then, head, facts, headers, rid)
        return [f"delay:   {action.seconds:.3g}s (rate limit), then:", *lines], status
    if kind is Check:
        credentials = action.credentials
        if credentials.verify():
            lines, status = describe(cfg, action.then, head, facts, headers, rid)
            return [f"auth:    user {credentials.user!r}: the password matches", *lines], status
        return [f"auth:    user {credentials.user!r}: wrong user or password (logged)",
                *_response_lines(cfg, action.otherwise, head, facts, rid)], action.otherwise.status
    lines = _response_lines(cfg, action, head, facts, rid)
    if kind is Reply:
        return [_reply_line(action), *lines], action.status
    if kind is Static:
        line, status = _explain_static(action.route, head)
        if status is not None or action.otherwise is None:
            return [line, *lines], status if status is not None else 404
        more, status = describe(cfg, action.otherwise, head, facts, headers, rid)
        return [line, *more], status
    return _explain_forward(cfg, action, head, facts, headers, rid) + lines, None


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


def _explain_static(route, head) -> tuple[str, int | None]:
    """One line about the file, and the status it gets (None: no file, the upstream of the route takes it)."""
    try:
        found = static.lookup(route, head.path, head.query)
    except ClientError as exc:
        where = Path(route.static, head.path[len(route.prefix):].lstrip("/"))
        if route.upstream and exc.status == 404:
            return f"static:  no file {where} ({exc}) -> forwarded to upstream {route.upstream!r}", None
        return f"answer:  {exc.status} from the proxy: {exc} ({where})", exc.status
    if type(found) is static.Redirect:
        return f"answer:  301 to {found.location.decode()} (a folder: the trailing slash is added)", 301
    if type(found) is static.Listing:
        return f"answer:  200 listing of {found.folder} (autoindex)", 200
    variant = found.choose(head.get(b"accept-encoding"))
    plan = static.plan(variant, head.method, head.headers)
    encoding = f", Content-Encoding {variant.encoding.decode()}" if variant.encoding else ""
    return (f"file:    {variant.path} ({variant.content_type.decode()}{encoding}, {variant.size} bytes) "
            f"-> {plan.status} from the proxy, the app tier is not involved"), plan.status


def _explain_forward(cfg: Config, action: Forward, head, facts: ConnFacts,
                     headers: list[tuple[str, str]], rid: bytes) -> list[str]:
    upstream = cfg.upstreams[action.group]
    out = [_explain_server(upstream, facts.client_ip)]
    wanted = action.upgrade
    if wanted is not None:
        out.append(f"upgrade: {wanted.protocol.decode('latin-1')}: Connection and Upgrade are forwarded; if the "
                   f"server answers 101 both connections become a tunnel of raw bytes (closed after "
                   f"{upstream.websocket_idle_timeout:g}s without one)")
    body_length = head.content_length if head.has_body else None
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
