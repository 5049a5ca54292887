"""``proxy explain``: what the proxy would do with one request, without sending anything.

A dry run through the same code the server runs: the request is built as
bytes and fed to the request parser of the configured engine (so every rule
applies), ``Decider.decide`` (http/decide.py) chooses the action, and this
module prints it: the static file the open-file cache would find, the server
the balancer would pick, and the headers ``upstream_request_headers`` would
send. For teaching, and for debugging a configuration.
"""

from __future__ import annotations

from pathlib import Path

from .config import Config
from .errors import ClientError
from .http import codec, static
from .http.decide import ConnFacts, Decider, Forward, Reply, Static, StatusPage
from .http.headers import connection_tokens, request_id, upstream_request_headers, why_dropped


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


def parse(cfg: Config, raw: bytes):
    """The RequestHead the server would work from, or the ClientError that refuses the bytes."""
    parser = codec.request_parser(cfg.server.http_engine, cfg.limits)
    parser.feed(raw)
    event = parser.next_event()
    if type(event) is not codec.RequestHead:
        raise ClientError("incomplete request", 400)
    return event


def explain(cfg: Config, method: str, target: str, headers: list[tuple[str, str]],
            client_ip: str = "127.0.0.1", scheme: str = "http") -> str:
    listen = cfg.server.listen[0]
    raw = build_request(method, target, headers, str(listen))
    try:
        head = parse(cfg, raw)
    except ClientError as exc:
        return f"request: {method} {target}\nanswer:  {exc.status} from the proxy itself: {exc}\n" \
               "(refused before routing: nothing would reach an upstream)"
    decider = Decider(cfg)
    facts = ConnFacts(scheme.encode(), client_ip, str(listen).encode(), cfg.tls.listen[0].port if cfg.tls else None)
    action = decider.decide(head, facts)
    out = [f"request: {head.request_line}  (from {client_ip}, Host: {head.host.decode()})",
           f"path:    {head.path}  (decoded and normalised; routing uses this)"]
    route = getattr(action, "route", None)
    if route is None and type(action) is Reply and head.path != "*":
        route = decider.route(head.path)
    if route is not None:
        matching = [r.prefix for r in decider.matching(head.path)]
        others = f"; also matched: {', '.join(matching[1:])}" if len(matching) > 1 else ""
        out.append(f"route:   {route.where} prefix {route.prefix!r} (the longest matching prefix{others})")
    out += describe(cfg, action, head, facts, headers)
    return "\n".join(out)


def describe(cfg: Config, action, head, facts: ConnFacts, headers: list[tuple[str, str]]) -> list[str]:
    """The lines that say what ``action`` does with ``head``."""
    kind = type(action)
    if kind is StatusPage:
        return [f"answer:  200 the proxy's own {action.kind} page"]
    if kind is Reply:
        return [_reply_line(action)]
    if kind is Static:
        line, answered = _explain_static(action.route, head)
        if answered or action.otherwise is None:
            return [line]
        return [line, *describe(cfg, action.otherwise, head, facts, headers)]
    return _explain_forward(cfg, action, head, facts, headers)


def _reply_line(reply: Reply) -> str:
    if reply.status == 404 and reply.why.endswith("[status] allow"):
        return f"answer:  404 ({reply.why}: the status pages stay hidden)"
    location = next((v for n, v in reply.headers if n == b"location"), None)
    if location is not None:
        return f"answer:  {reply.status} to {location.decode('latin-1')} ({reply.why})"
    return f"answer:  {reply.status} from the proxy: {reply.why}"


def _explain_static(route, head) -> tuple[str, bool]:
    """One line about the file; True when the file answers the request (no forwarding)."""
    try:
        found = static.lookup(route, head.path, head.query)
    except ClientError as exc:
        where = Path(route.static, head.path[len(route.prefix):].lstrip("/"))
        if route.upstream and exc.status == 404:
            return f"static:  no file {where} ({exc}) -> forwarded to upstream {route.upstream!r}", False
        return f"answer:  {exc.status} from the proxy: {exc} ({where})", True
    if type(found) is static.Redirect:
        return f"answer:  301 to {found.location.decode()} (a folder: the trailing slash is added)", True
    if type(found) is static.Listing:
        return f"answer:  200 listing of {found.folder} (autoindex)", True
    variant = found.choose(head.get(b"accept-encoding"))
    plan = static.plan(variant, head.method, head.headers)
    encoding = f", Content-Encoding {variant.encoding.decode()}" if variant.encoding else ""
    return (f"file:    {variant.path} ({variant.content_type.decode()}{encoding}, {variant.size} bytes) "
            f"-> {plan.status} from the proxy, the app tier is not involved"), True


def _explain_forward(cfg: Config, action: Forward, head, facts: ConnFacts,
                     headers: list[tuple[str, str]]) -> list[str]:
    upstream = cfg.upstreams[action.group]
    out = [_explain_server(upstream, facts.client_ip)]
    wanted = action.upgrade
    if wanted is not None:
        out.append(f"upgrade: {wanted.protocol.decode('latin-1')}: Connection and Upgrade are forwarded; if the "
                   f"server answers 101 both connections become a tunnel of raw bytes (closed after "
                   f"{upstream.websocket_idle_timeout:g}s without one)")
    rid = request_id(head.get(b"x-request-id"))
    body_length = head.content_length if head.has_body else None
    forwarded = upstream_request_headers(
        head.headers, host=action.host, client_ip=facts.client_ip, scheme=facts.scheme, request_id=rid,
        via=b"1.1 " + cfg.server.name.encode(), body_length=body_length,
        upgrade=wanted.protocol if wanted is not None else None)
    named = connection_tokens([(n.lower().encode(), v.encode()) for n, v in headers])
    for name, _ in headers:
        if wanted is not None and name.lower() in ("connection", "upgrade"):
            continue  # passed on, rewritten to exactly "upgrade" and the protocol
        reason = why_dropped(name.lower().encode(), named)
        if reason:
            out.append(f"dropped: {name}: {reason}")
    out.append("sent upstream (hop-by-hop headers removed, forwarding headers set by the proxy):")
    out.append(f"  {head.method.decode()} {head.target.decode()} HTTP/1.1")
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
            f"first pick of {len(group.peers)} known server(s){late})")
