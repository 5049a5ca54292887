"""Upstream responses are checked as strictly as client requests: anything a second parser
could read differently is a 502, and the connection it came on is never used again."""

from __future__ import annotations

import pytest

from tests.bad_responses import BAD, GOOD, POISON
from tests.helpers import ProxyProcess, RecordingUpstream, raw_request, status_of



def respond(raw: bytes) -> bytes:
    name = raw.split(b" ", 2)[1].strip(b"/").decode()
    if name == "more-than-declared":
        return POISON.replace(b"Content-Length: 4", b"Content-Length: 2", 1)
    return BAD.get(name, GOOD)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    upstream = RecordingUpstream(respond)
    proxy = ProxyProcess(tmp_path_factory.mktemp("strict"), f"""
        [server]
        listen = ["127.0.0.1:0"]
        [log]
        access = "off"
        [upstreams.app]
        servers = ["{upstream.address}"]
        read_timeout = 3.0
        [[routes]]
        prefix = "/"
        upstream = "app"
    """)
    yield proxy, upstream
    proxy.stop()
    upstream.close()


def get(proxy: ProxyProcess, path: str) -> bytes:
    return raw_request(proxy.port, f"GET {path} HTTP/1.1\r\nHost: strict\r\nConnection: close\r\n\r\n".encode())


def warm(proxy, upstream) -> int:
    """A good exchange, so that exactly one pooled connection is idle; returns the connection count."""
    assert get(proxy, "/warm").endswith(b"\r\n\r\ngood")
    return upstream.connections


def test_good_responses_reuse_the_pooled_connection(stack):
    proxy, upstream = stack
    before = warm(proxy, upstream)
    for _ in range(3):
        assert get(proxy, "/good").endswith(b"\r\n\r\ngood")
    assert upstream.connections == before  # the control for the tests below


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_response_is_502_and_its_connection_is_discarded(stack, name):
    proxy, upstream = stack
    before = warm(proxy, upstream)
    sent = len(upstream.received)
    answer = get(proxy, f"/{name}")
    assert status_of(answer) == 502, answer[:200]
    assert b"Injected" not in answer
    assert len(upstream.received) == sent + 1  # not retried
    assert upstream.connections == before  # the bad answer came on the pooled connection...
    assert get(proxy, "/good").endswith(b"\r\n\r\ngood")
    assert upstream.connections == before + 1  # ...which was then closed, not reused


def test_bytes_beyond_the_declared_length_never_reach_the_next_client(stack):
    # Response queue poisoning: the extra bytes are a whole response of their own.
    proxy, upstream = stack
    before = warm(proxy, upstream)
    first = get(proxy, "/more-than-declared")
    assert status_of(first) == 200 and first.endswith(b"\r\n\r\nok")
    second = get(proxy, "/good")
    assert b"POISON" not in second and second.endswith(b"\r\n\r\ngood")
    assert upstream.connections == before + 1
