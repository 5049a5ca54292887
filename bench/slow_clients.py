"""Slow clients against Gunicorn's sync workers, directly and through the proxy.

    .venv/bin/python -m bench.slow_clients            # from the repository root; about 3 minutes

For each kind of slow client and each count N, a fresh stack is started:
Gunicorn with 2 sync workers serving ``tests.apps.basic:app`` and the proxy
in front of it (default limits). A normal client sends one warm-up request,
then N slow clients connect, either straight to Gunicorn or to the proxy, and
one second later the normal client sends ``GET /echo`` to the same place a
few times in a row; its latency (or its timeout) is recorded. The kinds of
slow client:

* slowloris: half a request head, then nothing;
* slow body: a POST head announcing 64 KiB, 1 KiB of it, then 1 byte a second;
* slow reader: ``GET /big?size=8m`` with a 4 KiB receive buffer, taking 4 KiB a second.

Then the proxy worker's resident memory (``/_proxy/status``,
``process.rss_bytes``) is read with 1,000 idle connections open.

Everything listens on and connects to 127.0.0.1 only. Counts and times are
bounded (``--budget`` stops starting new measurements), and every process
started here is stopped by its process group, also on an error, Ctrl-C or
SIGTERM. docs/slow-clients.md shows a run of this script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable

from tests.helpers import GunicornProcess, ProxyProcess, single_upstream_config

APP = "tests.apps.basic:app"
HOST = "127.0.0.1"
SETTLE = 1.0  # seconds between the slow clients connecting and the first normal request
TICK = 1.0  # seconds between two moves of each slow client

# Besides the defaults: the status page (for RSS), no access log (not measured here).
PROXY_EXTRA = """
[status]
[log]
access = "off"
[limits]
"""

NORMAL = b"GET /echo HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"

_started: list = []  # every process wrapper this script created, stopped in the end whatever happens


# --- the kinds of slow client -------------------------------------------------------------

def _stall(sock: socket.socket) -> None:
    pass


def _one_byte(sock: socket.socket) -> None:
    sock.send(b"x")


def _take_4k(sock: socket.socket) -> None:
    try:
        sock.recv(4096)
    except BlockingIOError:
        pass


@dataclass(frozen=True)
class Kind:
    """One kind of slow client: what it sends at once, and what it does every TICK seconds after."""

    name: str
    title: str
    opening: Callable[["Options"], bytes]
    tick: Callable[[socket.socket], None]
    rcvbuf: int = 0  # a small receive buffer, set before connecting, for slow readers


KINDS = (
    Kind("slowloris", "slowloris (half a head, then nothing)",
         lambda o: b"GET /echo HTTP/1.1\r\nHost: bench\r\nX-Slow: ", _stall),
    Kind("slow-body", "slow body (64 KiB announced, 1 KiB sent, then 1 byte/s)",
         lambda o: (b"POST /echo HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: 65536\r\n\r\n" + b"x" * 1024), _one_byte),
    Kind("slow-reader", "slow reader (GET /big, reads 4 KiB/s)",
         lambda o: b"GET /big?size=%d HTTP/1.1\r\nHost: bench\r\n\r\n" % o.size, _take_4k, rcvbuf=4096),
)


class SlowClients:
    """N slow clients of one kind, moved every TICK seconds by one thread."""

    def __init__(self, kind: Kind, port: int, count: int, options: "Options") -> None:
        self.kind = kind
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.socks.append(sock)
                if kind.rcvbuf:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, kind.rcvbuf)
                sock.settimeout(5)
                sock.connect((HOST, port))
                sock.sendall(kind.opening(options))
                sock.setblocking(False)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    self.kind.tick(sock)

    def close(self) -> None:
        self._stop.set()
        for sock in self.socks:
            sock.close()


# --- processes ------------------------------------------------------------------------------

def _start(cls, *args, **kwargs):
    """Construct a tests.helpers process wrapper, and stop its process group if it fails to come up."""
    wrapper = cls.__new__(cls)
    _started.append(wrapper)
    try:
        wrapper.__init__(*args, **kwargs)
    except BaseException:
        if getattr(wrapper, "proc", None) is not None:
            wrapper.stop()
        raise
    return wrapper


@contextlib.contextmanager
def stack(folder: Path, limits: str = ""):
    """Gunicorn (2 sync workers) and the proxy in front of it; both stopped on the way out."""
    gunicorn = proxy = None
    try:
        gunicorn = _start(GunicornProcess, APP, workers=2, worker_class="sync")
        proxy = _start(ProxyProcess, folder, single_upstream_config(gunicorn.address, PROXY_EXTRA + limits))
        yield gunicorn, proxy
    finally:
        for process in (proxy, gunicorn):
            if process is not None:
                process.stop()


def _stop_everything() -> None:
    for wrapper in _started:
        if getattr(wrapper, "proc", None) is not None and wrapper.proc.poll() is None:
            wrapper.stop()


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through every finally: the processes get stopped


# --- a normal client ------------------------------------------------------------------------

def read_response(sock: socket.socket, deadline: float) -> bytes:
    """One whole response (Content-Length framed, or until close); TimeoutError past ``deadline``."""
    data = b""
    length = None
    while True:
        if length is None and b"\r\n\r\n" in data:
            head, _, _ = data.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = len(head) + 4 + int(value)
        if length is not None and len(data) >= length:
            return data
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def timed_request(port: int, timeout: float, request: bytes = NORMAL) -> tuple[float | None, str]:
    """(seconds until the whole answer arrived, or None on timeout; what came back)."""
    started = time.monotonic()
    deadline = started + timeout
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request)
            reply = read_response(sock, deadline)
    except (TimeoutError, socket.timeout):
        return None, "timeout"
    except OSError as exc:
        return time.monotonic() - started, type(exc).__name__
    status = reply[9:12].decode("ascii", "replace") if reply.startswith(b"HTTP/1.") else "no answer"
    return time.monotonic() - started, status


def proxy_status(proxy: ProxyProcess) -> dict:
    request = b"GET /_proxy/status HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    with socket.create_connection((HOST, proxy.port), timeout=10) as sock:
        sock.sendall(request)
        reply = read_response(sock, time.monotonic() + 10)
    return json.loads(reply.partition(b"\r\n\r\n")[2])


# --- the measurements -----------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    counts: tuple[int, ...]
    timeout: float
    repeats: int
    size: int
    idle: int
    budget: float


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.1f} s"
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


@dataclass
class Cell:
    """The normal client's requests while N slow clients of one kind held one target."""

    kind: str
    count: int
    target: str  # "direct" or "proxy"
    results: list  # (seconds or None, status) per request, stopping at the first timeout
    proxy_rss: int | None = None
    skipped: bool = False

    def text(self, timeout: float) -> str:
        if self.skipped:
            return "not run (budget)"
        ok = [s for s, status in self.results if s is not None and status == "200"]
        failed = [status for s, status in self.results if status != "200"]
        if not ok:
            return f"**timeout** (> {timeout:g} s)" if failed == ["timeout"] else f"**{failed[0]}**"
        text = _duration(statistics.median(ok))
        if max(ok) > 2 * statistics.median(ok) and max(ok) > 0.05:
            text += f" (max {_duration(max(ok))})"
        if failed:
            text += f", then **{failed[0]}**"
        return text


