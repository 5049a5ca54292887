"""Why the web-server tier exists: slow and many clients cost the proxy little and the app nothing.

Gunicorn's sync workers each serve one connection at a time, so a few dozen
clients that send their requests slowly take every worker, and a normal
request waits. The same clients in front of the proxy wait on the proxy,
which reads whole requests before the app sees them. docs/slow-clients.md
tells the story with figures.
"""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest
import requests

from tests.helpers import GunicornProcess, proxy_config, single_upstream_config, wait_until

SLOW_CLIENTS = 30


def open_slow_clients(port: int, count: int) -> list[socket.socket]:
    """Clients that send the first half of a request head and then nothing (slowloris)."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(sock)
    return socks


@pytest.fixture
def sync_gunicorn():
    gunicorn = GunicornProcess("tests.apps.basic:app", "--timeout", "60", workers=2, worker_class="sync")
    yield gunicorn
    gunicorn.stop()


def test_slow_clients_starve_sync_workers_but_not_the_proxy(start_proxy, sync_gunicorn):
    proxy = start_proxy(single_upstream_config(sync_gunicorn.address, "keepalive = 0"))
    slow_direct = open_slow_clients(sync_gunicorn.port, SLOW_CLIENTS)
    slow_proxied = open_slow_clients(proxy.port, SLOW_CLIENTS)
    try:
        with pytest.raises(requests.Timeout):
            requests.get(f"http://127.0.0.1:{sync_gunicorn.port}/echo", timeout=3)
        for sock in slow_direct:  # free Gunicorn's workers; the proxy's slow clients stay
            sock.close()
        started = time.monotonic()
        response = requests.get(proxy.url + "/echo", timeout=3)
        assert response.status_code == 200
        assert time.monotonic() - started < 3
    finally:
        for sock in slow_direct + slow_proxied:
            sock.close()


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


KEEPALIVE = 10.0


def _status_seconds(url: str, count: int) -> float:
    """Time for ``count`` status pages on one kept-alive connection."""
    with requests.Session() as session:
        session.get(url)
        started = time.perf_counter()
        for _ in range(count):
            assert session.get(url).status_code == 200
        return time.perf_counter() - started


def test_thousands_of_idle_keepalive_connections(start_proxy, recording_upstream):
    count = 2000
    _raise_fd_limit(count * 2 + 200)
    upstream = recording_upstream()
    proxy = start_proxy(proxy_config(upstream=upstream.address, limits=f"keepalive_timeout = {KEEPALIVE}",
                                     status=True))
    status_url = proxy.url + "/_proxy/status"
    alone = _status_seconds(status_url, 200)  # the cost of the status page with no other connection
    idle, answered = [], []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", proxy.port))
            sock.sendall(b"GET /_proxy/status HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(sock)
        for sock in idle:  # every one answered: open and idle from then on
            sock.settimeout(30)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            answered.append(time.monotonic())
        crowded = _status_seconds(status_url, 200)
        status = requests.get(status_url).json()
        # Which connections must still be open is known from this run's own timing, whatever the
        # machine's speed: those answered less than keepalive_timeout ago (less a margin).
        now = time.monotonic()
        young = sum(1 for t in answered if now - t < KEEPALIVE - 2)
        if young < count // 2:
            pytest.skip(f"this machine took {answered[-1] - answered[0]:.1f}s to open {count} connections")
        assert status["connections"]["open"] >= young
        assert requests.get(proxy.url + "/normal", timeout=5).status_code == 200
        # The status page reads counters, never the connections: 2,000 idle ones cost it nothing.
        # (Compared with itself in the same run, not with a fixed time.)
        assert crowded < 3 * alone, f"200 status pages: {alone:.3f}s alone, {crowded:.3f}s beside {count} idle"
        # keepalive_timeout closes them all; the proxy's descriptors come back.
        wait_until(lambda: requests.get(status_url).json()["connections"]["open"] <= 1,
                   timeout=KEEPALIVE + 30, what="idle connections to be closed")
        for sock in idle[:50]:
            sock.settimeout(2)
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()


def rss_of(proxy) -> int:
    return requests.get(proxy.url + "/_proxy/status").json()["process"]["rss_bytes"]


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("sendfile", ["false", "true"])
def test_a_1gib_file_to_100_slow_readers_keeps_memory_bounded(start_proxy, tmp_path, sendfile, event_loop):
    _raise_fd_limit(400)
    www = tmp_path / "www"
    www.mkdir()
    with open(www / "big.bin", "wb") as fh:
        fh.truncate(1024**3)  # sparse: 1 GiB on paper, no disk used
    proxy = start_proxy(proxy_config(static="www", server=f'sendfile = {sendfile}\nevent_loop = "{event_loop}"',
                                     status=True))
    before = rss_of(proxy)
    readers = []
    try:
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", proxy.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            readers.append(sock)
        peak = before
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # slow: each reader takes 16 KiB every 50 ms or so
            for sock in readers:
                sock.recv(16384)
            peak = max(peak, rss_of(proxy))
            time.sleep(0.05)  # the pace of the slow readers, not a wait for readiness
        grown = peak - before
        print(f"{event_loop} sendfile={sendfile}: RSS {before / 2**20:.1f} MiB before, peak {peak / 2**20:.1f} MiB, "
              f"grown {grown / 2**20:.1f} MiB for 100 readers")
        assert grown < 30 * 2**20  # measured: +13 MiB with chunked reads, +1.3 MiB with sendfile
    finally:
        for sock in readers:
            sock.close()


def test_large_proxied_responses_to_slow_readers_keep_memory_bounded(start_proxy, test_app_gunicorn, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    proxy = start_proxy(proxy_config(upstream=test_app_gunicorn.address, server=f'temp_dir = "{spool}"', status=True))
    before = rss_of(proxy)
    readers = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", proxy.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            sock.sendall(b"GET /big?size=20000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            readers.append(sock)

        def released():
            server = requests.get(proxy.url + "/_proxy/status").json()["upstreams"]["app"]["servers"][0]
            return server["in_flight"] == 0 and server["requests"] >= 20
        # All 400 MB left Gunicorn, spooled to temp files, while the readers took almost none of it.
        wait_until(released, timeout=60, what="the app server to be released")
        peak = max(rss_of(proxy) for _ in range(5))
        grown = peak - before
        print(f"20 x 20 MB to slow readers: RSS grown {grown / 2**20:.1f} MiB")
        assert grown < 30 * 2**20  # measured: +7.6 MiB (64 KiB in memory per response, the rest on disk)
        assert os.listdir(spool) == []  # spool files are unlinked at once, nothing left to clean
    finally:
        for sock in readers:
            sock.close()


@pytest.mark.parametrize("sendfile", ["false", "true"])
def test_send_timeout_is_time_without_progress_not_time_for_the_whole_file(start_proxy, tmp_path, sendfile):
    """A slow but steady reader of a file larger than send_timeout allows at its pace gets all of it."""
    www = tmp_path / "www"
    www.mkdir()
    size = 12 * 1024 * 1024  # well beyond what the kernel's socket buffers absorb at once
    (www / "four.bin").write_bytes(os.urandom(size))
    proxy = start_proxy(proxy_config(static="www", server=f'sendfile = {sendfile}\nevent_loop = "asyncio"',
                                     limits="send_timeout = 1"))
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.sendall(b"GET /four.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = bytearray()  # += on bytes would copy 12 MiB over and over on a busy machine
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            time.sleep(0.01)  # the reader's pace (at most 6.5 MB/s): 12 MiB take two seconds or more, > send_timeout
    body = received.partition(b"\r\n\r\n")[2]
    assert len(body) == size
