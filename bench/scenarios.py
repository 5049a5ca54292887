"""What is measured: eleven scenarios, each against the proxy (once per engine) and nginx, and their targets.

The targets (docs/performance.md) say how close to nginx a Python proxy on
asyncio should come, with either HTTP/1.1 engine: proxied requests at 0.9x
nginx's req/s with a p99 at most 1.5x, small static files at 0.8x, large
ones at 0.9x, 1,000 connections at 0.8x without an error in under 80 MB, a
10 MiB stream without an error, a 100 KiB JSON answer compressed with gzip
(both servers at the same level) at 0.8x for about the same bytes on the
wire, response cache hits at 0.8x nginx's proxy_cache hits (and at 10x the
same answer forwarded to Gunicorn: report.cache_line), proxied requests
through a route with request policy at 0.9x; over HTTP/2 (TLS, h2load: 10
clients with 10 streams each), 0.8x nginx for a small static file and for
proxied JSON.

A scenario is a value (URL path, connection count, targets); the harness runs
every one against each proxy and nginx alike. A scenario that needs a new
kind of work from the servers adds a row to ``configs.LOCATIONS`` for its
path. Targets are reported, never enforced: the harness measures, people
decide.
"""

from __future__ import annotations

from dataclasses import dataclass

CACHED_PATH = "/api/cached/4k"  # bench/app.py; a route with a response cache on both servers
UNCACHED_PATH = "/api/4k"  # the same view on a route without one
SMALL_FILE = "small.bin"  # 4 KiB
LARGE_FILE = "large.bin"  # 1 MiB
STATIC_FILES = {SMALL_FILE: 4 * 1024, LARGE_FILE: 1024 * 1024}
GZIP_LEVEL = 5  # the gzip scenario: nginx's gzip_comp_level and the proxy's compress level alike
GZIP_PATH = "/api/json-100k"


@dataclass(frozen=True)
class Targets:
    """The targets for one scenario; None where none is set."""

    min_rps_ratio: float | None = None  # proxy req/s / nginx req/s
    max_p99_ratio: float | None = None  # proxy p99 / nginx p99
    max_rss_mb: float | None = None  # the proxy's peak RSS
    no_errors: bool = True  # wrk counts no socket error and no non-2xx answer

    def describe(self) -> str:
        parts = []
        if self.min_rps_ratio is not None:
            parts.append(f">={self.min_rps_ratio:g}x req/s")
        if self.max_p99_ratio is not None:
            parts.append(f"p99<={self.max_p99_ratio:g}x")
        if self.max_rss_mb is not None:
            parts.append(f"RSS<{self.max_rss_mb:g}MB")
        return ", ".join(parts) or "no errors"


@dataclass(frozen=True)
class Scenario:
    key: str  # short name used on the command line and in the JSON
    title: str
    path: str  # the URL path requested on both servers
    connections: int
    targets: Targets
    headers: tuple[tuple[str, str], ...] = ()  # request headers wrk sends (and the sanity check)
    protocol: str = "http/1.1"  # "http/1.1": wrk over plain HTTP; "h2": h2load over TLS
    streams: int = 1  # requests in flight per connection (HTTP/2)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("proxied", "proxied JSON, 32 conns", "/api/json", 32,
             Targets(min_rps_ratio=0.9, max_p99_ratio=1.5)),
    Scenario("static-4k", "static 4 KiB, 32 conns", f"/static/{SMALL_FILE}", 32,
             Targets(min_rps_ratio=0.8)),
    Scenario("static-1m", "static 1 MiB, 8 conns", f"/static/{LARGE_FILE}", 8,
             Targets(min_rps_ratio=0.9)),
    Scenario("proxied-1k", "proxied JSON, 1000 conns", "/api/json", 1000,
             Targets(min_rps_ratio=0.8, max_rss_mb=80)),
    Scenario("stream-10m", "proxied 10 MiB stream, 8 conns", "/api/big", 8,
             Targets()),
    Scenario("gzip-100k", f"proxied 100 KiB JSON, gzip {GZIP_LEVEL}, 32 conns", GZIP_PATH, 32,
             Targets(min_rps_ratio=0.8), headers=(("Accept-Encoding", "gzip"),)),
    # The same 4 KiB answer, which says it may be cached: hits of both servers' response caches (nginx
    # proxy_cache), and forwarded to Gunicorn every time on a route without one (report.cache_line).
    Scenario("cached-4k", "cache hits, 4 KiB, 32 conns", CACHED_PATH, 32,
             Targets(min_rps_ratio=0.8)),
    Scenario("proxied-4k", "proxied 4 KiB, no cache, 32 conns", UNCACHED_PATH, 32,
             Targets()),
    # Proxied JSON through a route with a request header rule, an allow list and a rate limit (never reached).
    Scenario("proxied-policy", "proxied JSON + policy, 32 conns", "/policy/json", 32,
             Targets(min_rps_ratio=0.9, max_p99_ratio=1.5)),
    Scenario("h2-static-4k", "HTTP/2 static 4 KiB, 10x10 streams", f"/static/{SMALL_FILE}", 10,
             Targets(min_rps_ratio=0.8), protocol="h2", streams=10),
    Scenario("h2-proxied", "HTTP/2 proxied JSON, 10x10 streams", "/api/json", 10,
             Targets(min_rps_ratio=0.8), protocol="h2", streams=10),
)

BY_KEY = {s.key: s for s in SCENARIOS}
