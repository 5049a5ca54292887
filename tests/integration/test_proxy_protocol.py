"""``proxy_protocol = true`` listeners against real sockets, on both event loops: the PROXY header (v1
and v2) names the client that the access log, X-Forwarded-For and the decision see; a connection
without a valid one is closed and the proxy keeps serving; on a TLS listener the header comes before
the handshake."""

from __future__ import annotations

import re
import signal
import socket
import textwrap
import time

import pytest

from tests.edge import EagerClient, client_context, https_port, read_head, write_cert
from tests.h2client import H2Client
from tests.helpers import ProxyProcess, raw_request, status_of, wait_until
from tests.unit.test_proxyproto import ipv6_block, tlv, v2

GET = b"GET /x HTTP/1.1\r\nHost: shop.example.test\r\nConnection: close\r\n\r\n"
V1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n"


def config(upstream: str, event_loop: str, *, tls: str = "", status_allow: str = '["127.0.0.1/32"]',
           limits: str = "", server: str = "") -> str:
    """A plain listener and a proxy_protocol one, in front of ``upstream``; ``tls``: a [tls] section."""
    return f"""
        [server]
        listen = ["127.0.0.1:0", {{ address = "127.0.0.1:0", proxy_protocol = true }}]
        event_loop = "{event_loop}"
        {server}
        [limits]
        {limits}
        [upstreams.app]
        servers = ["{upstream}"]
        [status]
        allow = {status_allow}
        [[routes]]
        prefix = "/"
        upstream = "app"
        {tls}
    """


def proxied_port(proxy: ProxyProcess) -> int:
    return int(proxy.wait_for_line(r"listening on http://127\.0\.0\.1:(\d+)/ with the PROXY protocol")[1])


def forwarded_for(raw: bytes) -> str:
    return re.search(rb"(?im)^x-forwarded-for: (.*)\r$", raw)[1].decode()


@pytest.fixture
def proxied(start_proxy, recording_upstream, event_loop):
    upstream = recording_upstream()
    proxy = start_proxy(config(upstream.address, event_loop, limits="header_timeout = 1"))
    proxy.proxied_port = proxied_port(proxy)
    proxy.upstream = upstream
    return proxy


@pytest.mark.parametrize("header, client", [
    (V1, "203.0.113.7"),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n", "2001:db8::7"),
    (v2(), "203.0.113.7"),
    (v2(family=0x21, addresses=ipv6_block("2001:db8::9", "2001:db8::1", 1, 443),
        tlvs=tlv(0x01, b"http/1.1") + tlv(0xEA, b"\x01vpce-0123456789abcdef") + tlv(0x04, b"")), "2001:db8::9"),
])
def test_the_header_names_the_client(proxied, header, client):
    response = raw_request(proxied.proxied_port, header + GET)
    assert status_of(response) == 200, response
    sent = proxied.upstream.received[-1]
    assert forwarded_for(sent) == client
    assert not sent.startswith(b"PROXY") and b"QUIT" not in sent  # the codec never saw the header
    wait_until(lambda: any(line.startswith(f"{client} - - ") for line in proxied.access_lines()),
               what="the access log line with the client's address")


def test_local_and_unknown_keep_the_connections_own_address(proxied):
    # A balancer's own health check (v2 LOCAL) and v1 UNKNOWN: the connection's peer is the client.
    for header in (v2(command=0x0), b"PROXY UNKNOWN\r\n"):
        assert status_of(raw_request(proxied.proxied_port, header + GET)) == 200
        assert forwarded_for(proxied.upstream.received[-1]) == "127.0.0.1"


def test_the_header_may_arrive_a_byte_at_a_time_then_serve_many_requests(proxied):
    with socket.create_connection(("127.0.0.1", proxied.proxied_port), timeout=5) as sock:
        for byte in v2():
            sock.sendall(bytes([byte]))
            time.sleep(0.001)
        for _ in range(3):  # one header, then a keep-alive connection like any other
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            head, rest = read_head(sock)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert rest + sock.recv(2 - len(rest)) == b"ok" if len(rest) < 2 else rest == b"ok"
    assert [forwarded_for(raw) for raw in proxied.upstream.received] == ["203.0.113.7"] * 3


def test_the_decision_sees_the_headers_client(proxied):
    # [status] allow is 127.0.0.1: a client the balancer says is elsewhere must not read the status page.
    page = b"GET /_proxy/status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    assert status_of(raw_request(proxied.port, page)) == 200
    assert status_of(raw_request(proxied.proxied_port, V1 + page)) == 404
    assert status_of(raw_request(proxied.proxied_port, b"PROXY TCP4 127.0.0.1 10.0.0.1 5 6\r\n" + page)) == 200


