"""``proxy explain``: what the proxy would do with one request, without sending anything.

A dry run through the same sans-IO code the server uses: the request is
built as bytes and fed to ``ClientConnection`` (so every check applies), the
router picks a route, ``static.lookup`` finds the file, the balancer picks a
server, and ``upstream_request_headers`` writes the headers the app tier
would receive. For teaching, and for debugging a configuration.
"""

from __future__ import annotations

from pathlib import Path

import h11

from .config import Config
from .errors import ClientError
from .http import static
from .http.headers import connection_tokens, request_id, upstream_request_headers, why_dropped
from .http import upgrade
from .http.inbound import ClientConnection
from .http.routing import Router


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


def explain(cfg: Config, method: str, target: str, headers: list[tuple[str, str]],
            client_ip: str = "127.0.0.1") -> str:
    listen = cfg.server.listen[0]
    out: list[str] = []
    raw = build_request(method, target, headers, str(listen))
    conn = ClientConnection(cfg.limits)
    conn.receive_data(raw)
    try:
        head = conn.next_event()
        if head is h11.NEED_DATA:
            raise ClientError("incomplete request", 400)
    except ClientError as exc:
        return f"request: {method} {target}\nanswer:  {exc.status} from the proxy itself: {exc}\n" \
               "(refused before routing: nothing would reach an upstream)"
    out.append(f"request: {head.request_line}  (from {client_ip}, Host: {head.host.decode()})")
    out.append(f"path:    {head.path}  (decoded and normalised; routing uses this)")

    if cfg.status is not None and head.path in (cfg.status.path, cfg.status.metrics_path):
        allowed = cfg.status.allows(client_ip)
        out.append(f"answer:  {'200 the proxy' if allowed else '404'}'s own status page"
                   f"{'' if allowed else f' ({client_ip} is not in [status] allow)'}")
        return "\n".join(out)

    router = Router(cfg.routes)
    matching = [r.prefix for r in sorted(cfg.routes, key=lambda r: len(r.prefix), reverse=True)
                if head.path.startswith(r.prefix)]
    route = router.match(head.path)
    if route is None:
        out.append("route:   none matches -> 404 from the proxy")
        return "\n".join(out)
    others = f"; also matched: {', '.join(matching[1:])}" if len(matching) > 1 else ""
    out.append(f"route:   {route.where} prefix {route.prefix!r} (the longest matching prefix{others})")

    if route.static is not None:
        if head.method in (b"GET", b"HEAD"):
            outcome = _explain_static(route, head)
            out.append(outcome[0])
            if outcome[1] or not route.upstream:
                return "\n".join(out)
        elif not route.upstream:
            out.append(f"answer:  405 (static route; {head.method.decode()} is not GET or HEAD)")
            return "\n".join(out)
        else:
            out.append(f"static:  skipped: {head.method.decode()} goes to the upstream")

    upstream = cfg.upstreams[route.upstream]
    try:
        wanted = upgrade.decide(head.headers, head.http_version, upstream.upgrade)
    except ClientError as exc:
        out.append(f"answer:  {exc.status} from the proxy: {exc} (upstream {upstream.name!r} allows "
                   f"{', '.join(upstream.upgrade) or 'no upgrades'})")
        return "\n".join(out)
    out.append(_explain_server(upstream, client_ip))
    if wanted is not None:
        out.append(f"upgrade: {wanted.protocol.decode('latin-1')}: Connection and Upgrade are forwarded; if the "
                   f"server answers 101 both connections become a tunnel of raw bytes (closed after "
                   f"{upstream.websocket_idle_timeout:g}s without one)")
    rid = request_id(head.get(b"x-request-id"))
    body_length = head.content_length if head.has_body else None
    forwarded = upstream_request_headers(
        head.headers, host=head.host, client_ip=client_ip, scheme=b"http", request_id=rid,
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
    return "\n".join(out)


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
