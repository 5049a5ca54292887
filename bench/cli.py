"""``python -m bench`` (``make bench``): measure the proxy against nginx, print and save the table.

Order of a run: check wrk and nginx are installed; lay out a temporary folder;
start Gunicorn, nginx and the proxy once per HTTP/1.1 engine (``--engines``,
default llhttp and h11; one worker each); check every scenario's URL answers
the same on all of them; then per scenario a warm-up of each server and
``--groups`` groups of back-to-back runs, one per server (wrk; h2load over
TLS for the HTTP/2 scenarios). The order
rotates from one group to the next (llhttp-nginx-h11, nginx-h11-llhttp,
h11-llhttp-nginx, ...) so a drift in the machine's speed during a group does
not always favour the same server; each engine is reported as the median of
its per-group ratios to nginx.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import collapse, h2load, load, report, stack as stack_module, wrk
from .configs import ENGINES
from .procs import Processes, StartError, UsageMeter, raise_open_files_limit, sigterm_as_interrupt
from .scenarios import BY_KEY, GZIP_PATH, SCENARIOS, Scenario

RESULTS = Path(__file__).resolve().parent / "results"
INSTALL_HINT = "install it with: apt-get install -y nginx wrk"
H2LOAD_HINT = "apt-get install -y nghttp2-client"
OPEN_FILES = 16384  # 1,000 client connections, as many upstream ones, and headroom, for wrk, nginx and the proxy

# (groups, seconds per run, warm-up seconds per server per scenario)
FULL = (5, 3.0, 1.0)
QUICK = (1, 1.0, 0.0)


@dataclasses.dataclass(frozen=True)
class Options:
    scenarios: tuple[Scenario, ...]
    engines: tuple[str, ...]
    groups: int
    seconds: float
    warmup: float
    wrk_threads: int
    nginx_sendfile: bool
    proxy_sendfile: bool
    workers: int
    source: Path
    results: Path
    quick: bool
    keep: bool
    profile: str | None


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError("expected on or off")
    return value == "on"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="one group of 1 s runs per scenario, no warm-up (a smoke test, < 45 s)")
    p.add_argument("--groups", "--pairs", type=int, metavar="N",
                   help=f"groups of back-to-back runs (one per server) per scenario (default {FULL[0]}, "
                        f"quick {QUICK[0]})")
    p.add_argument("--seconds", type=float, help=f"length of one wrk run (default {FULL[1]:g})")
    p.add_argument("--warmup", type=float, help=f"warm-up per server per scenario (default {FULL[2]:g})")
    p.add_argument("--scenario", action="append", choices=[s.key for s in SCENARIOS],
                   help="run only this scenario (repeatable; default all)")
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES), metavar="ENGINE",
                   help=f"the proxy's [server] http_engine values to measure, each in a proxy of its own "
                        f"(default: {' '.join(ENGINES)}; one of {', '.join(ENGINES)})")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default %(default)s: one per core)")
    p.add_argument("--nginx-sendfile", type=_on_off, default=False, metavar="on|off",
                   help="nginx's sendfile (default off: faster here, see docs/performance.md)")
    p.add_argument("--proxy-sendfile", type=_on_off, default=True, metavar="on|off",
                   help="the proxy's [server] sendfile (default on, the proxy's own default)")
    p.add_argument("--proxy-workers", type=int, default=1, metavar="N",
                   help="worker processes for the proxy and nginx alike (default 1). Refused with a message "
                        "when the proxy has no [server] workers key")
    p.add_argument("--proxy-src", type=Path, default=stack_module.ROOT, metavar="DIR",
                   help="run the proxy package found in DIR (a scratch copy with a change to try); default this repo")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes (default bench/results)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, server logs)")
    p.add_argument("--profile", choices=["cprofile", "py-spy"],
                   help="instead of comparing, profile the proxy alone under each scenario (see bench/profiling.py)")
    return p


def options_from(args: argparse.Namespace) -> Options:
    groups, seconds, warmup = QUICK if args.quick else FULL
    chosen = tuple(BY_KEY[k] for k in args.scenario) if args.scenario else SCENARIOS
    return Options(
        scenarios=chosen,
        engines=tuple(dict.fromkeys(args.engines)),
        groups=max(1, args.groups if args.groups is not None else groups),
        seconds=max(1.0, args.seconds if args.seconds is not None else seconds),
        warmup=max(0.0, args.warmup if args.warmup is not None else warmup),
        wrk_threads=max(1, args.wrk_threads),
        nginx_sendfile=args.nginx_sendfile,
        proxy_sendfile=args.proxy_sendfile,
        workers=args.proxy_workers,
        source=args.proxy_src.resolve(),
        results=args.results_dir,
        quick=args.quick,
        keep=args.keep,
        profile=args.profile,
    )


def missing_tools() -> list[str]:
    problems = []
    if wrk.find() is None:
        problems.append(f"wrk is not installed ({INSTALL_HINT})")
    if stack_module.find_nginx() is None:
        problems.append(f"nginx is not installed ({INSTALL_HINT})")
    return problems


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


def _git(source: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    return done.stdout.strip()


def meta(opts: Options, nginx: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "proxy_commit": _git(opts.source, "rev-parse", "--short", "HEAD") or "-",
        "proxy_tree_dirty": bool(_git(opts.source, "status", "--porcelain", "--", "proxy")),
        "machine": {"cores": os.cpu_count(), "cpu": cpu, "kernel": platform.release()},
        "versions": {"python": platform.python_version(), "nginx": _version([nginx, "-v"]),
                     "wrk": _version(["wrk", "-v"]), "h2load": _version(["h2load", "--version"]),
                     "h11": package("h11"), "h2": package("h2"), "gunicorn": package("gunicorn"),
                     "flask": package("flask"), "httptools": package("httptools"), "uvloop": package("uvloop")},
        "options": {"engines": list(opts.engines), "groups": opts.groups, "seconds": opts.seconds,
                    "warmup": opts.warmup, "wrk_threads": opts.wrk_threads, "nginx_sendfile": opts.nginx_sendfile,
                    "proxy_sendfile": opts.proxy_sendfile, "workers": opts.workers, "quick": opts.quick,
                    "gunicorn": " ".join(stack_module.GUNICORN_ARGS)},
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped meanwhile
    return usage.ru_utime + usage.ru_stime


def measure_one(stack: stack_module.Stack, server: str, scenario: Scenario, opts: Options, group: int) -> report.Run:
    meter = UsageMeter(stack.child(server))
    app = UsageMeter(stack.gunicorn)
    wrk_before = _children_cpu()
    result = load.run(scenario, stack.url(server, scenario.path, load.tls(scenario)), opts.seconds, opts.wrk_threads)
    usage = meter.read()
    app_usage = app.read()
    wrk_cpu = _children_cpu() - wrk_before
    stack.check_alive()
    return report.Run(server, group, result, usage.cpu_seconds, usage.peak_rss_mb, usage.system_seconds,
                      app_usage.cpu_seconds, wrk_cpu)


def measure(stack: stack_module.Stack, scenario: Scenario, opts: Options) -> list[report.Run]:
    if opts.warmup:
        for server in report.servers(opts.engines):
            load.run(scenario, stack.url(server, scenario.path, load.tls(scenario)), opts.warmup, opts.wrk_threads)
    runs = []
    for group in range(opts.groups):
        for server in report.order(group, opts.engines):
            run = measure_one(stack, server, scenario, opts, group)
            runs.append(run)
            print(f"  group {group + 1}/{opts.groups} {report.label(server):12}: {run.wrk.rps:10,.0f} req/s  "
                  f"p99 {run.wrk.p99_ms:8.2f} ms  {run.bytes_per_request:8,.0f} B/req  CPU µs/req: {run.cpu_us_per_request:5.0f} server, "
                  f"{run.per_request_us(run.app_cpu_seconds):5.0f} app, {run.per_request_us(run.wrk_cpu_seconds):4.0f} wrk"
                  f"  errors {run.wrk.error_count}", flush=True)
    return runs


def estimate_seconds(opts: Options) -> float:
    servers = len(opts.engines) + 1
    per_scenario = opts.groups * servers * opts.seconds + servers * opts.warmup
    return len(opts.scenarios) * per_scenario + 5


def compare(opts: Options, layout, procs: Processes, nginx: str) -> int:
    started = time.monotonic()
    stack = stack_module.start(procs, layout, nginx, opts.source, opts.engines)
    for tls in sorted({load.tls(s) for s in opts.scenarios}):
        stack_module.sanity_check(stack, [s for s in opts.scenarios if load.tls(s) == tls], tls)
    print(f"servers up: {stack.describe()} ({time.monotonic() - started:.1f}s)", flush=True)
    summaries, runs = [], {}
    for scenario in opts.scenarios:
        print(f"{scenario.title}:", flush=True)
        runs[scenario.key] = measure(stack, scenario, opts)
        summaries.append(report.summarise(scenario, runs[scenario.key], opts.engines))
    cache = {}
    if any(s.path.startswith("/api/cached/") for s in opts.scenarios):
        cache["collapsed_forwarding"] = collapse.measure(stack)
        stack.check_alive()
    speedup = report.cache_speedup(summaries)
    if speedup is not None:
        cache["hit_vs_forwarded"] = report.cache_json(speedup)
    elapsed = time.monotonic() - started
    info = meta(opts, nginx)
    info["elapsed_seconds"] = round(elapsed, 1)
    document = report.to_json(summaries, runs, info)
    if cache:
        document["cache"] = cache
    stem = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if opts.quick else "")
    path = report.save(document, opts.results, stem)
    print()
    print(document["table"])
    if speedup is not None:
        print(report.cache_line(speedup))
    if "collapsed_forwarding" in cache:
        print(collapse.line(cache["collapsed_forwarding"]))
    print(f"\nratio = median over {opts.groups} group(s) of back-to-back runs of that proxy's req/s / nginx's "
          f"(p99 ratio likewise); req/s, latencies and CPU µs per request (server, Gunicorn, wrk) are medians; "
          f"{elapsed:.0f}s in all. Saved {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    opts = options_from(parser().parse_args(argv))
    if not (opts.source / "proxy" / "config.py").is_file():
        print(f"bench: {opts.source} holds no proxy/config.py: --proxy-src takes a copy of this repository "
              f"(the folder that holds proxy/)", file=sys.stderr)
        return 2
    try:
        keys = stack_module.proxy_server_keys(opts.source)
    except StartError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    proxy_master = "workers" in keys
    if opts.workers != 1 and not proxy_master:
        print("bench: --proxy-workers is disabled: the proxy has no [server] workers key yet "
              "(it runs one process). Leave it at 1 until proxy/config.py declares one.", file=sys.stderr)
        return 2
    if "http_engine" not in keys:
        print(f"bench: the proxy in {opts.source} has no [server] http_engine key, so its engine cannot be "
              f"chosen: measure a proxy that declares it (--proxy-src)", file=sys.stderr)
        return 2
    problems = missing_tools()
    if problems:
        for problem in problems:
            print(f"bench: {problem}", file=sys.stderr)
        return 2
    if h2load.find() is None and any(s.protocol == "h2" for s in opts.scenarios):
        print(f"bench: h2load is not installed ({H2LOAD_HINT}): the HTTP/2 scenarios are left out", file=sys.stderr)
        opts = dataclasses.replace(opts, scenarios=tuple(s for s in opts.scenarios if s.protocol != "h2"))
        if not opts.scenarios:
            return 2
    nginx = stack_module.find_nginx()
    limit = raise_open_files_limit(OPEN_FILES)
    if any(s.connections * 2 + 100 > limit for s in opts.scenarios):
        print(f"bench: warning: open files limited to {limit}; the 1,000-connection scenario may fail",
              file=sys.stderr)
    sigterm_as_interrupt()
    print(f"bench: {len(opts.scenarios)} scenario(s) x {opts.groups} group(s) x {len(opts.engines) + 1} servers "
          f"({', '.join(map(report.label, report.servers(opts.engines)))}) x {opts.seconds:g}s, "
          f"about {estimate_seconds(opts):.0f}s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="twotier-bench-"))
    try:
        layout = stack_module.prepare(work, nginx_sendfile=opts.nginx_sendfile, proxy_sendfile=opts.proxy_sendfile,
                                      workers=opts.workers, engines=opts.engines, proxy_master=proxy_master,
                                      policy=any(s.path.startswith("/policy/") for s in opts.scenarios),
                                      gzip=any(s.path == GZIP_PATH for s in opts.scenarios))
        with Processes(work, stack_module.ROOT) as procs:
            if opts.profile:
                from . import profiling
                return profiling.run(opts, layout, procs)
            return compare(opts, layout, procs, nginx)
    except (StartError, wrk.WrkError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if opts.keep:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