@pytest.mark.parametrize("data", [
    GET,  # no header at all: a client that reached the balancer's port directly
    b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n" + GET,
    b"PROXY TCP4 203.0.113.777 10.0.0.1 51234 443\r\n" + GET,
    v2(version=1) + GET,
    v2(tlvs=b"\x01\x00\x09ab") + GET,  # a TLV running past the header
    b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\n" + GET,
    b"PROXY " + b"x" * 200 + b"\r\n" + GET,
])
def test_a_missing_or_malformed_header_closes_the_connection(proxied, data):
    assert raw_request(proxied.proxied_port, data) == b""  # closed without a word
    assert proxied.upstream.received == []
    proxied.wait_for_line(r"PROXY protocol header refused from 127\.0\.0\.1:\d+: ")
    # ...and the proxy goes on serving, both listeners.
    assert status_of(raw_request(proxied.proxied_port, V1 + GET)) == 200
    assert status_of(raw_request(proxied.port, GET)) == 200
    metrics = raw_request(proxied.port, b"GET /_proxy/metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert b"proxy_protocol_refused_total 1\n" in metrics


def test_no_header_within_header_timeout_closes(proxied):
    with socket.create_connection(("127.0.0.1", proxied.proxied_port), timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 ")
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - started < 8  # header_timeout = 1, on a busy machine
    proxied.wait_for_line(r"PROXY protocol header refused from .*: no PROXY header within header_timeout")


def test_a_plain_listener_beside_it_is_unchanged(proxied):
    # The header is only expected where proxy_protocol is on: elsewhere it is a request line of an
    # unknown method, refused before anything reaches the upstream.
    assert status_of(raw_request(proxied.port, GET)) == 200
    assert status_of(raw_request(proxied.port, V1 + GET)) == 501
    assert len(proxied.upstream.received) == 1


PROXIED_TLS = """
        [tls]
        listen = [{ address = "127.0.0.1:0", proxy_protocol = true }]
        certificate = "site.pem"
        key = "site.key"
"""


@pytest.fixture
def proxied_tls(start_proxy, recording_upstream, event_loop, ca, tmp_path):
    write_cert(ca.issue_cert("localhost"), tmp_path, "site")
    upstream = recording_upstream()
    proxy = start_proxy(config(upstream.address, event_loop, tls=PROXIED_TLS))
    proxy.tls_port = https_port(proxy)
    proxy.upstream = upstream
    return proxy


@pytest.mark.parametrize("split", [False, True], ids=["header-and-hello-in-one-write", "header-first"])
def test_on_a_tls_listener_the_header_comes_before_the_handshake(proxied_tls, ca, split):
    context = client_context(ca)
    if split:  # the header alone first, the ClientHello in a later write
        client = EagerClient(proxied_tls.tls_port, context, "localhost", send=slice(0), prefix=V1)
        time.sleep(0.05)
        client.sock.sendall(client.hello)
    else:  # what a balancer that forwards at once sends: the header and the hello in one segment
        client = EagerClient(proxied_tls.tls_port, context, "localhost", prefix=v2())
    try:
        client.finish(timeout=10)
        response = client.exchange(GET)
    finally:
        client.close()
    assert status_of(response) == 200, response
    sent = proxied_tls.upstream.received[-1]
    assert forwarded_for(sent) == "203.0.113.7"
    assert re.search(rb"(?im)^x-forwarded-proto: https\r$", sent)


@pytest.mark.parametrize("tls", [True, False], ids=["h2-over-tls", "h2c"])
def test_over_http2_the_header_names_the_client_too(start_proxy, recording_upstream, event_loop, ca, tmp_path, tls):
    write_cert(ca.issue_cert("localhost"), tmp_path, "site")
    upstream = recording_upstream()
    proxy = start_proxy(config(upstream.address, event_loop, tls=PROXIED_TLS, server="h2c = true"))
    with H2Client(https_port(proxy) if tls else proxied_port(proxy), tls=tls, prefix=V1) as client:
        assert client.request("GET", "/x").status == 200
        assert client.request("GET", "/y").status == 200
    assert [forwarded_for(sent) for sent in upstream.received] == ["203.0.113.7"] * 2
    [line] = wait_until(lambda: [x for x in proxy.access_lines() if '"GET /y HTTP/2.0" 200' in x])
    assert line.startswith("203.0.113.7 ")


def test_on_a_tls_listener_a_handshake_without_a_header_is_refused(proxied_tls, ca):
    with pytest.raises((ConnectionError, TimeoutError)):
        client = EagerClient(proxied_tls.tls_port, client_context(ca), "localhost")
        try:
            client.finish(timeout=10)
        finally:
            client.close()
    proxied_tls.wait_for_line(r"PROXY protocol header refused from 127\.0\.0\.1:\d+: the connection did not begin")
    assert proxied_tls.upstream.received == []


def test_a_reload_turns_the_proxy_protocol_on_for_a_listener_it_keeps(start_proxy, recording_upstream):
    upstream = recording_upstream()
    proxied = config(upstream.address, "auto")
    plain = proxied.replace('{ address = "127.0.0.1:0", proxy_protocol = true }', '"127.0.0.1:0"')
    proxy = start_proxy(plain)
    ports = wait_until(lambda: [int(m[1]) for line in proxy.lines
                                if (m := re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line))][1:],
                       what="the second listener")
    second = ports[0]
    assert status_of(raw_request(second, GET)) == 200
    proxy.config_path.write_text(textwrap.dedent(proxied))
    proxy.signal(signal.SIGHUP)
    proxy.wait_for_line("reload complete")
    # The old workers were told to stop; until each has, it may still accept a connection and read it
    # as plain HTTP (a PROXY line is then an unknown method). Wait for them to go.
    old = sum("(generation 1) is accepting" in line for line in proxy.lines)
    wait_until(lambda: sum(bool(re.search(r"worker \d+ exited", line)) for line in proxy.lines) >= old,
               what="the old workers to exit")
    # The same socket (same port), read by the new workers as a proxy_protocol one.
    wait_until(lambda: raw_request(second, GET) == b"", what="plain requests to be refused")
    assert status_of(raw_request(second, V1 + GET)) == 200
    assert forwarded_for(upstream.received[-1]) == "203.0.113.7"
