"""Upstream faults: each gives the client a clear 502/504 or a cut connection, never a hang or a wrong
body, and the proxy keeps serving without leaking descriptors or tasks."""

from __future__ import annotations

import collections
import itertools
import socket
import threading

import pytest
import requests

from tests.helpers import GunicornProcess, raw_request, status_of, wait_until

GOOD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def proxy_for(start_proxy, upstreams, read_timeout=1.0):
    servers = ", ".join(f'"{u.address}"' for u in upstreams)
    return start_proxy(f"""
        [server]
        listen = ["127.0.0.1:0"]
        [upstreams.app]
        servers = [{servers}]
        read_timeout = {read_timeout}
        max_fails = 0
        tries = 1
        [status]
        [[routes]]
        prefix = "/"
        upstream = "app"
    """)


def test_gunicorn_worker_killed_mid_response_cuts_the_client(start_proxy):
    gunicorn = GunicornProcess("tests.apps.faulty:app", workers=1)
    try:
        proxy = proxy_for(start_proxy, [gunicorn])
        reply = raw_request(proxy.port, b"GET /die-mid-body HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert status_of(reply) == 200 and b"content-length: 100000" in head.lower()
        assert body == b"x" * 1000  # and then closed: the client can see the body is short
        # Gunicorn's master starts a new worker; the proxy goes on serving.
        assert wait_until(lambda: requests.get(proxy.url + "/fine").status_code == 200, what="recovery")
    finally:
        gunicorn.stop()


def test_upstream_that_stalls_after_its_headers(start_proxy, recording_upstream):
    release = threading.Event()

    def stall(raw):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nfirst" if b"/stall" in raw else GOOD
    upstream = recording_upstream(stall)
    proxy = proxy_for(start_proxy, [upstream], read_timeout=0.5)
    reply = raw_request(proxy.port, b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
    assert status_of(reply) == 200 and reply.endswith(b"\r\n\r\nfirst")  # cut after read_timeout
    assert requests.get(proxy.url + "/ok").text == "ok"
    release.set()


def test_upstream_that_never_answers_is_504(start_proxy, recording_upstream):
    """read_timeout's 504 (the one test of it): the proxy's own answer, and the try logged as a 504."""
    hold = threading.Event()
    upstream = recording_upstream(lambda raw: (hold.wait(10), None)[1])
    proxy = proxy_for(start_proxy, [upstream], read_timeout=0.5)
    response = requests.get(proxy.url + "/never")
    assert response.status_code == 504
    assert "504" in response.text and response.headers["Server"] == "twotier"  # the proxy's page, not the app's
    line = wait_until(lambda: next((x for x in proxy.access_lines() if '"GET /never ' in x), None),
                      what="the access line")
    assert f"uaddr={upstream.address} us=504 " in line
    assert requests.get(proxy.url + "/_proxy/status").status_code == 200  # still serving
    hold.set()


@pytest.mark.parametrize("garbage", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nX-Evil: a\rb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"\x00\x01\x02\x03" * 100,
])
def test_garbage_from_the_upstream_is_502_and_the_connection_discarded(start_proxy, recording_upstream, garbage):
    upstream = recording_upstream(lambda raw: garbage if b"/bad" in raw else GOOD)
    proxy = proxy_for(start_proxy, [upstream])
    with requests.Session() as session:
        assert session.get(proxy.url + "/bad").status_code == 502
        before = upstream.connections
        assert session.get(proxy.url + "/ok").text == "ok"
    assert upstream.connections == before + 1  # the bad connection was not reused


def test_no_descriptor_or_task_leaks_after_10000_requests_with_faults(start_proxy, recording_upstream):
    hold = threading.Event()

    def respond(raw):
        if b"/garbage" in raw:
            return b"garbage\r\n\r\n"
        if b"/hangup" in raw:
            return None  # close without answering
        if b"/stall" in raw:
            hold.wait(0.3)
            return None
        if b"/short" in raw:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
        return GOOD
    upstream = recording_upstream(respond)
    proxy = proxy_for(start_proxy, [upstream], read_timeout=0.2)
    status_url = proxy.url + "/_proxy/status"
    requests.get(proxy.url + "/warm")
    baseline = requests.get(status_url).json()["process"]

    paths = itertools.cycle(["/ok"] * 40 + ["/garbage", "/hangup", "/short", "/ok-client-gone"] * 2)
    lock = threading.Lock()
    outcomes = collections.Counter()

    def client(count):
        with requests.Session() as session:
            for _ in range(count):
                with lock:
                    path = next(paths)
                if path == "/ok-client-gone":  # the client disappears mid-request
                    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
                        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
                    outcomes["gone"] += 1
                    continue
                try:
                    outcomes[session.get(proxy.url + path, timeout=10).status_code] += 1
                except requests.RequestException:
                    outcomes["cut"] += 1
                    session.close()
    threads = [threading.Thread(target=client, args=(2500,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # 20 stalls on top: slow, so few, each ending in a 504.
    for _ in range(20):
        outcomes[requests.get(proxy.url + "/stall", timeout=10).status_code] += 1
    hold.set()
    assert sum(outcomes.values()) == 4 * 2500 + 20 > 10_000
    assert outcomes[200] >= 8000 and outcomes[502] > 0 and outcomes[504] == 20, outcomes

    def settled():
        now = requests.get(status_url).json()
        connections, process = now["connections"], now["process"]
        return (connections["open"] <= 1 and process["tasks"] <= baseline["tasks"]
                and process["open_fds"] <= baseline["open_fds"] + 1) and now
    final = wait_until(settled, timeout=15, what="connections and tasks to return to their baseline")
    assert final["process"]["open_fds"] <= baseline["open_fds"] + 1, (baseline, final["process"])
