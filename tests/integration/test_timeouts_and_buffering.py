"""Timeouts, keep-alive limits and buffering in both directions, against real sockets."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from tests.helpers import (ProxyProcess, RecordingUpstream, proxy_config, raw_request, single_upstream_config,
                           status_of, wait_until)


@pytest.fixture(scope="module")
def upstream():
    recording = RecordingUpstream()
    yield recording
    recording.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, upstream):
    folder = tmp_path_factory.mktemp("limits")
    proxy = ProxyProcess(folder, f"""
        [server]
        listen = ["127.0.0.1:0"]
        [limits]
        header_timeout = 1.0
        body_timeout = 1.0
        keepalive_timeout = 1.0
        keepalive_requests = 3
        [upstreams.app]
        servers = ["{upstream.address}"]
        [[routes]]
        prefix = "/"
        upstream = "app"
    """)
    yield proxy
    proxy.stop()


def read_all(sock: socket.socket, limit: float = 5.0) -> bytes:
    sock.settimeout(limit)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_head_that_never_finishes_gets_408_and_close(proxy, upstream):
    before = len(upstream.received)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        reply = read_all(sock)
    assert status_of(reply) == 408
    assert time.monotonic() - started < 4
    assert len(upstream.received) == before


def test_slowloris_trickle_is_cut_at_header_timeout(proxy, upstream):
    before = len(upstream.received)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.settimeout(5)
        started = time.monotonic()
        reply = b""
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)  # the attack itself: one byte every 50 ms, each read resets nothing
            if time.monotonic() - started > 3:
                break
        reply = read_all(sock)
    assert status_of(reply) == 408
    assert len(upstream.received) == before


def test_body_that_stalls_gets_408_and_never_reaches_upstream(proxy, upstream):
    before = len(upstream.received)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
        reply = read_all(sock)
    assert status_of(reply) == 408
    assert len(upstream.received) == before


def test_idle_keepalive_connection_is_closed(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        reply = read_all(sock)  # the answer, then EOF when the idle timeout strikes
        assert status_of(reply) == 200
        assert 0.8 < time.monotonic() - started < 4


def test_keepalive_requests_limit_closes_after_the_last(proxy):
    requests_bytes = b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n" * 5
    reply = raw_request(proxy.port, requests_bytes)
    assert reply.count(b"HTTP/1.1 200") == 3
    assert reply.split(b"HTTP/1.1 200")[3].lower().count(b"connection: close") == 1


def test_upload_is_buffered_before_the_upstream_is_contacted(proxy, upstream):
    with socket.create_connection(("127.0.0.1", proxy.port)) as slow:
        slow.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        # A complete request on another connection goes through meanwhile; once it has been
        # answered, the proxy has had every chance to forward the half-sent one too.
        requests.get(proxy.url + "/other")
        assert not any(raw.startswith(b"POST /upload") for raw in upstream.received)
        slow.sendall(b"67890")
        reply = read_all(slow, 3)
    assert status_of(reply) == 200
    uploads = [raw for raw in upstream.received if raw.startswith(b"POST /upload")]
    assert len(uploads) == 1 and uploads[0].endswith(b"\r\n\r\n1234567890")


def test_upstream_closing_mid_body_cuts_the_client_connection(start_proxy, recording_upstream):
    broken = recording_upstream(lambda raw: b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this", keep_alive=False)
    proxy = start_proxy(single_upstream_config(broken.address))
    reply = raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-length: 1000" in head.lower()
    assert body == b"only this"  # and then the connection was closed: the client can tell it is short
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(proxy.url + "/")


def test_chunked_upstream_closing_early_never_sends_the_last_chunk(start_proxy, recording_upstream):
    broken = recording_upstream(
        lambda raw: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", keep_alive=False)
    proxy = start_proxy(single_upstream_config(broken.address))
    reply = raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.endswith(b"5\r\nhello\r\n")
    assert b"0\r\n\r\n" not in reply


def test_server_closing_kept_alive_connections_never_shows_as_502(start_proxy, recording_upstream):
    # The upstream closes after every answer although it promised nothing of the kind,
    # like a Gunicorn whose keep-alive ran out: pooled connections go stale all the time.
    closer = recording_upstream(keep_alive=False)
    proxy = start_proxy(single_upstream_config(closer.address))
    with requests.Session() as session:
        statuses = [session.get(proxy.url + f"/{i}").status_code for i in range(50)]
    assert statuses == [200] * 50


def test_slow_reader_does_not_hold_the_upstream(start_proxy, test_app_gunicorn):
    proxy = start_proxy(proxy_config(upstream=test_app_gunicorn.address, upstream_extra='buffer_bytes = "64k"',
                                     status=True))
    size = 30_000_000
    with socket.create_connection(("127.0.0.1", proxy.port)) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        slow.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        first = slow.recv(4096)
        assert status_of(first) == 200

        def upstream_done():
            server = requests.get(proxy.url + "/_proxy/status").json()["upstreams"]["app"]["servers"][0]
            return server["in_flight"] == 0 and server["idle_connections"] >= 1
        # The whole response has left the app server (in memory and a temp file) while
        # the client has read almost none of it.
        wait_until(upstream_done, timeout=20, what="the upstream to be released")
        received = len(first)
        slow.settimeout(10)
        while received < size:
            chunk = slow.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
    head_length = first.index(b"\r\n\r\n") + 4
    assert received - head_length == size


def test_many_clients_while_one_is_slow(proxy):
    """A stalled upload does not delay anyone else."""
    with socket.create_connection(("127.0.0.1", proxy.port)) as slow:
        slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        results = []

        def client():
            results.append(requests.get(proxy.url + "/x", timeout=5).status_code)
        threads = [threading.Thread(target=client) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [200] * 20


def test_a_reader_that_stops_is_closed_after_send_timeout(start_proxy, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "big.bin").write_bytes(b"x" * (32 * 1024 * 1024))
    proxy = start_proxy(proxy_config(static="www", limits="send_timeout = 1.0", status=True))
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        # Read nothing: the proxy's buffers fill, nothing moves for send_timeout, and it lets go.
        wait_until(lambda: requests.get(proxy.url + "/_proxy/status").json()["connections"]["open"] <= 1,
                   timeout=15, what="the stalled reader to be closed")
        received = read_all(sock, 5)
    assert len(received) < 32 * 1024 * 1024  # cut short, not completed


def test_connect_timeout_is_504(start_proxy):
    # A listener whose accept queue is full and never drained: Linux then drops new SYNs, so a
    # connect on loopback hangs, as one to a dead host does.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(blackhole.getsockname())
            fillers.append(filler)
        port = blackhole.getsockname()[1]
        proxy = start_proxy(single_upstream_config(f"127.0.0.1:{port}", "connect_timeout = 0.5"))
        started = time.monotonic()
        response = requests.get(proxy.url + "/", timeout=10)
        assert response.status_code == 504
        assert time.monotonic() - started < 5
    finally:
        for filler in fillers:
            filler.close()
        blackhole.close()


def test_no_route_is_404_and_the_status_page_only_takes_get_and_head(start_proxy, recording_upstream):
    upstream = recording_upstream()
    proxy = start_proxy(proxy_config(upstream=upstream.address, prefix="/api/", status=True))
    missing = requests.get(proxy.url + "/elsewhere")
    assert missing.status_code == 404 and "404 Not Found" in missing.text
    assert requests.head(proxy.url + "/_proxy/status").status_code == 200
    posted = requests.post(proxy.url + "/_proxy/status", data=b"x")
    assert posted.status_code == 405 and posted.headers["Allow"] == "GET, HEAD"
    assert upstream.received == []
