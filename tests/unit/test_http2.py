"""http/http2.py without sockets: an HTTP/2 header list becomes the RequestHead HTTP/1.1 would give, or the
same refusal; the response's header list; the flood budget."""

from __future__ import annotations

import pytest

from proxy.config import Limits
from proxy.errors import ClientError
from proxy.http import codec, http2

LIMITS = Limits()


def fields(method=b"GET", path=b"/p?q=1", authority=b"example.test", scheme=b"https", extra=()):
    out = [(b":method", method), (b":scheme", scheme), (b":path", path)]
    if authority is not None:
        out.append((b":authority", authority))
    return out + list(extra)


def http11(method=b"GET", path=b"/p?q=1", host=b"example.test", extra=()) -> codec.RequestHead | ClientError:
    """The same request as HTTP/1.1 bytes, through the llhttp engine: the reference."""
    lines = [b"%s %s HTTP/1.1" % (method, path), b"Host: " + host] + [n + b": " + v for n, v in extra]
    parser = codec.request_parser("llhttp", LIMITS)
    parser.feed(b"\r\n".join(lines) + b"\r\n\r\n")
    try:
        return parser.next_event()
    except ClientError as exc:
        return exc


def refusal(block, end_stream=True) -> int:
    with pytest.raises(ClientError) as caught:
        http2.request_head(block, LIMITS, end_stream)
    return caught.value.status


@pytest.mark.parametrize("method, path, extra", [
    (b"GET", b"/p?q=1", ()),
    (b"GET", b"/static/./a/%2e%2e/b.txt?x", ()),
    (b"POST", b"/api", [(b"content-length", b"5"), (b"content-type", b"text/plain")]),
    (b"OPTIONS", b"*", ()),
    (b"GET", b"/", [(b"x-forwarded-for", b"6.6.6.6"), (b"accept", b"*/*"), (b"x_dropped", b"1")]),
])
def test_a_request_becomes_the_head_http11_gives(method, path, extra):
    head = http2.request_head(fields(method, path, extra=extra), LIMITS, end_stream=not extra)
    reference = http11(method, path, extra=extra)
    for name in ("method", "target", "path", "query", "host", "headers", "content_length", "keep_alive", "upgrade"):
        assert getattr(head, name) == getattr(reference, name), name
    assert head.http_version == b"2.0"
    assert head.request_line == f"{method.decode()} {path.decode()} HTTP/2.0"


@pytest.mark.parametrize("method, path, extra", [
    (b"TRACE", b"/", ()),  # 405
    (b"FOO", b"/", ()),  # 501
    (b"get", b"/", ()),  # 400
    (b"GET", b"/a#b", ()),  # 400: a fragment
    (b"GET", b"/../x", ()),  # 400: above the root
    (b"GET", b"/", [(b"expect", b"magic")]),  # 417
    (b"POST", b"/", [(b"content-length", b"2000000")]),  # 413 (max_body_bytes 1m)
    (b"POST", b"/", [(b"content-length", b"1"), (b"content-length", b"1")]),  # 400
    (b"GET", b"/", [(b"x", b"a\x01b")]),  # 400: a control byte
    (b"GET", b"/" + b"a" * 9000, ()),  # 414
    (b"GET", b"/", [(b"x-big", b"v" * 33000)]),  # 431
    (b"GET", b"/", [(b"x-%d" % i, b"v") for i in range(120)]),  # 431: max_headers
])
def test_a_refused_request_gets_the_status_http11_gives(method, path, extra):
    reference = http11(method, path, extra=extra)
    assert isinstance(reference, ClientError)
    assert refusal(fields(method, path, extra=extra)) == reference.status


