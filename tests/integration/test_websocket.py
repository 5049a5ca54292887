"""WebSocket pass-through: a real client (websockets) through the proxy to a real Gunicorn (Flask-Sock).

The tunnel's edge cases that an app cannot be made to produce on demand
(half-close, an upstream that stops reading) use RawUpgradeUpstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import threading
import time

import pytest
import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.edge import WS_REQUEST, RawUpgradeUpstream, client_context, https_port, read_head, read_until_eof, \
    rss_bytes, worker_pid, write_cert
from tests.helpers import raw_request, status_of, wait_until

MIB = 1024 * 1024


def proxy_config(address: str, extra: str = "", upstream_extra: str = "") -> str:
    return f"""
        [server]
        listen = ["127.0.0.1:0"]
        {extra}
        [status]
        [upstreams.app]
        servers = ["{address}"]
        {upstream_extra}
        [upstreams.plain]
        servers = ["{address}"]
        upgrade = []
        [[routes]]
        prefix = "/"
        upstream = "app"
        [[routes]]
        prefix = "/no-upgrades/"
        upstream = "plain"
    """


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, ws_gunicorn):
    from tests.helpers import ProxyProcess

    folder = tmp_path_factory.mktemp("websocket")
    proxy = ProxyProcess(folder, proxy_config(ws_gunicorn.address))
    proxy.ws = f"ws://127.0.0.1:{proxy.port}"
    yield proxy
    proxy.stop()


def status(proxy) -> dict:
    return requests.get(f"http://127.0.0.1:{proxy.port}/_proxy/status").json()


def tunnel_lines(proxy) -> list[str]:
    return [line for line in proxy.access_lines() if " tunnel=" in line]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_echo_through_the_proxy(proxy):
    async def go():
        async with connect(proxy.ws + "/ws/echo") as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"
            assert ws.response.headers["Via"] == "1.1 twotier"
            assert ws.response.headers["X-Request-ID"]
    run(go())


def test_one_mib_messages_both_ways(proxy):
    async def go():
        async with connect(proxy.ws + "/ws/echo", max_size=4 * MIB) as ws:
            for _ in range(3):
                payload = os.urandom(MIB)
                await ws.send(payload)
                echoed = await ws.recv()
                assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            text = "é" * (MIB // 2)  # 1 MiB of UTF-8 text
            await ws.send(text)
            assert await ws.recv() == text
    run(go())


def test_client_closing_ends_the_tunnel_and_logs_it(proxy):
    before = len(tunnel_lines(proxy))

    async def go():
        async with connect(proxy.ws + "/ws/echo") as ws:
            await ws.send(os.urandom(1000))  # random: permessage-deflate would shrink anything else
            await ws.recv()
            assert status(proxy)["tunnels"]["open"] >= 1
        assert ws.close_code == 1000  # the close handshake went through the tunnel both ways
    run(go())
    wait_until(lambda: len(tunnel_lines(proxy)) > before, timeout=10, what="the tunnel's access-log line")
    line = tunnel_lines(proxy)[before]
    assert '"GET /ws/echo HTTP/1.1" 101 ' in line
    assert "tunnel=websocket" in line and " end=" in line
    up = int(line.split(" up=")[1].split()[0])
    down = int(line.split(" down=")[1].split()[0])
    assert up > 1000 and down > 1000  # the message, masked and framed, and its echo
    wait_until(lambda: status(proxy)["tunnels"]["open"] == 0, timeout=10, what="no open tunnel")


def test_upstream_closing_ends_the_tunnel(proxy):
    async def go():
        async with connect(proxy.ws + "/ws/bye") as ws:
            await ws.send("hi")
            assert await ws.recv() == "bye"
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code, ws.close_reason
    assert run(go()) == (1000, "server done")
    wait_until(lambda: status(proxy)["tunnels"]["open"] == 0, timeout=10, what="no open tunnel")


def test_metrics_count_tunnels_and_bytes(proxy):
    def sample(name):
        text = requests.get(f"http://127.0.0.1:{proxy.port}/_proxy/metrics").text
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line.startswith(name)}

    before = sample("proxy_tunnel")

    async def go():
        async with connect(proxy.ws + "/ws/echo") as ws:
            await ws.send(os.urandom(5000))
            await ws.recv()
            during = sample("proxy_tunnel")
            assert during["proxy_tunnels_open"] == 1
            return during
    during = run(go())
    assert during["proxy_tunnels_total"] == before["proxy_tunnels_total"] + 1
    for direction in ("to_upstream", "to_client"):
        key = f'proxy_tunnel_bytes_total{{direction="{direction}"}}'
        assert during[key] >= before[key] + 5000  # counted while the tunnel is open, not only at its end


def test_other_upgrades_get_400_and_h2c_is_ignored(proxy):
    refused = raw_request(proxy.port, b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\n\r\n",
                          read_until_close=False)
    assert status_of(refused) == 400
    ignored = raw_request(proxy.port, b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\n"
                          b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
    assert status_of(ignored) == 200 and ignored.endswith(b"plain\n")
    not_here = raw_request(proxy.port, WS_REQUEST.replace(b"GET /ws ", b"GET /no-upgrades/ws/echo "),
                           read_until_close=False)
    assert status_of(not_here) == 400


def test_an_upgrade_the_app_declines_is_a_normal_response_on_a_kept_alive_connection(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(WS_REQUEST.replace(b"GET /ws ", b"GET /plain "))
        head, rest = read_head(sock)
        # Werkzeug answers a WebSocket handshake on a plain route with 400; Via shows it is the app's answer.
        assert head.startswith(b"HTTP/1.1 400 ") and b"\r\nvia: 1.1 twotier" in head
        assert b"\r\nupgrade:" not in head.lower()
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += sock.recv(65536)
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # still HTTP
        assert read_until_eof(sock).startswith(b"HTTP/1.1 200 ")


def test_idle_tunnel_is_closed(tmp_path, start_proxy, ws_gunicorn):
    proxy = start_proxy(proxy_config(ws_gunicorn.address, upstream_extra="websocket_idle_timeout = 1.0"))

    async def go():
        async with connect(f"ws://127.0.0.1:{proxy.port}/ws/echo", ping_interval=None) as ws:
            await ws.send("still here?")
            assert await ws.recv() == "still here?"
            quiet_since = time.monotonic()
            await asyncio.wait_for(ws.wait_closed(), 10)
            return time.monotonic() - quiet_since
    waited = run(go())
    assert 0.9 <= waited < 5, waited
    line = proxy.wait_for_line(r"tunnel=websocket .* end=idle", stream="stdout")
    assert line


def test_half_close_is_passed_on_both_ways(tmp_path, start_proxy):
    def behave(sock, early):
        received = early + read_until_eof(sock)  # the client's FIN must arrive here...
        sock.sendall(b"got:" + received)  # ...while the way back stays open
        sock.shutdown(socket.SHUT_WR)

    upstream = RawUpgradeUpstream(behave)
    try:
        proxy = start_proxy(proxy_config(upstream.address))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(WS_REQUEST + b"early bytes;")  # sent before the 101 arrives: must not be lost
            head, rest = read_head(sock)
            assert head.startswith(b"HTTP/1.1 101 ")
            sock.sendall(b"late bytes")
            sock.shutdown(socket.SHUT_WR)
            assert rest + read_until_eof(sock) == b"got:early bytes;late bytes"
        assert not upstream.errors
        forwarded = upstream.heads[0].lower()
        assert b"\r\nconnection: upgrade" in forwarded and b"\r\nupgrade: websocket" in forwarded
        assert b"\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==" in forwarded
    finally:
        upstream.close()


def test_backpressure_bounds_memory_when_the_upstream_stops_reading(tmp_path, start_proxy):
    total = 64 * MIB
    may_read = threading.Event()
    digest = {}

    def behave(sock, early):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        may_read.wait(60)
        data = early + read_until_eof(sock, total)
        digest["upstream"] = (len(data), hashlib.sha256(data).hexdigest())

    upstream = RawUpgradeUpstream(behave)
    try:
        proxy = start_proxy(proxy_config(upstream.address))
        block = os.urandom(MIB)
        expected = hashlib.sha256(block * (total // MIB)).hexdigest()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as sock:
            sock.sendall(WS_REQUEST)
            head, _ = read_head(sock)
            assert head.startswith(b"HTTP/1.1 101 ")
            worker = worker_pid(proxy)
            baseline = rss_bytes(worker)
            sent = [0]

            def send_all():
                for _ in range(total // MIB):
                    sock.sendall(block)
                    sent[0] += MIB
                sock.shutdown(socket.SHUT_WR)
            sender = threading.Thread(target=send_all, daemon=True)
            sender.start()
            # Wait until the proxy stops taking bytes from the client: the relay is blocked all the way back.
            readings: list[int] = []

            def stalled():
                readings.append(status(proxy)["tunnels"]["bytes_to_upstream"])
                return len(readings) > 5 and readings[-1] == readings[-6] > 0
            wait_until(stalled, timeout=30, interval=0.1, what="the relay to stall")
            assert sender.is_alive() and sent[0] < total  # the client is held back, not buffered for
            growth = rss_bytes(worker) - baseline
            print(f"\nstalled: sent {sent[0] / MIB:.0f} MiB of {total / MIB:.0f}, relayed {readings[-1] / MIB:.1f} MiB, proxy RSS +{growth / MIB:.1f} MiB")
            assert growth < 8 * MIB, f"proxy RSS grew {growth / MIB:.1f} MiB with the upstream not reading"
            may_read.set()
            sender.join(60)
            wait_until(lambda: "upstream" in digest, timeout=60, what="the upstream to read everything")
        assert digest["upstream"] == (total, expected)
        assert not upstream.errors
    finally:
        may_read.set()
        upstream.close()


def wss_proxy(start_proxy, folder, ca, upstream: str, event_loop: str):
    """A proxy in front of ``upstream`` with a [tls] listener for localhost too, on ``event_loop``."""
    write_cert(ca.issue_cert("localhost"), folder, "site")
    extra = (f'event_loop = "{event_loop}"\n'
             '[tls]\nlisten = ["127.0.0.1:0"]\ncertificate = "site.pem"\nkey = "site.key"\n')
    return start_proxy(proxy_config(upstream, extra=extra.replace("\n", "\n        ")))


def test_wss_through_tls(tmp_path, start_proxy, ca, ws_gunicorn, event_loop):
    proxy = wss_proxy(start_proxy, tmp_path, ca, ws_gunicorn.address, event_loop)
    port = https_port(proxy)

    async def go():
        async with connect(f"wss://localhost:{port}/ws/echo", ssl=client_context(ca), max_size=4 * MIB) as ws:
            payload = os.urandom(MIB)
            await ws.send(payload)
            assert await ws.recv() == payload
        async with connect(f"wss://localhost:{port}/ws/bye", ssl=client_context(ca)) as ws:
            await ws.send("x")
            assert await ws.recv() == "bye"
            await ws.wait_closed()
            assert ws.close_code == 1000
    run(go())
    def both_closed():
        tunnels = status(proxy)["tunnels"]
        return tunnels["open"] == 0 and tunnels["total"] == 2
    wait_until(both_closed, timeout=10, what="both tunnels closed")


def test_wss_tunnels_cost_little_memory(tmp_path, start_proxy, ca, ws_gunicorn, event_loop):
    proxy = wss_proxy(start_proxy, tmp_path, ca, ws_gunicorn.address, event_loop)
    port, worker = https_port(proxy), worker_pid(proxy)
    count = 60

    async def go():
        context = client_context(ca)
        async with connect(f"wss://localhost:{port}/ws/echo", ssl=context) as ws:  # warm up: first handshake
            await ws.send("warm")
            await ws.recv()
        baseline = rss_bytes(worker)
        sockets = await asyncio.gather(*(connect(f"wss://localhost:{port}/ws/echo", ssl=context, ping_interval=None)
                                         for _ in range(count)))
        try:
            await asyncio.gather(*(ws.send("x") for ws in sockets))
            await asyncio.gather(*(ws.recv() for ws in sockets))
            return rss_bytes(worker) - baseline
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))
    growth = run(go())
    print(f"\nproxy worker RSS: +{growth / MIB:.1f} MiB with {count} wss tunnels ({growth / count / 1024:.0f} KiB each)")
    # asyncio's own 256 KiB receive buffer per TLS connection would make this about 290 KiB (server/tls.py);
    # measured 83 KiB on asyncio with it shrunk, 51-60 KiB on uvloop (its buffer is not zeroed).
    assert growth < count * 150 * 1024


def test_200_concurrent_tunnels_with_bounded_memory(proxy):
    count = 200
    wait_until(lambda: status(proxy)["tunnels"]["open"] == 0, timeout=10, what="no tunnel left by other tests")
    worker = worker_pid(proxy)
    assert worker != proxy.pid
    baseline = rss_bytes(worker)
    measured = {}

    async def go():
        sockets = []
        try:
            for batch in range(0, count, 50):
                sockets += await asyncio.gather(*(connect(proxy.ws + "/ws/echo", ping_interval=None)
                                                  for _ in range(batch, min(batch + 50, count))))
            await asyncio.gather(*(ws.send(f"n{i}") for i, ws in enumerate(sockets)))
            answers = await asyncio.gather(*(ws.recv() for ws in sockets))
            assert answers == [f"n{i}" for i in range(count)]
            measured["open"] = status(proxy)["tunnels"]["open"]
            measured["rss"] = rss_bytes(worker)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    run(go())
    growth = measured["rss"] - baseline
    print(f"\nproxy worker RSS: {baseline / MIB:.1f} MiB before, {measured['rss'] / MIB:.1f} MiB with {count} tunnels "
          f"open (+{growth / MIB:.1f} MiB, {growth / count / 1024:.0f} KiB per tunnel)")
    assert measured["open"] == count
    assert growth < 32 * MIB, f"{count} tunnels grew the proxy by {growth / MIB:.1f} MiB"
    wait_until(lambda: status(proxy)["tunnels"]["open"] == 0, timeout=20, what="every tunnel closed")


def test_upgrade_to_a_route_without_websocket_support_in_the_app(proxy):
    async def go():
        with pytest.raises(InvalidStatus) as caught:
            async with connect(proxy.ws + "/missing"):
                pass
        return caught.value.response.status_code
    assert run(go()) == 404  # the app's answer, passed back as an ordinary response


def test_graceful_stop_closes_open_tunnels_at_once(tmp_path, start_proxy, ws_gunicorn):
    proxy = start_proxy(proxy_config(ws_gunicorn.address).replace(
        'listen = ["127.0.0.1:0"]', 'listen = ["127.0.0.1:0"]\n        grace_period = 30.0'))

    async def go():
        async with connect(f"ws://127.0.0.1:{proxy.port}/ws/echo", ping_interval=None) as ws:
            await ws.send("before the stop")
            assert await ws.recv() == "before the stop"
            stopped_at = time.monotonic()
            proxy.signal(signal.SIGTERM)
            await asyncio.wait_for(ws.wait_closed(), 10)
            return time.monotonic() - stopped_at
    assert run(go()) < 5  # not held until grace_period: the upgrade request finished long ago
    assert proxy.proc.wait(10) == 0
    assert any("tunnel=websocket" in line and "end=shutdown" in line for line in proxy.access_lines())


def test_status_adds_up_tunnels_of_every_worker(tmp_path, start_proxy, ws_gunicorn):
    proxy = start_proxy(proxy_config(ws_gunicorn.address).replace(
        'listen = ["127.0.0.1:0"]', 'listen = ["127.0.0.1:0"]\n        workers = 2'))
    wait_until(lambda: sum("is accepting connections" in line for line in proxy.lines) == 2,
               what="both workers to accept")

    async def go():
        sockets = [await connect(f"ws://127.0.0.1:{proxy.port}/ws/echo", ping_interval=None) for _ in range(6)]
        try:
            for ws in sockets:
                await ws.send("x")
                await ws.recv()
            # Each worker publishes its counters about once a second; any worker answers with the sum.
            await asyncio.to_thread(wait_until, lambda: status(proxy)["tunnels"]["open"] == 6, 10)
            return status(proxy)["workers"]
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))
    assert len(run(go())) == 2
    wait_until(lambda: status(proxy)["tunnels"]["open"] == 0, timeout=10, what="every tunnel closed")
