"""From measurements to the table: per-group ratios, medians, targets, JSON.

Only ratios of runs made back to back mean anything on a shared machine (the
same nginx has measured 6.3k and then 2.3k req/s a minute apart), so each
scenario is measured as groups of back-to-back runs (nginx and the proxy
once per engine), every ratio is computed inside one group, and the ratio
reported for an engine is the median of its per-group ratios, never a ratio
of medians. The absolute req/s, latencies and CPU per request are medians
too, shown for scale.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from .scenarios import Scenario
from .wrk import WrkResult

NGINX = "nginx"  # the reference every proxy run is divided by; the proxies are named by their engine


def servers(engines: tuple[str, ...]) -> tuple[str, ...]:
    """The servers of one group in their first order: nginx after the first engine (llhttp, nginx, h11)."""
    return (*engines[:1], NGINX, *engines[1:])


def order(group: int, engines: tuple[str, ...]) -> tuple[str, ...]:
    """The servers in the order group ``group`` runs them: rotated by one each group, so that a drift in the
    machine's speed during a group favours no server (with one engine: proxy-nginx, nginx-proxy, ...)."""
    first = servers(engines)
    turn = group % len(first)
    return first[turn:] + first[:turn]


def label(server: str) -> str:
    return server if server == NGINX else f"proxy {server}"


@dataclass(frozen=True)
class Run:
    """One wrk run against one server."""

    server: str  # NGINX or the proxy's engine
    group: int
    wrk: WrkResult
    cpu_seconds: float  # CPU used by the server's process group during the run
    peak_rss_mb: float
    system_seconds: float = 0.0  # the part of cpu_seconds spent in the kernel
    app_cpu_seconds: float = 0.0  # Gunicorn's CPU during the run (the app tier's share of the machine)
    wrk_cpu_seconds: float = 0.0  # the load generator's

    def per_request_us(self, seconds: float) -> float:
        return seconds * 1e6 / self.wrk.requests if self.wrk.requests else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.per_request_us(self.cpu_seconds)

    @property
    def bytes_per_request(self) -> float:
        """Bytes on the wire per answer, head and body (wrk's count of what it read)."""
        return self.wrk.bytes / self.wrk.requests if self.wrk.requests else 0.0


@dataclass(frozen=True)
class ServerSummary:
    """One server over a scenario's groups: medians, the highest RSS, the errors summed."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    system_us_per_request: float
    app_cpu_us_per_request: float  # Gunicorn's CPU per request while this server was measured
    wrk_cpu_us_per_request: float
    peak_rss_mb: float
    errors: dict[str, int]
    bytes_per_request: float = 0.0  # on the wire, head and body


@dataclass(frozen=True)
class EngineSummary:
    """The proxy running one engine, judged against nginx in the same groups."""

    engine: str
    proxy: ServerSummary
    rps_ratio: float  # median over groups of proxy/nginx req/s
    p99_ratio: float  # median over groups of proxy/nginx p99
    rps_ratios: tuple[float, ...]
    p99_ratios: tuple[float, ...]
    verdict: str  # "met" or "missed: ..."
    bytes_ratio: float = math.nan  # median over groups of proxy/nginx bytes per answer


@dataclass(frozen=True)
class ScenarioSummary:
    scenario: Scenario
    groups: int  # complete groups: every server measured
    nginx: ServerSummary
    engines: tuple[EngineSummary, ...]


def _server_summary(runs: list[Run]) -> ServerSummary:
    errors: dict[str, int] = {}
    for run in runs:
        for kind, count in run.wrk.errors.items():
            errors[kind] = errors.get(kind, 0) + count

    def median(per_run) -> float:
        return statistics.median(per_run(r) for r in runs)

    return ServerSummary(
        rps=median(lambda r: r.wrk.rps),
        p50_ms=median(lambda r: r.wrk.p50_ms),
        p99_ms=median(lambda r: r.wrk.p99_ms),
        cpu_us_per_request=median(lambda r: r.cpu_us_per_request),
        system_us_per_request=median(lambda r: r.per_request_us(r.system_seconds)),
        app_cpu_us_per_request=median(lambda r: r.per_request_us(r.app_cpu_seconds)),
        wrk_cpu_us_per_request=median(lambda r: r.per_request_us(r.wrk_cpu_seconds)),
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
        errors=errors,
        bytes_per_request=median(lambda r: r.bytes_per_request),
    )


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")  # nginx answered nothing in that run (possible in a 1 s --quick run)


def _median_ratio(ratios: tuple[float, ...]) -> float:
    """The median of the groups' ratios that are defined; NaN when none is."""
    defined = [r for r in ratios if math.isfinite(r)]
    return statistics.median(defined) if defined else float("nan")


