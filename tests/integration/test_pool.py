"""The upstream pool and the group's queue, against real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading

import pytest
import requests

from proxy.config import Address
from proxy.http import codec
from proxy.server.timers import Deadlines
from proxy.upstream import pool as pool_module
from proxy.upstream.pool import ServerPool
from tests.helpers import RecordingUpstream, proxy_config, wait_until


class Waiter:
    """What a request gives the pool: it records what it was handed."""

    def __init__(self) -> None:
        self.cancelled = False
        self.got = asyncio.get_running_loop().create_future()

    def connected(self, conn, reused: bool) -> None:
        self.got.set_result((conn, reused))

    def connect_failed(self, error) -> None:
        self.got.set_result((None, error))


async def _server(connections: list):
    async def handle(reader, writer):
        connections.append(writer)
        await reader.read()  # hold the connection until the client closes it

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _until(predicate, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _pool(port: int, **kwargs) -> ServerPool:
    loop = asyncio.get_running_loop()
    settings = {"keepalive": 2, "idle_timeout": 60.0, "connect_timeout": 3.0, **kwargs}
    return ServerPool(Address("127.0.0.1", port), loop=loop, timers=Deadlines(loop), **settings)


def _give_back(pool: ServerPool, conn) -> None:
    """As a request whose response ended cleanly does (the parser done with a response)."""
    conn.parser.expect(b"GET", False)
    conn.parser.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    while conn.parser.next_event() is not codec.EndOfMessage:
        pass
    pool.release(conn)


def test_connections_move_through_explicit_states():
    async def run():
        accepted: list = []
        server, port = await _server(accepted)
        pool = _pool(port)
        waiter = Waiter()
        pool.acquire(waiter)
        assert pool.counts["connecting"] == 1
        conn, reused = await waiter.got
        assert reused is False and conn.state == pool_module.ACTIVE and pool.counts["active"] == 1
        _give_back(pool, conn)
        assert conn.state == pool_module.IDLE and "idle=1" in repr(pool) and "active=0" in repr(pool)
        again = Waiter()
        pool.acquire(again)
        assert await again.got == (conn, True)  # the idle one, reused
        _give_back(pool, conn)
        # The server closes the idle connection: EOF is seen, and the next request gets a new one.
        await _until(lambda: accepted, "the server to accept")
        accepted[0].close()
        await _until(lambda: conn.state == pool_module.CLOSED, "the pool to notice the close")
        third = Waiter()
        pool.acquire(third)
        fresh, reused = await third.got
        assert fresh is not conn and reused is False and pool.connects == 2
        pool.close()
        server.close()

    asyncio.run(run())


def test_idle_connections_are_closed_after_idle_timeout_and_trimmed_to_keepalive():
    async def run():
        accepted: list = []
        server, port = await _server(accepted)
        pool = _pool(port, keepalive=1, idle_timeout=0.2)
        first, second = Waiter(), Waiter()
        pool.acquire(first)
        pool.acquire(second)
        (a, _), (b, _) = await first.got, await second.got
        _give_back(pool, a)
        _give_back(pool, b)  # over keepalive = 1: the oldest idle one is closed
        assert a.state in (pool_module.CLOSING, pool_module.CLOSED) and b.state == pool_module.IDLE
        await _until(lambda: b.state == pool_module.CLOSED, "idle_timeout to close the last one")
        assert pool.counts == {"connecting": 0, "active": 0, "idle": 0, "closing": 0}
        server.close()

    asyncio.run(run())


def test_a_refused_connect_is_a_502_error():
    async def run():
        sock_port = _unused_port()
        pool = _pool(sock_port)
        waiter = Waiter()
        pool.acquire(waiter)
        conn, error = await waiter.got
        assert conn is None and error.status == 502 and "refused" in str(error)
        assert pool.counts["connecting"] == 0

    asyncio.run(run())


def _unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the group's queue, through the real proxy ---

@pytest.fixture
def held_upstream():
    """An upstream whose first request is answered only when the test says so."""
    release = threading.Event()
    calls = []

    def respond(raw: bytes) -> bytes:
        calls.append(raw)
        if b"/hold" in raw.split(b"\r\n", 1)[0]:
            release.wait(20)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    upstream = RecordingUpstream(respond)
    yield upstream, release
    release.set()
    upstream.close()


def _status(proxy) -> dict:
    return requests.get(proxy.url + "/_proxy/status", timeout=5).json()


def _in_background(url: str) -> dict:
    result: dict = {}

    def run():
        try:
            result["response"] = requests.get(url, timeout=30)
        except requests.RequestException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result["thread"] = thread
    return result


def _queue_config(upstream, extra: str) -> str:
    return f"""
[server]
listen = ["127.0.0.1:0"]
[status]
[upstreams.app]
servers = [{{ address = "{upstream.address}", max_conns = 1 }}]
{extra}
[[routes]]
prefix = "/"
upstream = "app"
"""


def test_over_max_conns_a_request_waits_in_the_queue(start_proxy, held_upstream):
    upstream, release = held_upstream
    proxy = start_proxy(_queue_config(upstream, "queue_timeout = 30.0"))
    first = _in_background(proxy.url + "/hold")
    wait_until(lambda: len(upstream.received) == 1, what="the first request to reach the upstream")
    second = _in_background(proxy.url + "/after")
    wait_until(lambda: _status(proxy)["upstreams"]["app"]["queued"] == 1, what="the second request to queue")
    assert "response" not in second  # waiting, not failed
    release.set()
    for result in (first, second):
        result["thread"].join(20)
        assert result["response"].status_code == 200
    assert len(upstream.received) == 2
    assert _status(proxy)["upstreams"]["app"]["queued"] == 0


def test_a_full_queue_answers_503_at_once(start_proxy, held_upstream):
    upstream, release = held_upstream
    proxy = start_proxy(_queue_config(upstream, "queue_timeout = 30.0\nqueue = 1"))
    first = _in_background(proxy.url + "/hold")
    wait_until(lambda: len(upstream.received) == 1, what="the first request to reach the upstream")
    second = _in_background(proxy.url + "/queued")
    wait_until(lambda: _status(proxy)["upstreams"]["app"]["queued"] == 1, what="one request in the queue")
    full = requests.get(proxy.url + "/third", timeout=10)
    assert full.status_code == 503 and full.headers["Retry-After"]
    assert _status(proxy)["upstreams"]["app"]["queued"] == 1  # the queued one still waits
    release.set()
    for result in (first, second):
        result["thread"].join(20)
        assert result["response"].status_code == 200
    assert len(upstream.received) == 2


def test_a_queued_request_gets_503_after_queue_timeout(start_proxy, held_upstream):
    upstream, release = held_upstream
    proxy = start_proxy(_queue_config(upstream, "queue_timeout = 0.3"))
    first = _in_background(proxy.url + "/hold")
    wait_until(lambda: len(upstream.received) == 1, what="the first request to reach the upstream")
    late = requests.get(proxy.url + "/late", timeout=10)  # /hold is held until the end of the test
    assert late.status_code == 503 and late.headers["Retry-After"] == "1"
    assert b"503" in late.content
    release.set()
    first["thread"].join(20)
    assert first["response"].status_code == 200
    assert len(upstream.received) == 1
