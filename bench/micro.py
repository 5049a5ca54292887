"""``python -m bench.micro``: the proxy's per-request work timed in one process, without sockets.

wrk numbers on a shared two-core machine move by 2-3x from one minute to the
next; these do not, so they are the quick way to see what a change to the
proxy saves (run it on a scratch copy with ``--proxy-src DIR``, before and
after). What is left out is the kernel: the socket syscalls and epoll, which
``make bench``'s CPU µs/req includes.

Two kinds of figures:

* whole requests: the real ``ClientProtocol`` on a real asyncio loop, with
  transports that only count bytes. A static request is served from the
  open-file cache; a proxied one goes through the real pool and forwarding
  to an upstream transport that answers each request at once with a canned
  Gunicorn response. Each request is fed, then the loop runs until the
  connection waits for the next one, as with a keep-alive client like wrk.
* stages: the sans-IO pieces those requests are made of, one at a time.

Times are the best of ``--repeat`` rounds, in µs per request (or per call).
``--clock cpu`` counts the CPU time of this thread instead of the time that
passed: on a machine busy with other processes, the figures then move much
less (what they leave out is waiting for the CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REQUEST = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"  # what wrk sends
UPSTREAM_BODY = b'{"items":[1,2,3],"ok":true,"service":"twotier-bench"}\n'
UPSTREAM_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nDate: Tue, 25 Nov 2026 12:00:00 GMT\r\n"
                     b"Connection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % len(UPSTREAM_BODY)) + UPSTREAM_BODY
# What /api/cached/ answers (bench/app.py's 4 KiB that may be cached for an hour): stored by the first request,
# every later one is a hit of the response cache.
CACHEABLE_BODY = (b'{"items":"' + b"x" * 4083 + b'"}\n')[:4096]
CACHEABLE_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nDate: Tue, 25 Nov 2026 12:00:00 GMT\r\n"
                      b"Connection: keep-alive\r\nContent-Type: application/json\r\nCache-Control: public, "
                      b"max-age=3600\r\nContent-Length: %d\r\n\r\n" % len(CACHEABLE_BODY)) + CACHEABLE_BODY


# A browser's first request for a page: about ten fields (what codec.py's llhttp path is tuned for).
BROWSER_GET = (b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: www.example.test\r\n"
               b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
               b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
               b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
               b"Connection: keep-alive\r\nCookie: session=3f9a1c; theme=dark\r\nUpgrade-Insecure-Requests: 1\r\n"
               b"Sec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n\r\n")


class CountingTransport:
    """Enough of asyncio.Transport for the proxy's protocols: writes are counted, never sent."""

    def __init__(self, on_write=None) -> None:
        self.written = 0
        self.writes = 0
        self.on_write = on_write
        self.closing = False
        self.protocol = None  # told connection_lost on close, as a real transport does

    def write(self, data) -> None:
        if data:
            self.writes += 1
            self.written += len(data)
            if self.on_write is not None:
                self.on_write(data)

    def writelines(self, parts) -> None:
        for part in parts:
            self.write(part)

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing and self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)
        self.closing = True

    abort = close

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK = [time.perf_counter]  # --clock


# A route with a request header rule, an allow list and a rate limit that no run reaches (what make bench's
# "proxied JSON + policy" scenario measures), for a proxy that has them.
POLICY = {
    "rate_limits": {"bench": {"rate": "1000000r/s", "burst": 1000000}},
    "route": {"prefix": "/policy/", "upstream": "app", "request_headers": {"set": {"X-Site": "shop"}},
              "allow": ["127.0.0.0/8"], "rate_limit": "bench"},
}


def make_config(folder: Path, policy: bool = False):
    from proxy import config

    static = folder / "static"
    static.mkdir(exist_ok=True)
    (static / "small.bin").write_bytes(os.urandom(4096))
    data = {
        "server": {"listen": ["127.0.0.1:0"]},
        "log": {"access": "off"},
        "upstreams": {"app": {"servers": ["127.0.0.1:9"], "keepalive": 32}},
        "routes": [{"prefix": "/static/", "static": str(static)}, {"prefix": "/api/", "upstream": "app"}],
    }
    if hasattr(config, "Cache"):  # a proxy with a response cache (not one from before it, under --proxy-src)
        data["caches"] = {"bench": {"memory": "64m"}}
        data["routes"].append({"prefix": "/api/cached/", "upstream": "app", "cache": "bench"})
    if policy:
        data["rate_limits"] = POLICY["rate_limits"]
        data["routes"].append(POLICY["route"])
    return config.from_dict(data, folder / "proxy.toml")