def _times(ratio: float) -> str:
    return f"{ratio:.2f}x" if math.isfinite(ratio) else "n/a"


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined ratio is saved as null."""
    return value if math.isfinite(value) else None


def verdict(scenario: Scenario, proxy: ServerSummary, rps_ratio: float, p99_ratio: float) -> str:
    targets = scenario.targets
    missed = []
    if targets.min_rps_ratio is not None and not rps_ratio >= targets.min_rps_ratio:
        missed.append(f"req/s {_times(rps_ratio)} < {targets.min_rps_ratio:g}x")
    if targets.max_p99_ratio is not None and not p99_ratio <= targets.max_p99_ratio:
        missed.append(f"p99 {_times(p99_ratio)} > {targets.max_p99_ratio:g}x")
    if targets.max_rss_mb is not None and not proxy.peak_rss_mb < targets.max_rss_mb:
        missed.append(f"RSS {proxy.peak_rss_mb:.0f} MB >= {targets.max_rss_mb:g} MB")
    if targets.no_errors and sum(proxy.errors.values()):
        missed.append(f"{sum(proxy.errors.values())} errors")
    return "missed: " + "; ".join(missed) if missed else "met"


def _engine_summary(scenario: Scenario, engine: str, groups: list[dict[str, Run]]) -> EngineSummary:
    rps_ratios = tuple(_ratio(g[engine].wrk.rps, g[NGINX].wrk.rps) for g in groups)
    p99_ratios = tuple(_ratio(g[engine].wrk.p99_ms, g[NGINX].wrk.p99_ms) for g in groups)
    bytes_ratios = tuple(_ratio(g[engine].bytes_per_request, g[NGINX].bytes_per_request) for g in groups)
    proxy = _server_summary([g[engine] for g in groups])
    rps_ratio, p99_ratio = _median_ratio(rps_ratios), _median_ratio(p99_ratios)
    return EngineSummary(engine, proxy, rps_ratio, p99_ratio, rps_ratios, p99_ratios,
                         verdict(scenario, proxy, rps_ratio, p99_ratio), _median_ratio(bytes_ratios))


def summarise(scenario: Scenario, runs: list[Run], engines: tuple[str, ...]) -> ScenarioSummary:
    """Group the runs (same ``group`` index), keep the complete groups and reduce them to medians."""
    by_group: dict[int, dict[str, Run]] = {}
    for run in runs:
        by_group.setdefault(run.group, {})[run.server] = run
    wanted = servers(engines)
    complete = [g for _, g in sorted(by_group.items()) if all(s in g for s in wanted)]
    if not complete:
        raise ValueError(f"{scenario.key}: no complete group of runs")
    return ScenarioSummary(scenario, len(complete), _server_summary([g[NGINX] for g in complete]),
                           tuple(_engine_summary(scenario, e, complete) for e in engines))


# --- output -----------------------------------------------------------------

COLUMNS = ("scenario", "server", "req/s", "ratio", "p50 / p99 ms", "p99 ratio", "CPU µs/req", "app µs/req",
           "wrk µs/req", "peak RSS", "bytes/answer", "errors", "verdict")


def _rps(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:,.0f}"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _size(value: float) -> str:
    return f"{value / 1024:.1f}k" if value >= 10_240 else f"{value:,.0f}"


def _figures(s: ServerSummary, bytes_ratio: float | None = None) -> tuple[str, ...]:
    """The columns after the p99 ratio; ``bytes_ratio``: a proxy's bytes per answer against nginx's."""
    size = _size(s.bytes_per_request) + ("" if bytes_ratio is None else f" ({_times(bytes_ratio)})")
    return (f"{s.cpu_us_per_request:.0f}", f"{s.app_cpu_us_per_request:.0f}", f"{s.wrk_cpu_us_per_request:.0f}",
            f"{s.peak_rss_mb:.0f} MB", size, f"{sum(s.errors.values())}")


def rows(summary: ScenarioSummary) -> list[tuple[str, ...]]:
    """One row per proxy engine, then nginx's; the scenario's first cell names it, the second its target."""
    out = [(label(e.engine), _rps(e.proxy.rps), f"**{_times(e.rps_ratio)}**",
            f"{_ms(e.proxy.p50_ms)} / {_ms(e.proxy.p99_ms)}", _times(e.p99_ratio), *_figures(e.proxy, e.bytes_ratio),
            e.verdict)
           for e in summary.engines]
    n = summary.nginx
    out.append((label(NGINX), _rps(n.rps), "", f"{_ms(n.p50_ms)} / {_ms(n.p99_ms)}", "", *_figures(n), ""))
    first = (summary.scenario.title, f"target: {summary.scenario.targets.describe()}")
    return [(first[i] if i < len(first) else "", *r) for i, r in enumerate(out)]


def table(summaries: list[ScenarioSummary]) -> str:
    """A Markdown table: readable in a terminal, pasted as is into the docs."""
    body = [r for s in summaries for r in rows(s)]
    widths = [max(len(r[i]) for r in (COLUMNS, *body)) for i in range(len(COLUMNS))]

    def line(cells) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in body)])


def run_json(run: Run) -> dict:
    return {"server": run.server, "group": run.group, "rps": run.wrk.rps, "cpu_seconds": run.cpu_seconds,
            "bytes_per_request": run.bytes_per_request,
            "cpu_us_per_request": run.cpu_us_per_request,
            "system_us_per_request": run.per_request_us(run.system_seconds),
            "app_cpu_us_per_request": run.per_request_us(run.app_cpu_seconds),
            "wrk_cpu_us_per_request": run.per_request_us(run.wrk_cpu_seconds), "peak_rss_mb": run.peak_rss_mb,
            "wrk": asdict(run.wrk)}


def to_json(summaries: list[ScenarioSummary], runs: dict[str, list[Run]], meta: dict) -> dict:
    def engine_json(e: EngineSummary) -> dict:
        return {"rps_ratio": _finite(e.rps_ratio), "p99_ratio": _finite(e.p99_ratio),
                "bytes_ratio": _finite(e.bytes_ratio),
                "rps_ratios": [_finite(r) for r in e.rps_ratios], "p99_ratios": [_finite(r) for r in e.p99_ratios],
                "verdict": e.verdict, "proxy": asdict(e.proxy)}

    def scenario_json(s: ScenarioSummary) -> dict:
        return {
            "scenario": asdict(s.scenario),
            "groups": s.groups,
            "nginx": asdict(s.nginx),
            "engines": {e.engine: engine_json(e) for e in s.engines},
            "runs": [run_json(r) for r in runs[s.scenario.key]],
        }

    return {"meta": meta, "table": table(summaries), "scenarios": [scenario_json(s) for s in summaries]}


def save(document: dict, folder: Path, stem: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path


# --- the response cache: a hit against the same answer forwarded --------------------------------

CACHE_SPEEDUP_GOAL = 10.0  # a cache hit at least this many times the req/s of the same request reaching Gunicorn


def _rps_by_server(summary: ScenarioSummary) -> dict[str, float]:
    return {**{e.engine: e.proxy.rps for e in summary.engines}, NGINX: summary.nginx.rps}


def cache_speedup(summaries: list[ScenarioSummary]) -> dict | None:
    """Each server's req/s on cache hits over its req/s for the same 4 KiB answer forwarded to Gunicorn
    (scenarios cached-4k and proxied-4k), when both ran: {engine or NGINX: ratio}."""
    by_key = {s.scenario.key: s for s in summaries}
    hits, forwarded = by_key.get("cached-4k"), by_key.get("proxied-4k")
    if hits is None or forwarded is None:
        return None
    hit_rps, forwarded_rps = _rps_by_server(hits), _rps_by_server(forwarded)
    return {server: _ratio(rps, forwarded_rps[server]) for server, rps in hit_rps.items() if server in forwarded_rps}


def cache_line(speedup: dict) -> str:
    def part(server: str, ratio: float) -> str:
        shown = f"{ratio:.1f}x" if math.isfinite(ratio) else "n/a"
        if server == NGINX:
            return f"{label(server)} {shown}"
        verdict = "met" if ratio >= CACHE_SPEEDUP_GOAL else "missed"
        return f"{label(server)} {shown} (goal >={CACHE_SPEEDUP_GOAL:g}x: {verdict})"

    return ("cache hits over the same 4 KiB answer forwarded to Gunicorn: "
            + ", ".join(part(server, ratio) for server, ratio in speedup.items()))


def cache_json(speedup: dict) -> dict:
    return {server: _finite(ratio) for server, ratio in speedup.items()}
