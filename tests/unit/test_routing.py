"""routing.py without sockets: path normalisation (the gate before routes and files) and matching."""

from __future__ import annotations

import pytest

from proxy.config import Route
from proxy.errors import ClientError
from proxy.http.routing import Router, normalize_path, percent_decode


@pytest.mark.parametrize("raw, path", [
    (b"/", "/"),
    (b"/a/b.txt", "/a/b.txt"),
    (b"//a///b//", "/a/b/"),  # merged, so a redirect built from it never starts with //
    (b"/%73tatic/x", "/static/x"),  # decoded before routing
    (b"/a%2Fb", "/a/b"),
    (b"/caf%C3%A9", "/caf\u00e9"),
    (b"/%ef%bc%8e%ef%bc%8e/x", "/\uff0e\uff0e/x"),  # fullwidth dots: characters, not dot segments
    (b"/%252e%252e/", "/%2e%2e/"),  # decoded once, never twice
    (b"/a/..b/c.", "/a/..b/c."),  # dots inside names are not dot segments
    (b"/.well-known/x", "/.well-known/x"),
    (b"/a%20b", "/a b"),
    # dot segments are removed as RFC 3986 5.2.4 does, after decoding (so %2e and %2f count)
    (b"/a/./b", "/a/b"),
    (b"/a/../b", "/b"),
    (b"/a/.", "/a/"),  # a final dot segment leaves its slash: a folder stays a folder
    (b"/a/b/..", "/a/"),
    (b"/a/..", "/"),
    (b"/.", "/"),
    (b"/./", "/"),
    (b"/a/./../b/./c/", "/b/c/"),
    (b"/a//..//b", "/b"),  # slashes merged first, as nginx does
    (b"/a/%2e%2e/b", "/b"),
    (b"/a/%2E%2E/b", "/b"),
    (b"/a/.%2e/b", "/b"),
    (b"/a/%2e/b", "/a/b"),
    (b"/a/b/..%2fc", "/a/c"),
    (b"/static/hello.txt%2f", "/static/hello.txt/"),
])
def test_normalize_path(raw, path):
    assert normalize_path(raw) == path


@pytest.mark.parametrize("raw", [
    # a ".." that would climb above "/" (nginx: 400 too)
    b"/..", b"/../x", b"/a/../..", b"/a/../../b", b"/%2e%2e/x", b"/%2E%2E/x", b"/.%2e/x", b"/%2e./x",
    b"/a/..%2f..%2fb", b"/a%2f..%2f..%2fb", b"/./../x",
    b"/a\\b", b"/a%5cb", b"/a%5C..%5Cb",
    b"/a%00b", b"/a\x00b",
    b"/%c0%ae%c0%ae/", b"/%c0%af", b"/%e0%80%ae", b"/%ff", b"/%80",  # overlong or not UTF-8
    b"/%", b"/%4", b"/%g1", b"/%zz",
    b"a/b", b"",
])
def test_normalize_path_refusals(raw):
    with pytest.raises(ClientError) as info:
        normalize_path(raw)
    assert info.value.status == 400


def test_percent_decode():
    assert percent_decode(b"/a%41%2f%7E") == b"/aA/~"
    assert percent_decode(b"/plain") == b"/plain"


def test_router_picks_the_longest_prefix():
    routes = [Route(prefix="/", upstream="app"), Route(prefix="/static/", upstream="s"),
              Route(prefix="/static/img/", upstream="i")]
    router = Router(routes)
    assert router.match("/static/img/a.png").upstream == "i"
    assert router.match("/static/a.css").upstream == "s"
    assert router.match("/static").upstream == "app"  # "/static" is not under "/static/"
    assert router.match("/other").upstream == "app"
    assert repr(router) == "<Router ['/static/img/', '/static/', '/']>"


def test_router_without_a_catch_all():
    assert Router([Route(prefix="/api/", upstream="a")]).match("/elsewhere") is None