def has_policy(folder: Path) -> bool:
    """Whether this proxy knows request policy (an older one, given with --proxy-src, may not)."""
    from proxy.errors import ConfigError

    try:
        make_config(folder, policy=True)
    except ConfigError:
        return False
    return True


def fake_upstreams(worker) -> None:
    """Replace each pool's connect with an in-memory server that answers every request at once."""
    from proxy.server.upstream import UpstreamConnection
    from proxy.upstream import pool as pool_module

    loop = worker.loop
    for group in worker.groups.values():
        for peer in group.peers:
            pool = peer.pool

            def open_connection(waiter, pool=pool) -> None:
                conn = UpstreamConnection(pool)
                pool.move(conn, pool_module.CONNECTING)
                pool.connects += 1

                def answer(data) -> None:
                    data = bytes(data)
                    if data.endswith(b"\r\n\r\n"):  # a whole request head, no body: answer it
                        cached = data.startswith(b"GET /api/cached/")
                        loop.call_soon(conn.data_received, CACHEABLE_RESPONSE if cached else UPSTREAM_RESPONSE)

                conn.connection_made(CountingTransport(answer))
                pool.move(conn, pool_module.ACTIVE)
                waiter.connected(conn, False)

            pool._open = open_connection


def whole_requests(folder: Path, path: bytes, count: int) -> float:
    """µs per request for ``count`` keep-alive requests to ``path`` through the real client connection."""
    from proxy.server.client import ClientProtocol
    from proxy.server.worker import Worker

    loop = asyncio.new_event_loop()
    try:
        worker = Worker(make_config(folder, policy=path.startswith(b"/policy/")), loop)
        fake_upstreams(worker)
        request = REQUEST % path

        async def connection(requests: int) -> float:
            client = ClientProtocol(worker)
            transport = CountingTransport()
            client.connection_made(transport)
            transport.protocol = client
            started = CLOCK[0]()
            for _ in range(requests):
                before = client.parser.requests
                client.data_received(request)
                await settled(lambda: client.state == "idle" and client.parser.requests > before, client)
            elapsed = CLOCK[0]() - started
            client.connection_lost(None)
            return elapsed

        return per_request(loop, connection, count)
    finally:
        loop.close()


PER_CONNECTION = 500  # requests on one connection: below keepalive_requests (1000), after which it is closed


async def settled(done, conn) -> None:
    """Run the loop until ``done()``: a proxied request takes a few turns, a static one none (bounded)."""
    for _ in range(1000):
        if done():
            return
        await asyncio.sleep(0)
    raise RuntimeError(f"the connection did not answer: {conn!r}")


def per_request(loop, connection, count: int) -> float:
    """µs per request over ``count`` requests, PER_CONNECTION on each ``connection(requests)`` (which returns
    the seconds they took)."""
    async def drive() -> float:
        elapsed = 0.0
        for start in range(0, count, PER_CONNECTION):
            elapsed += await connection(min(PER_CONNECTION, count - start))
        return elapsed

    return loop.run_until_complete(drive()) * 1e6 / count


def h2_rounds(path: bytes, rounds: int, streams: int) -> list[bytes]:
    """What an HTTP/2 client like h2load sends: the preface and a window for the whole run, then ``rounds``
    reads of ``streams`` GET requests each (HPACK-encoded by a real client, so the proxy's decoder follows)."""
    import h2.config
    import h2.connection

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.increment_flow_control_window(2**30)
    out = [client.data_to_send()]
    fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"127.0.0.1:8443"), (b":path", path),
              (b"user-agent", b"h2load nghttp2/1.52.0")]
    for _ in range(rounds):
        for _ in range(streams):
            client.send_headers(client.get_next_available_stream_id(), fields, end_stream=True)
        out.append(client.data_to_send())
    out[1] = out[0] + out[1]
    return out[1:]


