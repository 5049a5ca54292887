"""Upstream responses are checked as strictly as client requests: anything a second parser
could read differently is a 502, and the connection it came on is never used again."""

from __future__ import annotations

import h11
import pytest

from proxy.errors import UpstreamError
from proxy.http.outbound import UpstreamProtocol
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


# --- the same checks without sockets ------------------------------------------------------

def exchange(response: bytes) -> tuple[UpstreamProtocol, list]:
    protocol = UpstreamProtocol()
    protocol.request(b"GET", b"/", [(b"host", b"h")])
    protocol.end()
    protocol.receive_data(response)
    events = []
    while True:
        event = protocol.next_event()
        events.append(event)
        if event is h11.NEED_DATA or type(event) is h11.EndOfMessage or event is h11.PAUSED:
            return protocol, events


@pytest.mark.parametrize("name", sorted(BAD))
def test_protocol_refuses(name):
    with pytest.raises(UpstreamError):
        exchange(BAD[name])


def test_protocol_accepts_and_reuses_a_clean_response():
    protocol, events = exchange(b"HTTP/1.1 100 Continue\r\n\r\n" + GOOD)
    assert [type(e) for e in events] == [h11.InformationalResponse, h11.Response, h11.Data, h11.EndOfMessage]
    assert protocol.reusable
    protocol.start_next_cycle()
    protocol.request(b"GET", b"/again", [(b"host", b"h")])
    protocol.end()
    protocol.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert protocol.next_event().status_code == 204


def test_protocol_is_not_reusable_with_bytes_left_over():
    protocol, events = exchange(POISON.replace(b"Content-Length: 4", b"Content-Length: 2", 1))
    assert type(events[-1]) is h11.EndOfMessage
    assert not protocol.reusable


def test_protocol_accepts_obs_text():
    # RFC 9110 5.5: obs-text is field content.
    protocol, events = exchange(b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok")
    assert (b"x-name", b"caf\xe9") in list(events[0].headers)
    assert protocol.reusable


def test_protocol_drops_content_length_from_a_204():
    # RFC 9110 8.6: a server MUST NOT send Content-Length in a 204, so the client must not receive it.
    protocol, events = exchange(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: b\r\n\r\n")
    assert events[0].status_code == 204 and list(events[0].headers) == [(b"x-a", b"b")]
    assert type(events[1]) is h11.EndOfMessage and protocol.reusable


def test_protocol_early_close_is_an_error():
    protocol, events = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    assert events[-1] is h11.NEED_DATA
    protocol.receive_data(b"")
    with pytest.raises(UpstreamError):
        protocol.next_event()


@pytest.mark.parametrize("pieces", [1, 2, 7])
def test_a_huge_response_head_is_refused_however_it_arrives(pieces):
    """The limit must not depend on how many reads the head takes (h11 alone checks only the incomplete case)."""
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\nok"
    protocol = UpstreamProtocol()
    protocol.request(b"GET", b"/", [(b"host", b"x")])
    protocol.end()
    size = len(head) // pieces + 1
    with pytest.raises(UpstreamError, match="head larger|invalid response"):
        for start in range(0, len(head), size):
            protocol.receive_data(head[start:start + size])
            while protocol.next_event() is not h11.NEED_DATA:
                pass


def test_a_large_but_allowed_response_head_passes():
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 40_000 + b"\r\nContent-Length: 2\r\n\r\nok"
    protocol = UpstreamProtocol()
    protocol.request(b"GET", b"/", [(b"host", b"x")])
    protocol.end()
    protocol.receive_data(head)
    assert type(protocol.next_event()) is h11.Response
