"""Rate limits against real sockets: a measured burst, and exactly how many got 200 and how many 429.

Each burst opens all its connections first and then sends one request on each at once, so the proxy
decides them within milliseconds; the rates are slow enough (6 a minute: one request leaks every 10 s)
that nothing leaks during a burst even on a busy machine, which makes the counts exact. The limit holds
across worker processes and across a reload: both are shown by counting what the other processes let
through.
"""

from __future__ import annotations

import re
import selectors
import signal
import socket
import time
from collections import Counter

import pytest

from tests.helpers import RecordingUpstream, wait_until

ZONES = """
[rate_limits.single]
rate = "6r/m"
[rate_limits.burst]
rate = "6r/m"
burst = 3
[rate_limits.keyed]
rate = "6r/m"
key = "header:X-Api-Key"
burst = 1
[rate_limits.few]
rate = "6r/m"
key = "header:X-Api-Key"
max_keys = 2
[rate_limits.paced]
rate = "1r/s"
burst = 3
delay = 1
"""


def config(upstream: str, workers: int = 1, zones: str = ZONES) -> str:
    routes = "".join(f'\n[[routes]]\nprefix = "/{name}/"\nupstream = "app"\nrate_limit = "{name}"\n'
                     for name in re.findall(r"\[rate_limits\.(\w+)\]", zones))
    return f"""
[server]
listen = ["127.0.0.1:0"]
workers = {workers}
[log]
access = "off"
[upstreams.app]
servers = ["{upstream}"]
{zones}
{routes}"""


def burst(port: int, count: int, path: str, headers: tuple[str, ...] = ()) -> list[tuple[int, float, bytes]]:
    """``count`` requests sent at once on as many connections: (status, seconds until the answer, head)."""
    lines = "".join(f"{h}\r\n" for h in headers)
    raw = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{lines}\r\n".encode()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    selector = selectors.DefaultSelector()
    answers: dict[socket.socket, bytes] = {}
    done: dict[socket.socket, float] = {}
    try:
        started = time.monotonic()
        for sock in socks:
            sock.sendall(raw)
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            answers[sock] = b""
        deadline = started + 20
        while len(done) < count and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                sock = key.fileobj
                chunk = sock.recv(65536)
                answers[sock] += chunk
                if not chunk or (b"\r\n\r\n" in answers[sock] and sock not in done):
                    done.setdefault(sock, time.monotonic() - started)
                    selector.unregister(sock)
    finally:
        selector.close()
        for sock in socks:
            sock.close()
    assert len(done) == count, "some requests got no answer"
    return [(int(answers[s][9:12]), done[s], answers[s].split(b"\r\n\r\n")[0]) for s in socks]


def statuses(results) -> Counter:
    return Counter(status for status, _, _ in results)


@pytest.fixture(scope="module")
def upstream():
    recording = RecordingUpstream()
    yield recording
    recording.close()


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    from tests.helpers import ProxyProcess

    running = ProxyProcess(tmp_path_factory.mktemp("rates"), config(upstream.address))
    yield running
    running.stop()


@pytest.mark.parametrize("path, sent, served", [
    ("/single/", 5, 1),  # burst 0: one request, the rest 429
    ("/burst/", 9, 4),  # burst 3, nodelay: 1 + 3 at once, the rest 429
])
def test_a_burst_is_served_exactly_as_nginx_would(proxy, path, sent, served):
    results = burst(proxy.port, sent, path)
    assert statuses(results) == {200: served, 429: sent - served}
    refused = next(head for status, _, head in results if status == 429)
    assert b"\r\nretry-after: " in refused  # 10 s for the next request at 6r/m (less the time passed)


def test_keys_are_counted_apart(proxy):
    assert statuses(burst(proxy.port, 4, "/keyed/", ("X-Api-Key: a",))) == {200: 2, 429: 2}
    assert statuses(burst(proxy.port, 4, "/keyed/", ("X-Api-Key: b",))) == {200: 2, 429: 2}
    assert statuses(burst(proxy.port, 3, "/keyed/")) == {200: 3}  # no key: not limited


def test_the_least_recently_used_key_is_forgotten(proxy):
    assert statuses(burst(proxy.port, 2, "/few/", ("X-Api-Key: a",))) == {200: 1, 429: 1}
    assert statuses(burst(proxy.port, 1, "/few/", ("X-Api-Key: b",))) == {200: 1}
    assert statuses(burst(proxy.port, 1, "/few/", ("X-Api-Key: a",))) == {429: 1}  # a is used again: b is older
    assert statuses(burst(proxy.port, 1, "/few/", ("X-Api-Key: c",))) == {200: 1}  # max_keys 2: b goes
    assert statuses(burst(proxy.port, 1, "/few/", ("X-Api-Key: a",))) == {429: 1}  # a was kept
    assert statuses(burst(proxy.port, 1, "/few/", ("X-Api-Key: b",))) == {200: 1}  # b starts again


def test_delay_holds_back_what_is_beyond_it(proxy):
    """1r/s, burst 3, delay 1: two at once, two held back 1 s and 2 s, the rest 429."""
    results = burst(proxy.port, 6, "/paced/")
    assert statuses(results) == {200: 4, 429: 2}
    served = sorted(seconds for status, seconds, _ in results if status == 200)
    assert served[2] >= 0.9 and served[3] >= 1.9, served
    refused = [seconds for status, seconds, _ in results if status == 429]
    assert max(refused) < served[2], (refused, served)  # a refusal is not held back


def test_the_limit_holds_across_workers_and_a_reload(upstream, tmp_path, start_proxy):
    zone = '[rate_limits.shared]\nrate = "6r/m"\nburst = 2\n'
    proxy = start_proxy(config(upstream.address, workers=2, zones=zone))
    wait_until(lambda: sum("is accepting connections" in line for line in proxy.lines) == 2, what="both workers")
    assert statuses(burst(proxy.port, 12, "/shared/")) == {200: 3, 429: 9}
    # New worker processes, the same shared zone: no fresh burst after a reload.
    proxy.signal(signal.SIGHUP)
    proxy.wait_for_line("reload complete")
    assert statuses(burst(proxy.port, 4, "/shared/")) == {429: 4}
    # A reload that changes the zone's settings keeps its counts too (same name and size).
    proxy.config_path.write_text(config(upstream.address, workers=2, zones=zone.replace("burst = 2", "burst = 4")))
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: sum("reload complete" in line for line in proxy.lines) >= 2, what="the second reload")
    assert statuses(burst(proxy.port, 4, "/shared/")) == {200: 2, 429: 2}
