"""``python -m bench --profile cprofile|py-spy``: where the proxy's time goes, per request.

The proxy runs alone in front of the same Gunicorn, one scenario and one
HTTP/1.1 engine (``--engines``) at a time:

* ``cprofile``: the proxy runs under cProfile with a CPU-time clock
  (bench/cpuprofile.py) and is stopped with SIGTERM after the wrk run, which
  makes it write its stats. Exact call counts (calls per request); the
  profiler multiplies the cost of every Python call, so its times are
  shares, which the report lays over the CPU time the proxy used without it.
* ``py-spy``: ``py-spy record --nonblocking`` samples the running proxy
  while wrk runs. Its overhead is negligible, so its shares are laid over
  the CPU time the proxy really used (from /proc) to give µs per request per
  function. Install it with ``.venv/bin/pip install py-spy``.

Each scenario leaves a text report beside the JSON results (``--results-dir``);
the raw profiles stay in the run's temporary folder with ``--keep``.
"""

from __future__ import annotations

import collections
import datetime
import pstats
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import load, stack as stack_module
from .procs import Processes, UsageMeter
from .scenarios import Scenario

TOP = 40
PYSPY_RATE = 250  # samples per second
_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Row:
    function: str  # "name (file:line)"
    calls: float  # per request; 0 when unknown (sampling)
    self_share: float  # of the proxy's total
    self_us: float  # per request
    total_share: float
    total_us: float


# --- reading profiles (pure) ---------------------------------------------------

def pstats_rows(stats: pstats.Stats, requests: int) -> list[Row]:
    """One row per function; self = tottime, total = cumtime; shares of the summed tottime."""
    total = sum(tt for (_, _, tt, _, _) in stats.stats.values()) or 1.0
    rows = []
    for (file, line, name), (_, ncalls, tt, ct, _) in stats.stats.items():
        where = f"{name} ({_short(file)}:{line})" if line else f"{name} ({file})"
        rows.append(Row(where, ncalls / requests, tt / total, tt * 1e6 / requests, ct / total, ct * 1e6 / requests))
    return rows


def collapsed_rows(text: str, requests: int, cpu_us: float) -> tuple[list[Row], int]:
    """py-spy's raw output (``frame;frame;... count`` per line, root first) -> rows and sample count.

    ``cpu_us`` is the proxy's CPU time over the run: each function's share of
    the samples is turned into µs per request with it.
    """
    own: collections.Counter[str] = collections.Counter()
    within: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames:
            continue
        own[frames[-1]] += n
        for name in set(frames):
            within[name] += n
    per_request = cpu_us / requests if requests else 0.0
    rows = [Row(name, 0.0, own[name] / samples, own[name] / samples * per_request,
                within[name] / samples, within[name] / samples * per_request)
            for name in within] if samples else []
    return rows, samples


def _frame(raw: str) -> str:
    """``handle (proxy/server/client.py:212)`` -> ``handle (proxy/server/client.py)``; thread/process labels -> ''."""
    match = _FRAME_RE.match(raw.strip())
    if not match or raw.startswith(("process ", "thread ")):
        return ""
    return f"{match['func']} ({_short(match['file'])})"


def _short(file: str) -> str:
    """A file as a reader of the report can find it: ``proxy/...`` or a library's own path, never
    the folder the profiled copy happened to live in."""
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" else tail
    for package in ("/proxy/", "/bench/", "/appserver/"):
        if package in file:
            return package[1:] + file.rsplit(package, 1)[1]
    return file


AREAS = (  # first match wins: (label, substring of the function's file)
    ("h11", "h11/"),
    ("proxy.http (sans-IO checks, headers, static decisions)", "proxy/http/"),
    ("proxy.server (client loop, forwarding, channel)", "proxy/server/"),
    ("proxy.upstream (pool)", "proxy/upstream/"),
    ("proxy (other)", "proxy/"),
    ("asyncio event loop and transports", "asyncio/"),
    ("selectors / socket", "selectors.py"),
    ("stdlib path helpers (realpath, join, isfile)", "posixpath"),
    ("stdlib path helpers (realpath, join, isfile)", "genericpath"),
    ("stdlib: email.utils, mimetypes, enum", "email/"),
    ("stdlib: email.utils, mimetypes, enum", "mimetypes"),
    ("stdlib: email.utils, mimetypes, enum", "enum.py"),
    ("collections.abc (iterating h11's Headers)", "_collections_abc"),
    ("socket.py (close)", "socket.py"),
)


def area(function: str) -> str:
    for label, needle in AREAS:
        if needle in function:
            return label
    if "<built-in" in function or "{" in function or "method '" in function:
        return "C builtins (socket send/recv, os.stat, os.open...)"
    return "other"


def by_area(rows: list[Row]) -> list[tuple[str, float, float]]:
    """(area, self share, self µs per request), largest first."""
    share: collections.Counter[str] = collections.Counter()
    us: collections.Counter[str] = collections.Counter()
    for row in rows:
        share[area(row.function)] += row.self_share
        us[area(row.function)] += row.self_us
    return sorted(((a, share[a], us[a]) for a in share), key=lambda t: -t[1])


def render(title: str, rows: list[Row], note: str, top: int = TOP) -> str:
    out = [title, note, "", "By area (self time):"]
    for label, share, us in by_area(rows):
        out.append(f"  {share * 100:5.1f}%  {us:7.1f} µs/req  {label}")
    has_calls = any(r.calls for r in rows)
    for heading, key in (("Top functions by self time:", lambda r: -r.self_share),
                         ("Top functions by total (inclusive) time:", lambda r: -r.total_share)):
        out += ["", heading, f"  {'self%':>6} {'self µs':>8} {'total%':>7} {'total µs':>9}"
                + (f" {'calls/req':>9}" if has_calls else "") + "  function"]
        for r in sorted(rows, key=key)[:top]:
            out.append(f"  {r.self_share * 100:6.1f} {r.self_us:8.1f} {r.total_share * 100:7.1f} {r.total_us:9.1f}"
                       + (f" {r.calls:9.2f}" if has_calls else "") + f"  {r.function}")
    return "\n".join(out) + "\n"


