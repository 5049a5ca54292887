"""rules.py: the proxy's own strictness above both engines, fed whole requests through the codec.

test_codec.py holds the refusal tables and the framing; these are the rules that need no framing:
targets, hosts, Transfer-Encoding statuses, and what a head keeps.
"""

from __future__ import annotations

import pytest

from proxy.errors import ClientError
from proxy.http import codec
from proxy.http.rules import split_target, transfer_coding_status
from tests.unit.test_codec import engine, head_of, refused, request, run  # noqa: F401  (engine is a fixture)


def test_the_path_is_normalised_and_the_target_kept_as_sent(engine):
    # Routing and files see the path without dot segments; the upstream gets the raw target.
    head = head_of(engine, request("Host: h", line="GET /static/./a/%2e%2e/b.txt?x HTTP/1.1"))
    assert (head.target, head.path, head.query) == (b"/static/./a/%2e%2e/b.txt?x", "/static/b.txt", b"x")


def test_options_asterisk(engine):
    head = head_of(engine, request("Host: h", line="OPTIONS * HTTP/1.1"))
    assert (head.target, head.path) == (b"*", "*")


def test_http12_needs_a_host_like_http11(engine):
    assert refused(engine, request(line="GET / HTTP/1.2")).status == 400
    assert head_of(engine, request(line="GET / HTTP/1.0")).host == b""


@pytest.mark.parametrize("target, origin, path, query, host", [
    (b"/p?q", b"/p?q", b"/p", b"q", b"h"),
    (b"http://example.com/p?q", b"/p?q", b"/p", b"q", b"example.com"),
    (b"HTTPS://example.com:8443/p", b"/p", b"/p", b"", b"example.com:8443"),
    (b"http://example.com", b"/", b"/", b"", b"example.com"),
    (b"http://example.com?x=1", b"/?x=1", b"/", b"x=1", b"example.com"),
    (b"http://[::1]:8080/", b"/", b"/", b"", b"[::1]:8080"),
    (b"*", b"*", b"*", b"", b"h"),
])
def test_split_target(target, origin, path, query, host):
    assert split_target(target, b"h") == (origin, path, query, host)


@pytest.mark.parametrize("target", [
    b"/a#b", b"ftp://example.com/", b"http://user@example.com/", b"http:///p", b"http://a b/",
    b"http://a..b/", b"http://?x", b"example.com:80", b"relative/path",
])
def test_split_target_refusals(target):
    with pytest.raises(ClientError) as info:
        split_target(target, b"h")
    assert info.value.status == 400


def test_declared_body_over_the_limit_is_413(engine):
    assert refused(engine, request("Host: h", "Content-Length: 101", line="POST / HTTP/1.1")).status == 413


def test_an_ordinary_trailer_passes(engine):
    data = request("Host: h", "Transfer-Encoding: chunked", line="POST / HTTP/1.1") + b"0\r\nX-Sum: 1\r\n\r\n"
    events = run(engine, data)
    assert codec.EndOfMessage in events and not isinstance(events[-1], ClientError)


@pytest.mark.parametrize("host", ["example.com", "example.com:8080", "[::1]", "[::1]:8080", "127.0.0.1", ""])
def test_valid_hosts(engine, host):
    assert head_of(engine, request(f"Host: {host}")).host == host.encode()


@pytest.mark.parametrize("values, status", [
    ([b"chunked"], 501),  # not reached for a request (exactly "chunked" is framed), kept for the table's sake
    ([b"gzip"], 400),
    ([b"chunked, gzip"], 400),
    ([b"chunked", b"chunked"], 400),
    ([b"chunked,chunked"], 400),
    ([b"\xa0chunked"], 400),
    ([b'"chunked"'], 400),
    ([b","], 400),
    ([b"gzip, chunked"], 501),
    ([b"gzip", b"chunked"], 501),
    ([b",chunked"], 501),
    ([b" CHUNKED "], 501),
])
def test_transfer_coding_status(values, status):
    assert transfer_coding_status(values) == status