def whole_h2_requests(folder: Path, path: bytes, count: int, streams: int = 10) -> float:
    """µs per request for ``count`` requests to ``path`` on HTTP/2 connections, ``streams`` per read."""
    from proxy.server.h2conn import Http2Protocol
    from proxy.server.worker import Worker

    loop = asyncio.new_event_loop()
    rounds = h2_rounds(path, PER_CONNECTION // streams, streams)
    try:
        worker = Worker(make_config(folder), loop)
        fake_upstreams(worker)

        async def connection(requests: int) -> float:
            server = Http2Protocol(worker)
            transport = CountingTransport()
            server.connection_made(transport)
            transport.protocol = server
            started = time.perf_counter()
            for data in rounds[:requests // streams]:
                server.data_received(data)
                await settled(lambda: not server.streams, server)
            elapsed = time.perf_counter() - started
            server.connection_lost(None)
            return elapsed

        return per_request(loop, connection, count)
    finally:
        loop.close()


def stages(folder: Path) -> dict[str, tuple[callable, int]]:
    """name -> (function doing one unit of work, units per call)."""
    import h11

    from proxy.http import codec, headers, routing, static

    config = make_config(folder)
    router = routing.Router(config.routes)
    route = router.match("/static/small.bin")
    request = REQUEST % b"/static/small.bin"
    static_headers = [(b"host", b"127.0.0.1:8080")]

    def h11_server_cycle():
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(request)
        conn.next_event()
        conn.next_event()
        conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"4")]))
        conn.send(h11.Data(data=b"abcd"))
        conn.send(h11.EndOfMessage())

    def static_uncached():
        # What every request cost before the cache, and still costs with open_file_cache_valid = 0.
        variant = static.lookup(route, "/static/small.bin").choose(None)
        plan = static.plan(variant, b"GET", static_headers)
        fd = os.open(variant.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            variant.matches(os.fstat(fd))
            os.pread(fd, plan.content_length, 0)
        finally:
            os.close(fd)

    files = static.OpenFileCache()

    def static_hit():
        # A cache hit: the 4 KiB body comes with the plan, no open().
        variant = files.lookup(route, "/static/small.bin", b"", 0.0).choose(None)
        return static.plan(variant, b"GET", static_headers).body

    (folder / "static" / "app.js").write_bytes(b"x" * 4096)
    (folder / "static" / "app.js.gz").write_bytes(b"g" * 1024)
    (folder / "static" / "app.js.br").write_bytes(b"b" * 900)
    browser = [(b"host", b"127.0.0.1:8080"), (b"accept-encoding", b"gzip, deflate, br, zstd")]

    def static_hit_precompressed():
        variant = files.lookup(route, "/static/app.js", b"", 0.0).choose(browser[1][1])
        return static.plan(variant, b"GET", browser).body

    client_headers = [(b"host", b"127.0.0.1:8080")]
    response_headers = [(b"server", b"gunicorn"), (b"date", b"Tue, 25 Nov 2026 12:00:00 GMT"),
                        (b"connection", b"keep-alive"), (b"content-type", b"application/json"),
                        (b"content-length", b"55")]

    def forward_headers():
        headers.upstream_request_headers(client_headers, host=b"127.0.0.1:8080", client_ip="127.0.0.1",
                                         scheme=b"http", request_id=b"0" * 32, via=b"1.1 twotier", body_length=None)
        headers.client_response_headers(response_headers, via=b"1.1 twotier", extra=[])

    def codec_request(engine: str):
        parser = codec.request_parser(engine, config.limits)

        def parse():  # one keep-alive connection: head, end, paused, next cycle
            parser.feed(BROWSER_GET)
            parser.next_event()
            parser.next_event()
            parser.next_event()
            parser.start_next_cycle()
        return parse

    def codec_response(engine: str):
        parser = codec.response_parser(engine)

        def parse():  # one pooled connection: head, body, end, next cycle
            parser.expect(b"GET")
            parser.feed(UPSTREAM_RESPONSE)
            parser.next_event()
            parser.next_event()
            parser.next_event()
            parser.next_event()
            parser.start_next_cycle()
        return parse

    return {
        "codec llhttp: parse a browser GET (10 fields)": (codec_request("llhttp"), 1),
        "codec h11: parse a browser GET (10 fields)": (codec_request("h11"), 1),
        "codec llhttp: parse a Gunicorn JSON response": (codec_response("llhttp"), 1),
        "codec h11: parse a Gunicorn JSON response": (codec_response("h11"), 1),
        "h11 alone: parse a GET, send a 200 (new Connection)": (h11_server_cycle, 1),
        "routing.normalize_path + Router.match": (lambda: router.match(routing.normalize_path(b"/static/small.bin")), 1),
        "static, no cache: lookup + plan + open + fstat + pread + close": (static_uncached, 1),
        "static, OpenFileCache hit + choose + plan (4 KiB body cached)": (static_hit, 1),
        "static, OpenFileCache hit, br/gz siblings, browser Accept-Encoding": (static_hit_precompressed, 1),
        "headers: upstream_request_headers + client_response_headers": (forward_headers, 1),
        "request_id (128 random bits)": (lambda: headers.request_id(None), 1),
    }


def profile_whole(folder: Path, path: bytes, count: int, run=whole_requests) -> int:
    """cProfile over ``count`` whole requests; per-request self and inclusive µs, with the profiler's overhead."""
    import cProfile
    import pstats

    from .profiling import pstats_rows, render

    run(folder, path, 200)  # imports and first-call costs out of the way
    profiler = cProfile.Profile()
    profiler.enable()
    run(folder, path, count)
    profiler.disable()
    rows = pstats_rows(pstats.Stats(profiler), count)
    print(render(f"== in-process {path.decode()}: cProfile", rows,
                 f"{count} requests; µs include cProfile's overhead (compare shares, not absolutes)"))
    return 0


def best_of(fn, number: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = CLOCK[0]()
        for _ in range(number):
            fn()
        best = min(best, CLOCK[0]() - started)
    return best * 1e6 / number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.splitlines()[0])
    parser.add_argument("--proxy-src", type=Path, help="import the proxy package from DIR (a scratch copy)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best is kept (default %(default)s)")
    parser.add_argument("--cprofile", choices=["static", "proxied", "cached", "policy", "h2-static", "h2-proxied"],
                        help="instead, profile whole requests of this kind and print the top functions")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: time passed (default); cpu: this thread's CPU time, steadier on a busy machine")
    args = parser.parse_args(argv)
    CLOCK[0] = CLOCKS[args.clock]
    if args.proxy_src:
        sys.path.insert(0, str(args.proxy_src.resolve()))
    import proxy
    import proxy.config  # noqa: F401 - what it declares says which requests can be measured

    print(f"proxy from {Path(proxy.__file__).parent}; best of {args.repeat} rounds ({args.clock} clock)")
    with tempfile.TemporaryDirectory(prefix="twotier-micro-") as tmp:
        folder = Path(tmp)
        if args.cprofile:
            path = {"static": b"/static/small.bin", "proxied": b"/api/json", "policy": b"/policy/json",
                    "cached": b"/api/cached/4k"}
            return profile_whole(folder, path[args.cprofile.removeprefix("h2-")], args.requests,
                                 whole_h2_requests if args.cprofile.startswith("h2-") else whole_requests)
        wholes = [("whole static 4 KiB request (in-process)", b"/static/small.bin", whole_requests),
                  ("whole proxied request (in-process upstream)", b"/api/json", whole_requests)]
        if hasattr(sys.modules["proxy.config"], "Cache"):
            wholes.append(("whole response-cache hit, 4 KiB (in-process)", b"/api/cached/4k", whole_requests))
        if has_policy(folder):
            wholes.append(("whole proxied request, route with header rule + allow + rate limit", b"/policy/json",
                           whole_requests))
        wholes += [("HTTP/2: whole static 4 KiB request, 10 streams a read", b"/static/small.bin", whole_h2_requests),
                   ("HTTP/2: whole proxied request, 10 streams a read", b"/api/json", whole_h2_requests)]
        for label, path, run in wholes:
            us = min(run(folder, path, args.requests) for _ in range(args.repeat))
            print(f"{us:8.1f} µs  {label}")
        for label, (fn, _) in stages(folder).items():
            print(f"{best_of(fn, args.requests, args.repeat):8.1f} µs  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