def measure(kind: Kind, count: int, target: str, options: Options, folder: Path) -> Cell:
    with stack(folder) as (gunicorn, proxy):
        port = gunicorn.port if target == "direct" else proxy.port
        timed_request(port, options.timeout)  # warm-up: first connections, imports, the pool
        slow = SlowClients(kind, port, count, options)
        try:
            time.sleep(SETTLE)  # part of the scenario: the slow clients' requests have arrived
            results = []
            for _ in range(options.repeats):
                seconds, status = timed_request(port, options.timeout)
                results.append((seconds, status))
                if status != "200":
                    break
            rss = proxy_status(proxy)["process"]["rss_bytes"] if target == "proxy" else None
        finally:
            slow.close()
    return Cell(kind.name, count, target, results, rss)


def open_idle(port: int, count: int, request: bytes, answered: bool) -> list[socket.socket]:
    """``count`` connections that sent ``request``; with ``answered``, each has read its answer."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection((HOST, port), timeout=10)
            socks.append(sock)
            sock.sendall(request)
        if answered:
            deadline = time.monotonic() + 60
            for sock in socks:
                if not read_response(sock, deadline).startswith(b"HTTP/1.1 200"):
                    raise RuntimeError("an idle connection's request was not answered 200")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def measure_memory(options: Options, folder: Path) -> list[tuple[str, dict, dict]]:
    """Proxy worker RSS and descriptors before and with ``options.idle`` idle connections."""
    rows = []
    cases = (
        ("keep-alive connections idle after one GET /echo each",
         b"GET /echo HTTP/1.1\r\nHost: bench\r\n\r\n", True),
        ("connections that sent half a head (slowloris)", b"GET /echo HTTP/1.1\r\nHost: bench\r\nX-Slow: ", False),
    )
    for title, request, answered in cases:
        # keepalive_timeout is raised so the idle ones are still there when memory is read.
        with stack(folder, limits="keepalive_timeout = 60.0") as (_, proxy):
            for _ in range(20):
                timed_request(proxy.port, options.timeout)
            before = proxy_status(proxy)
            socks = open_idle(proxy.port, options.idle, request, answered)
            try:
                time.sleep(SETTLE)
                during = proxy_status(proxy)
            finally:
                for sock in socks:
                    sock.close()
        rows.append((title, before, during))
    return rows


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- report ---------------------------------------------------------------------------------

def table(cells: list[Cell], options: Options, kinds) -> str:
    by = {(c.kind, c.count, c.target): c for c in cells}
    header = "| slow clients |" + "".join(f" {k.name}: direct | {k.name}: via proxy |" for k in kinds)
    lines = [header, "|---:|" + "---|---|" * len(kinds)]
    for count in options.counts:
        row = f"| {count} |"
        for kind in kinds:
            for target in ("direct", "proxy"):
                cell = by.get((kind.name, count, target))
                row += f" {cell.text(options.timeout) if cell else ''} |"
        lines.append(row)
    return "\n".join(lines)


def rss_table(cells: list[Cell], options: Options, kinds) -> str:
    lines = ["| slow clients |" + "".join(f" {k.name} |" for k in kinds), "|---:|" + "---:|" * len(kinds)]
    by = {(c.kind, c.count): c for c in cells if c.target == "proxy"}
    for count in options.counts:
        row = f"| {count} |"
        for kind in kinds:
            cell = by.get((kind.name, count))
            row += f" {cell.proxy_rss / 2**20:.1f} MiB |" if cell and cell.proxy_rss else " |"
        lines.append(row)
    return "\n".join(lines)


def memory_table(rows, options: Options) -> str:
    lines = ["| proxy worker | RSS | open descriptors | connections open |", "|---|---:|---:|---:|"]
    baseline = rows[0][1]
    lines.append(f"| after 20 requests, nothing open | {baseline['process']['rss_bytes'] / 2**20:.1f} MiB | "
                 f"{baseline['process']['open_fds']} | {baseline['connections']['open']} |")
    for title, before, during in rows:
        grown = during["process"]["rss_bytes"] - before["process"]["rss_bytes"]
        lines.append(f"| {options.idle:,} {title} | {during['process']['rss_bytes'] / 2**20:.1f} MiB "
                     f"(+{grown / 2**20:.1f} MiB, {grown / options.idle / 1024:.1f} KiB each) | "
                     f"{during['process']['open_fds']} | {during['connections']['open']} |")
    return "\n".join(lines)


def parse_size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(text[:-1]) * units[text[-1].lower()] if text[-1:].lower() in units else int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="0,5,10,30,100", help="numbers of slow clients (default %(default)s)")
    parser.add_argument("--kinds", default=",".join(k.name for k in KINDS),
                        help="kinds of slow client to measure (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="normal client's timeout, s (%(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="normal requests per measurement (%(default)s)")
    parser.add_argument("--size", default="8m", help="response size for slow readers (%(default)s)")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections for the memory figure; 0 skips it (%(default)s)")
    parser.add_argument("--budget", type=float, default=600.0,
                        help="seconds after which no new measurement starts (%(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    args = parser.parse_args(argv)
    counts = tuple(int(c) for c in args.counts.split(","))
    kinds = [k for k in KINDS if k.name in args.kinds.split(",")]
    if not kinds:
        parser.error(f"--kinds: choose from {', '.join(k.name for k in KINDS)}")
    if max(counts) > 1000 or args.idle > 5000 or args.repeats > 20 or args.timeout > 300:
        parser.error("bounded: at most 1000 slow clients, 5000 idle connections, 20 repeats, a 300 s timeout")
    options = Options(counts, args.timeout, args.repeats, parse_size(args.size), args.idle, args.budget)
    raise_fd_limit(max(max(counts), options.idle) + 200)
    signal.signal(signal.SIGTERM, _terminated)

    started = time.monotonic()
    cells: list[Cell] = []
    memory = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp:
            folder = Path(tmp)
            for kind in kinds:
                for count in counts:
                    for target in ("direct", "proxy"):
                        if time.monotonic() - started > options.budget:
                            cells.append(Cell(kind.name, count, target, [], skipped=True))
                            continue
                        cell = measure(kind, count, target, options, folder)
                        cells.append(cell)
                        print(f"{kind.name:12} N={count:<4} {target:6} {cell.text(options.timeout)}",
                              file=sys.stderr, flush=True)
            if options.idle and time.monotonic() - started <= options.budget:
                memory = measure_memory(options, folder)
    finally:
        _stop_everything()

    print(f"# python -m bench.slow_clients --kinds {args.kinds} --counts {args.counts} --timeout {args.timeout:g} "
          f"--repeats {args.repeats} --size {args.size} --idle {args.idle}")
    print(f"# {platform.python_implementation()} {platform.python_version()}, gunicorn {version('gunicorn')}, "
          f"h11 {version('h11')}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
          f"{time.monotonic() - started:.0f} s\n")
    print("Normal client's GET /echo while N slow clients hold the same address "
          f"(median of up to {options.repeats}; Gunicorn: 2 sync workers):\n")
    print(table(cells, options, kinds))
    print("\nProxy worker RSS at the end of each measurement through the proxy:\n")
    print(rss_table(cells, options, kinds))
    if memory:
        print(f"\nProxy worker memory with {options.idle:,} idle connections:\n")
        print(memory_table(memory, options))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cells": [c.__dict__ for c in cells],
            "memory": [{"case": t, "before": b, "during": d} for t, b, d in memory],
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
