"""The measurements behind the app tier's defaults (docs/app-tier.md).

``python -m appserver.measure`` (worker class):

Starts one app server per worker class and, in front of each, two proxies:
one with the upstream keep-alive pool (``keepalive = 32``) and one without
(``keepalive = 0``, a new connection per request). Gunicorn is also loaded
directly, with and without client keep-alive. Then ``wrk`` (Debian:
``apt-get install wrk``) runs every case for a few seconds, round after
round, in an order rotated each round, so the cases share whatever the
machine was doing; the ratios are taken within each round and their median
reported. Access logs are off in both tiers: this compares worker classes,
not log writing.

``python -m appserver.measure --keepalive-check`` (Gunicorn's keepalive):
a gthread app server behind a pooling proxy gets one request every ``--gap``
seconds, with Gunicorn's keepalive shorter than the gap and then at the
default; the Server-Timing ``upstream-connect`` entry says, per request,
whether the proxy reused a pooled connection or had to open a new one.

Everything listens on 127.0.0.1; every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("sync", "gthread")


@dataclass(frozen=True)
class Case:
    name: str
    port: int
    close: bool = False  # the load generator sends Connection: close (a new connection per request)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_accepting(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing accepted connections on 127.0.0.1:{port} within {timeout:g}s")


def _proxy_config(port: int, app_port: int, keepalive: int) -> str:
    return (f'[server]\nlisten = ["127.0.0.1:{port}"]\n[log]\naccess = "off"\n'
            f'[upstreams.app]\nservers = ["127.0.0.1:{app_port}"]\nkeepalive = {keepalive}\n'
            f'[[routes]]\nprefix = "/"\nupstream = "app"\n')


def _wrk(case: Case, path: str, seconds: float, connections: int) -> float:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
    if case.close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run([*argv, f"http://127.0.0.1:{case.port}{path}"], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if not match:
        raise RuntimeError(f"wrk printed no rate for {case.name}:\n{out}")
    if errors:
        print(f"  note: {case.name}: {errors[0]}", file=sys.stderr)
    return float(match[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appserver.measure", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0, help="per case per round")
    parser.add_argument("--connections", type=int, default=32, help="concurrent client connections")
    parser.add_argument("--workers", type=int, default=None, help="default: the appserver default")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--path", default="/api/whoami")
    parser.add_argument("--keepalive-check", action="store_true", help="measure Gunicorn's keepalive instead")
    parser.add_argument("--gap", type=float, default=3.0, help="keepalive check: seconds between requests")
    args = parser.parse_args(argv)
    if args.keepalive_check:
        return _processes(lambda start, folder: keepalive_check(start, folder, args))
    if shutil.which("wrk") is None:
        print("measure: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 1
    return _processes(lambda start, folder: worker_classes(start, folder, args))


def _processes(body) -> int:
    """Run ``body(start, folder)``; every process ``start`` launched is stopped afterwards."""
    procs: list[subprocess.Popen] = []
    folder = Path(tempfile.mkdtemp(prefix="appserver-measure-"))

    def start(argv: list[str], port: int) -> None:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        procs.append(proc)
        _wait_accepting(port, proc)

    try:
        return body(start, folder)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _start_pair(start, folder: Path, worker_class: str, app_args: list[str], keepalive: int,
                app_toml: str = "") -> tuple[int, int]:
    """An app server and a proxy (upstream ``keepalive``) in front of it; returns (app port, proxy port)."""
    app_port, port = _free_port(), _free_port()
    app_config = _write(folder / f"appserver-{app_port}.toml", 'access_log = "off"\n' + app_toml)
    start([sys.executable, "-m", "appserver", "--bind", f"127.0.0.1:{app_port}", "--worker-class", worker_class,
           *app_args, "--config", str(app_config)], app_port)
    config = _write(folder / f"proxy-{port}.toml", _proxy_config(port, app_port, keepalive))
    start([sys.executable, "-m", "proxy", "--config", str(config)], port)
    return app_port, port


def worker_classes(start, folder: Path, args: argparse.Namespace) -> int:
    cases: list[Case] = []
    direct: list[Case] = []
    workers = ["--workers", str(args.workers)] if args.workers else []
    for worker_class in CLASSES:
        app_port = 0
        for keepalive in (32, 0):
            app_args = [*workers, "--threads", str(args.threads)]
            app_port, port = _start_pair(start, folder, worker_class, app_args, keepalive)
            cases.append(Case(f"{worker_class} via proxy, upstream keepalive = {keepalive}", port))
        direct += [Case(f"{worker_class} direct, client keep-alive", app_port),
                   Case(f"{worker_class} direct, new connection per request", app_port, close=True)]
    cases += direct  # the rows that matter (through the proxy) first; the first row is the baseline

    for case in cases:  # warm-up, not counted: workers import the app and fill caches on first use
        _wrk(case, args.path, 1.0, args.connections)
    rates: dict[str, list[float]] = {c.name: [] for c in cases}
    for round_number in range(args.rounds):
        shift = round_number % len(cases)
        for case in cases[shift:] + cases[:shift]:
            rates[case.name].append(_wrk(case, args.path, args.seconds, args.connections))
        print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)

    baseline = cases[0].name
    print(f"{os.cpu_count()} cores; {args.connections} connections; {args.rounds} rounds x {args.seconds:g}s; "
          f"GET {args.path}; threads {args.threads} (gthread)\n")
    print("| case | req/s (median) | each round | vs first row, median of per-round ratios |")
    print("|---|---:|---|---:|")
    for case in cases:
        values = rates[case.name]
        ratio = statistics.median(v / b for v, b in zip(values, rates[baseline]))
        print(f"| {case.name} | {statistics.median(values):,.0f} | "
              f"{', '.join(f'{v:,.0f}' for v in values)} | {ratio:.2f} |")
    return 0


def keepalive_check(start, folder: Path, args: argparse.Namespace, requests: int = 6) -> int:
    short = max(1, int(args.gap / 2))
    print(f"gthread, 1 worker, proxy keepalive = 32 (idle_timeout 60 s); {requests} requests, "
          f"one every {args.gap:g} s\n")
    print("| Gunicorn keepalive | upstream connection per request | reused | mean upstream-connect |")
    print("|---|---|---:|---:|")
    for keepalive in (short, 75):
        _, port = _start_pair(start, folder, "gthread", ["--workers", "1"], 32, f"keepalive = {keepalive}\n")
        seen: list[tuple[str, float]] = []
        for i in range(requests):
            if i:
                time.sleep(args.gap)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{args.path}", timeout=10) as response:
                timing = ", ".join(response.headers.get_all("Server-Timing") or [])  # one field per tier
            match = re.search(r'upstream-connect;dur=([\d.]+);desc="(\w+)"', timing)
            seen.append((match[2], float(match[1])) if match else ("?", 0.0))
        # The first request always opens the connection; the rest show what keepalive did.
        rest = seen[1:]
        reused = sum(1 for kind, _ in rest if kind == "reused")
        mean = statistics.mean(d for _, d in rest)
        print(f"| {keepalive} s | {', '.join(k for k, _ in seen)} | {reused} of {len(rest)} | {mean:.3f} ms |")
    return 0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


if __name__ == "__main__":
    sys.exit(main())
