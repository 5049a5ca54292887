"""Which requests may become tunnels (http/upgrade.py), and what the upstream and the client are sent."""

from __future__ import annotations

import pytest

from proxy.errors import ClientError
from proxy.http.headers import upstream_request_headers
from proxy.http.upgrade import Upgrade, decide, requested, switching_headers

WS = [(b"host", b"x"), (b"connection", b"Upgrade"), (b"upgrade", b"websocket"),
      (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"sec-websocket-version", b"13")]


def headers(connection: bytes | None, upgrade: bytes | None) -> list[tuple[bytes, bytes]]:
    out = [(b"host", b"x")]
    if connection is not None:
        out.append((b"connection", connection))
    if upgrade is not None:
        out.append((b"upgrade", upgrade))
    return out


# (Connection, Upgrade, HTTP version, allowed) -> the protocol to tunnel, None (plain HTTP), or 400
CASES = [
    (b"Upgrade", b"websocket", b"1.1", ("websocket",), b"websocket"),
    (b"keep-alive, Upgrade", b"WebSocket", b"1.1", ("websocket",), b"WebSocket"),
    (b"upgrade", b"foo/2, websocket", b"1.1", ("websocket",), b"websocket"),
    (b"upgrade", b"foo/2", b"1.1", ("websocket", "foo"), b"foo/2"),
    (None, b"websocket", b"1.1", ("websocket",), None),  # Upgrade not named by Connection: not a request
    (b"Upgrade", None, b"1.1", ("websocket",), None),
    (b"Upgrade", b"websocket", b"1.0", ("websocket",), None),  # RFC 9110 7.8: ignored in HTTP/1.0
    (b"Upgrade, HTTP2-Settings", b"h2c", b"1.1", ("websocket",), None),  # curl --http2: ignored
    (b"Upgrade", b"h2c, foo", b"1.1", ("websocket",), 400),
    (b"Upgrade", b"foo", b"1.1", ("websocket",), 400),
    (b"Upgrade", b"websocket", b"1.1", (), 400),
]


@pytest.mark.parametrize("connection, upgrade, version, allowed, expected", CASES)
def test_decide(connection, upgrade, version, allowed, expected):
    given = headers(connection, upgrade)
    if expected == 400:
        with pytest.raises(ClientError) as caught:
            decide(given, version, allowed)
        assert caught.value.status == 400 and caught.value.keep_alive
    else:
        assert decide(given, version, allowed) == (Upgrade(expected) if expected else None)


def test_requested_lists_every_token_in_order():
    assert requested(headers(b"upgrade", b"a, b/1") + [(b"upgrade", b"c")], b"1.1") == (b"a", b"b/1", b"c")


def test_upstream_gets_connection_and_upgrade_only_for_an_allowed_upgrade():
    common = dict(host=b"x", client_ip="127.0.0.1", scheme=b"http", request_id=b"r", via=b"1.1 twotier",
                  body_length=None)
    plain = upstream_request_headers(WS, **common)
    assert not [n for n, _ in plain if n in (b"connection", b"upgrade")]
    tunnelled = upstream_request_headers(WS, **common, upgrade=b"websocket")
    assert [(n, v) for n, v in tunnelled if n in (b"connection", b"upgrade")] == [
        (b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    assert (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==") in tunnelled  # end-to-end: always kept


def test_switching_headers_keep_the_handshake_and_rewrite_hop_by_hop():
    upstream = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade, X-Private"), (b"x-private", b"1"),
                (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), (b"server", b"gunicorn")]
    out = switching_headers(upstream, via=b"1.1 twotier")
    assert out == [(b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), (b"via", b"1.1 twotier"),
                   (b"connection", b"upgrade"), (b"upgrade", b"websocket")]
