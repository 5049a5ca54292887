"""Protocol upgrades (RFC 9110 section 7.8), sans-IO: which requests may become tunnels, and the 101's headers.

Upgrade and Connection are hop-by-hop, so a proxy normally drops them
(headers.py). WebSocket (RFC 6455) is the exception: the handshake is an
HTTP/1.1 request that only the app can accept, so the proxy passes exactly
those two headers on, and if the app answers 101 the proxy stops speaking
HTTP on both connections and relays bytes (server/tunnel.py). Any other
answer is an ordinary response and the connection stays HTTP.

A request asks to upgrade only when it is HTTP/1.1 and its Connection header
names "upgrade" (a lone Upgrade header is not a request to switch: RFC 9110
7.8 makes the sender list it in Connection, and HTTP/1.0 upgrades must be
ignored). Which protocols may be tunnelled is the upstream group's
``upgrade`` list; asking for another is refused with 400, so nothing the
proxy cannot see into reaches the app by surprise (the "h2c smuggling"
family of attacks). The one exception is h2c: curl --http2 sends it on every
plain request, and RFC 9113 section 3.1 lets a server ignore it, so it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ClientError
from .headers import client_response_headers, connection_tokens

# Upgrade protocols answered as if not asked for, when the group does not allow them.
IGNORED = frozenset({b"h2c"})


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A request that will be forwarded with ``Connection: upgrade`` and ``Upgrade: protocol``."""

    protocol: bytes  # as the client wrote it, e.g. b"websocket"


def requested(headers: list[tuple[bytes, bytes]], http_version: bytes) -> tuple[bytes, ...]:
    """The protocols a request asks to switch to, in its order of preference; () for none."""
    if http_version != b"1.1" or b"upgrade" not in connection_tokens(headers):
        return ()
    out: list[bytes] = []
    for name, value in headers:
        if name == b"upgrade":
            out += [token.strip() for token in value.split(b",") if token.strip()]
    return tuple(out)


def _name(protocol: bytes) -> bytes:
    """``b"WebSocket"`` -> ``b"websocket"``; ``b"foo/2"`` -> ``b"foo"`` (protocol-version, RFC 9110 7.8)."""
    return protocol.partition(b"/")[0].lower()


def decide(headers: list[tuple[bytes, bytes]], http_version: bytes, allowed: tuple[str, ...]) -> Upgrade | None:
    """What to do with a request that is about to be forwarded.

    None: forward it as plain HTTP (no upgrade asked, or only ignorable ones);
    an Upgrade: forward that protocol and be ready for a 101;
    ClientError(400): the client asks for a protocol this group does not take.
    """
    protocols = requested(headers, http_version)
    if not protocols:
        return None
    names = {name.encode() for name in allowed}
    for protocol in protocols:
        if _name(protocol) in names:
            return Upgrade(protocol)
    if all(_name(p) in IGNORED for p in protocols):
        return None
    shown = b", ".join(protocols).decode("latin-1")
    raise ClientError(f"upgrade to {shown} is not allowed here", 400, keep_alive=True)


def switching_headers(upstream_headers: list[tuple[bytes, bytes]], *, via: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of the 101 the client receives: the upstream's end-to-end ones (Sec-WebSocket-Accept,
    -Protocol, -Extensions...), then Connection and Upgrade, the two hop-by-hop headers a 101 must carry."""
    protocol = next((v for n, v in upstream_headers if n == b"upgrade"), b"")
    extra = [(b"connection", b"upgrade")] + ([(b"upgrade", protocol)] if protocol else [])
    return client_response_headers(list(upstream_headers), via=via, extra=extra)