# --- running (I/O) ---------------------------------------------------------------

def find_pyspy() -> str | None:
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def _measure(procs: Processes, layout, scenario: Scenario, opts, engine: str, runner: tuple[str, ...], name: str,
             during=None, warmup: bool = True):
    """Start a proxy with ``engine`` under ``runner``, warm it up, run the load once; returns (child, result,
    usage).

    ``during(child)`` is started just before the load (py-spy) and its return value waited on after it.
    """
    server = stack_module.start_proxy(procs, layout, opts.source, engine, runner, name=name)
    proxy = server.child
    url = server.url(scenario.path, load.tls(scenario))
    if warmup and opts.warmup:
        load.run(scenario, url, opts.warmup, opts.wrk_threads)
    waiter = during(proxy) if during else None
    meter = UsageMeter(proxy)
    result = load.run(scenario, url, opts.seconds, opts.wrk_threads)
    usage = meter.read()
    if waiter:
        waiter()
    return proxy, result, usage


def _cpu_note(result, usage) -> str:
    per = 1e6 / result.requests
    return (f"{result.requests} requests at {result.rps:,.0f} req/s; the proxy used {usage.cpu_seconds * per:.0f} "
            f"CPU µs/req ({usage.user_seconds * per:.0f} user + {usage.system_seconds * per:.0f} system, /proc), "
            f"{usage.cpu_seconds / result.seconds * 100:.0f}% of a core")


def _profile_cprofile(procs: Processes, layout, scenario: Scenario, opts, engine: str) -> str:
    tag = f"{scenario.key}-{engine}"
    proxy, base, base_usage = _measure(procs, layout, scenario, opts, engine, ("-m", "proxy"), f"proxy-{tag}")
    procs.stop(proxy)
    out = layout.work / f"{tag}.prof"
    proxy, result, usage = _measure(procs, layout, scenario, opts, engine, ("-m", "bench.cpuprofile", str(out)),
                                    f"proxy-cprofile-{tag}", warmup=False)
    procs.stop(proxy)  # SIGTERM: the proxy drains and returns, and cpuprofile writes its stats
    if not out.exists():
        raise RuntimeError(f"cProfile wrote no {out}:\n{proxy.tail()}")
    stats = pstats.Stats(str(out))
    rows = pstats_rows(stats, result.requests)
    real_us = base_usage.cpu_seconds * 1e6 / base.requests
    profiled_us = sum(r.self_us for r in rows) or 1.0
    rows = [Row(r.function, r.calls, r.self_share, r.self_us * real_us / profiled_us, r.total_share,
                r.total_us * real_us / profiled_us) for r in rows]
    note = (f"cProfile (CPU-time clock). Without the profiler: {_cpu_note(base, base_usage)}. Under it: "
            f"{result.rps:,.0f} req/s. No warm-up under the profiler, so calls per request are exact (start-up included); "
            f"µs = share of profiled self time x the unprofiled CPU µs/req.")
    return render(f"== {scenario.title}, proxy {engine}: cProfile", rows, note)


def _profile_pyspy(procs: Processes, layout, scenario: Scenario, opts, engine: str, pyspy: str) -> str:
    tag = f"{scenario.key}-{engine}"
    out = layout.work / f"{tag}.pyspy.txt"
    seconds = max(1, round(opts.seconds))

    def record(proxy):
        spy = subprocess.Popen([pyspy, "record", "--pid", str(proxy.pid), "--duration", str(seconds),
                                "--rate", str(PYSPY_RATE), "--format", "raw", "--nonblocking", "--subprocesses",
                                "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def wait():
            try:
                spy.communicate(timeout=seconds + 30)
            finally:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
        return wait

    proxy, result, usage = _measure(procs, layout, scenario, opts, engine, ("-m", "proxy"), f"proxy-pyspy-{tag}",
                                    during=record)
    procs.stop(proxy)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote no {out} (is ptrace allowed here?)")
    rows, samples = collapsed_rows(out.read_text(), result.requests, usage.cpu_seconds * 1e6)
    note = (f"py-spy record --nonblocking at {PYSPY_RATE} Hz, {samples} busy samples; {_cpu_note(result, usage)}. "
            f"µs = share of samples x CPU µs/req. A thread pre-empted while runnable is sampled too, which "
            f"overweights loopback send() (it wakes the reader).")
    return render(f"== {scenario.title}, proxy {engine}: py-spy", rows, note)


def run(opts, layout, procs: Processes) -> int:
    pyspy = None
    if opts.profile == "py-spy":
        pyspy = find_pyspy()
        if pyspy is None:
            print("bench: py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
            return 2
    folder = opts.results / ("profile-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True, exist_ok=True)
    stack_module.start_gunicorn(procs, layout)
    for scenario in opts.scenarios:
        for engine in opts.engines:
            if pyspy:
                text = _profile_pyspy(procs, layout, scenario, opts, engine, pyspy)
            else:
                text = _profile_cprofile(procs, layout, scenario, opts, engine)
            (folder / f"{scenario.key}-{engine}-{opts.profile}.txt").write_text(text)
            print(text, flush=True)
    print(f"profiles saved in {folder}")
    return 0