@pytest.mark.parametrize("block, why", [
    ([(b":method", b"GET"), (b":path", b"/")], "no :scheme"),
    ([(b":method", b"GET"), (b":scheme", b"https")], "no :path"),
    (fields(extra=[(b":status", b"200")]), "a response pseudo-header"),
    (fields() + [(b":method", b"GET")], "a second :method"),
    ([(b"accept", b"*/*")] + fields(), "a pseudo-header after a regular field"),
    (fields(extra=[(b"Accept", b"*/*")]), "an upper-case name"),
    (fields(extra=[(b"bad name", b"x")]), "a space in a name"),
    (fields(extra=[(b"x", b" padded")]), "leading whitespace"),
    (fields(extra=[(b"x", b"a\r\nInjected: 1")]), "CR LF in a value"),
    (fields(scheme=b"ftp"), "a scheme other than http(s)"),
    (fields(path=b"http://example.test/"), "an absolute :path"),
    (fields(path=b"/a b"), "a space in :path"),
    (fields(path=b"*"), "* for a GET"),
    (fields(authority=b"user@example.test"), "userinfo in :authority"),
    (fields(extra=[(b"host", b"other.test")]), "Host and :authority differ"),
    (fields(authority=None), "no :authority and no Host"),
])
def test_malformed_requests_are_400(block, why):
    assert refusal(block) == 400, why


@pytest.mark.parametrize("name, value", [
    (b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"), (b"proxy-connection", b"keep-alive"),
    (b"transfer-encoding", b"chunked"), (b"upgrade", b"websocket"), (b"te", b"gzip"),
])
def test_connection_specific_fields_are_refused(name, value):
    # RFC 9113 8.2.2: a request that carries one is malformed.
    with pytest.raises(ClientError, match="connection-specific"):
        http2.request_head(fields(extra=[(name, value)]), LIMITS, True)


def test_te_trailers_and_a_matching_host_are_accepted():
    head = http2.request_head(fields(extra=[(b"te", b"trailers"), (b"host", b"EXAMPLE.test")]), LIMITS, True)
    assert head.host == b"example.test"
    assert [n for n, _ in head.headers].count(b"host") == 1


def test_host_alone_stands_for_authority():
    head = http2.request_head(fields(authority=None, extra=[(b"host", b"h.test:8443")]), LIMITS, True)
    assert head.host == b"h.test:8443"


def test_a_body_without_content_length_is_a_body():
    # HTTP/2 ends a body with the stream: the HEADERS frame says whether one follows.
    assert http2.request_head(fields(b"POST", b"/up"), LIMITS, end_stream=False).has_body
    assert not http2.request_head(fields(b"POST", b"/up"), LIMITS, end_stream=True).has_body


def test_a_refusal_carries_what_the_access_log_shows():
    with pytest.raises(ClientError) as caught:
        http2.request_head(fields(b"GET", b"/x", extra=[(b"connection", b"close"), (b"user-agent", b"ua")]),
                           LIMITS, True)
    head = caught.value.head
    assert head.request_line == "GET /x HTTP/2.0"
    assert head.get(b"user-agent") == b"ua"


@pytest.mark.parametrize("method, status, length, expected, bodiless", [
    (b"GET", 200, 5, [(b"content-length", b"5")], False),
    (b"GET", 200, None, [], False),  # streamed: the stream's end ends the body
    (b"HEAD", 200, 5, [(b"content-length", b"5")], True),
    (b"GET", 304, 5, [(b"content-length", b"5")], True),
    (b"GET", 204, 5, [], True),
])
def test_response_fields(method, status, length, expected, bodiless):
    out, no_body = http2.response_fields(status, [(b"content-type", b"text/plain")], length, method)
    assert out == [(b":status", b"%d" % status), (b"content-type", b"text/plain"), *expected]
    assert no_body is bodiless


def test_budget_allows_a_burst_then_a_rate():
    budget = http2.Budget(burst=3, rate=2, now=0.0)
    assert [budget.spend(0.0) for _ in range(4)] == [True, True, True, False]
    assert not budget.spend(0.1)  # still in debt: spending on keeps it empty
    assert budget.spend(10.0)  # refilled at 2 a second, up to the burst (3)
    assert budget.spend(10.0) and budget.spend(10.0) and not budget.spend(10.0)
