"""headers.py without sockets: what the upstream and the client receive."""

from __future__ import annotations

import re

import pytest

from proxy.http.headers import (
    HOP_BY_HOP, client_response_headers, connection_tokens, forwarded_for, request_id, upstream_request_headers,
    why_dropped,
)


def upstream(headers, *, host=b"example.com", client_ip="198.51.100.7", scheme=b"http", body_length=None):
    return upstream_request_headers(headers, host=host, client_ip=client_ip, scheme=scheme, request_id=b"rid-1",
                                    via=b"1.1 twotier", body_length=body_length)


def test_forwarding_headers_are_added():
    out = upstream([(b"host", b"example.com"), (b"accept", b"*/*")])
    assert out == [
        (b"host", b"example.com"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"198.51.100.7"),
        (b"x-forwarded-proto", b"http"),
        (b"x-real-ip", b"198.51.100.7"),
        (b"forwarded", b"for=198.51.100.7;proto=http;host=example.com"),
        (b"via", b"1.1 twotier"),
        (b"x-request-id", b"rid-1"),
        (b"x-forwarded-host", b"example.com"),
    ]


def test_ipv6_client_and_host_with_port_are_quoted_in_forwarded():
    out = dict(upstream([], host=b"example.com:8443", client_ip="2001:db8::1", scheme=b"https"))
    assert out[b"forwarded"] == b'for="[2001:db8::1]";proto=https;host="example.com:8443"'  # RFC 7239 section 4
    assert out[b"x-forwarded-for"] == b"2001:db8::1"


def test_no_host_means_no_host_fields():
    names = [n for n, _ in upstream([], host=b"")]
    assert b"host" not in names and b"x-forwarded-host" not in names


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_fields_are_removed(name):
    assert name not in [n for n, _ in upstream([(name, b"x"), (b"x-keep", b"1")])]


def test_fields_named_by_connection_are_removed_case_insensitively():
    out = upstream([(b"connection", b"Keep-Alive, X-Secret ,x-other"), (b"x-secret", b"1"), (b"x-other", b"2"),
                    (b"x-kept", b"3")])
    names = [n for n, _ in out]
    assert b"x-secret" not in names and b"x-other" not in names and (b"x-kept", b"3") in out


def test_client_forwarding_fields_are_replaced_never_extended():
    out = upstream([(b"x-forwarded-for", b"6.6.6.6"), (b"x-real-ip", b"6.6.6.6"), (b"forwarded", b"for=6.6.6.6"),
                    (b"x-forwarded-host", b"evil"), (b"x-forwarded-proto", b"https"), (b"x-forwarded-port", b"1"),
                    (b"x-forwarded-prefix", b"/admin")])
    flat = b"\n".join(n + b": " + v for n, v in out)
    assert b"6.6.6.6" not in flat and b"evil" not in flat and b"/admin" not in flat and b"https" not in flat
    assert [n for n, _ in out].count(b"x-forwarded-for") == 1


def test_underscored_names_are_dropped():
    assert [n for n, _ in upstream([(b"x_auth_user", b"admin"), (b"x-a", b"1")])].count(b"x_auth_user") == 0


def test_proxy_header_is_dropped_httpoxy():
    # CVE-2016-5385: WSGI turns "Proxy:" into HTTP_PROXY, which HTTP client libraries take as their proxy.
    out = upstream([(b"proxy", b"http://evil.example:3128"), (b"x-a", b"1")])
    assert b"proxy" not in [n for n, _ in out] and (b"x-a", b"1") in out
    assert why_dropped(b"proxy", set()).startswith("httpoxy")


def test_client_framing_is_replaced_by_ours():
    out = upstream([(b"content-length", b"99"), (b"transfer-encoding", b"chunked"), (b"expect", b"100-continue")],
                   body_length=5)
    assert [(n, v) for n, v in out if n in (b"content-length", b"transfer-encoding", b"expect")] == [
        (b"content-length", b"5")]
    assert b"content-length" not in [n for n, _ in upstream([(b"content-length", b"0")])]


def test_an_empty_body_is_still_framed():
    assert (b"content-length", b"0") in upstream([], body_length=0)


def test_client_via_is_extended():
    assert dict(upstream([(b"via", b"1.0 fred")]))[b"via"] == b"1.0 fred, 1.1 twotier"


def test_client_via_named_by_connection_is_dropped():
    # RFC 9110 7.6.1: what Connection names is hop-by-hop, Via included.
    assert dict(upstream([(b"connection", b"via"), (b"via", b"1.0 spoofed")]))[b"via"] == b"1.1 twotier"


def test_client_request_id_is_replaced():
    out = upstream([(b"x-request-id", b"client-chosen")])
    assert [(n, v) for n, v in out if n == b"x-request-id"] == [(b"x-request-id", b"rid-1")]


@pytest.mark.parametrize("value, kept", [
    (b"abc-123", True), (b"a.b_c~d:e+f/g=h", True), (b"x" * 128, True),
    (b"x" * 129, False), (b"", False), (b"has space", False), (b"nl\nx", False), (b"caf\xe9", False), (None, False),
])
def test_request_id(value, kept):
    got = request_id(value)
    if kept:
        assert got == value
    else:
        assert re.fullmatch(rb"[0-9a-f]{32}", got)
        assert got != request_id(value)  # random each time


def test_connection_tokens():
    assert connection_tokens([(b"connection", b" Close , ,X-A"), (b"connection", b"upgrade"), (b"x", b"y")]) == {
        b"close", b"x-a", b"upgrade"}


def test_forwarded_for():
    assert forwarded_for("10.0.0.1") == b"10.0.0.1"
    assert forwarded_for("::1") == b'"[::1]"'


# --- responses ------------------------------------------------------------------------

def downstream(headers, extra=()):
    return client_response_headers(headers, via=b"1.1 twotier", extra=list(extra))


def test_response_hop_by_hop_and_our_own_fields_are_removed():
    out = downstream([(b"connection", b"close, x-internal"), (b"x-internal", b"1"), (b"keep-alive", b"t=5"),
                      (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2"), (b"trailer", b"x"),
                      (b"content-length", b"10"), (b"server", b"gunicorn"), (b"date", b"x"),
                      (b"x-request-id", b"app"), (b"content-type", b"text/plain"), (b"set-cookie", b"a=1"),
                      (b"set-cookie", b"b=2")])
    assert out == [(b"content-type", b"text/plain"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
                   (b"via", b"1.1 twotier")]


def test_response_extra_fields_are_appended():
    out = downstream([(b"content-length", b"10")], extra=[(b"content-length", b"10")])
    assert out == [(b"via", b"1.1 twotier"), (b"content-length", b"10")]


def test_response_via_is_extended_once():
    out = downstream([(b"via", b"1.1 app"), (b"x", b"y")])
    assert [(n, v) for n, v in out if n == b"via"] == [(b"via", b"1.1 app, 1.1 twotier")]


def test_response_via_named_by_connection_is_dropped():
    assert dict(downstream([(b"connection", b"Via"), (b"via", b"1.1 app")]))[b"via"] == b"1.1 twotier"
