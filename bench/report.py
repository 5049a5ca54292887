"""From measurements to the table: pair ratios, medians, targets, JSON.

Only ratios of runs made back to back mean anything on a shared machine (the
same nginx has measured 6.3k and then 2.3k req/s a minute apart), so every
ratio is computed inside one pair and the reported ratio is the median over
pairs. The absolute req/s and latencies are medians too, shown for scale.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from .scenarios import Scenario
from .wrk import WrkResult

SERVERS = ("proxy", "nginx")


@dataclass(frozen=True)
class Run:
    """One wrk run against one server."""

    server: str
    pair: int
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


@dataclass(frozen=True)
class ServerSummary:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    peak_rss_mb: float  # the highest over the runs
    errors: dict[str, int]  # summed over the runs


@dataclass(frozen=True)
class ScenarioSummary:
    scenario: Scenario
    pairs: int
    proxy: ServerSummary
    nginx: ServerSummary
    rps_ratio: float  # median over pairs of proxy/nginx req/s
    p99_ratio: float  # median over pairs of proxy/nginx p99
    rps_ratios: tuple[float, ...]
    verdict: str  # "met", "missed: ..." or "-"


def _server_summary(runs: list[Run]) -> ServerSummary:
    errors: dict[str, int] = {}
    for run in runs:
        for kind, count in run.wrk.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    return ServerSummary(
        rps=statistics.median(r.wrk.rps for r in runs),
        p50_ms=statistics.median(r.wrk.p50_ms for r in runs),
        p99_ms=statistics.median(r.wrk.p99_ms for r in runs),
        cpu_us_per_request=statistics.median(r.cpu_us_per_request for r in runs),
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
        errors=errors,
    )


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def verdict(scenario: Scenario, proxy: ServerSummary, rps_ratio: float, p99_ratio: float) -> str:
    targets = scenario.targets
    missed = []
    if targets.min_rps_ratio is not None and not rps_ratio >= targets.min_rps_ratio:
        missed.append(f"req/s {rps_ratio:.2f}x < {targets.min_rps_ratio:g}x")
    if targets.max_p99_ratio is not None and not p99_ratio <= targets.max_p99_ratio:
        missed.append(f"p99 {p99_ratio:.2f}x > {targets.max_p99_ratio:g}x")
    if targets.max_rss_mb is not None and not proxy.peak_rss_mb < targets.max_rss_mb:
        missed.append(f"RSS {proxy.peak_rss_mb:.0f} MB >= {targets.max_rss_mb:g} MB")
    if targets.no_errors and sum(proxy.errors.values()):
        missed.append(f"{sum(proxy.errors.values())} errors")
    return "missed: " + "; ".join(missed) if missed else "met"


def summarise(scenario: Scenario, runs: list[Run]) -> ScenarioSummary:
    """Pair up the runs (same ``pair`` index) and reduce them to medians."""
    by_pair: dict[int, dict[str, Run]] = {}
    for run in runs:
        by_pair.setdefault(run.pair, {})[run.server] = run
    complete = [p for _, p in sorted(by_pair.items()) if all(s in p for s in SERVERS)]
    if not complete:
        raise ValueError(f"{scenario.key}: no complete pair of runs")
    rps_ratios = tuple(_ratio(p["proxy"].wrk.rps, p["nginx"].wrk.rps) for p in complete)
    p99_ratios = [_ratio(p["proxy"].wrk.p99_ms, p["nginx"].wrk.p99_ms) for p in complete]
    proxy = _server_summary([p["proxy"] for p in complete])
    nginx = _server_summary([p["nginx"] for p in complete])
    rps_ratio = statistics.median(rps_ratios)
    p99_ratio = statistics.median(p99_ratios)
    return ScenarioSummary(scenario, len(complete), proxy, nginx, rps_ratio, p99_ratio, rps_ratios,
                           verdict(scenario, proxy, rps_ratio, p99_ratio))


# --- output -----------------------------------------------------------------

COLUMNS = ("scenario", "proxy req/s", "nginx req/s", "ratio", "proxy p50 / p99 ms", "nginx p50 / p99 ms",
           "p99 ratio", "proxy CPU µs/req", "nginx CPU µs/req", "proxy peak RSS", "errors p/n", "target")


def _rps(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:,.0f}"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def row(summary: ScenarioSummary) -> tuple[str, ...]:
    p, n = summary.proxy, summary.nginx
    return (
        summary.scenario.title,
        _rps(p.rps), _rps(n.rps),
        f"**{summary.rps_ratio:.2f}x**",
        f"{_ms(p.p50_ms)} / {_ms(p.p99_ms)}", f"{_ms(n.p50_ms)} / {_ms(n.p99_ms)}",
        f"{summary.p99_ratio:.2f}x",
        f"{p.cpu_us_per_request:.0f}", f"{n.cpu_us_per_request:.0f}",
        f"{p.peak_rss_mb:.0f} MB",
        f"{sum(p.errors.values())}/{sum(n.errors.values())}",
        f"{summary.scenario.targets.describe()}: {summary.verdict}",
    )


def table(summaries: list[ScenarioSummary]) -> str:
    """A Markdown table: readable in a terminal, pasted as is into the docs."""
    rows = [COLUMNS, *(row(s) for s in summaries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]

    def line(cells) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in rows[1:])])


def to_json(summaries: list[ScenarioSummary], runs: dict[str, list[Run]], meta: dict) -> dict:
    def scenario_json(s: ScenarioSummary) -> dict:
        return {
            "scenario": asdict(s.scenario),
            "pairs": s.pairs,
            "rps_ratio": s.rps_ratio,
            "p99_ratio": s.p99_ratio,
            "rps_ratios": list(s.rps_ratios),
            "verdict": s.verdict,
            "proxy": asdict(s.proxy),
            "nginx": asdict(s.nginx),
            "runs": [{"server": r.server, "pair": r.pair, "rps": r.wrk.rps, "cpu_seconds": r.cpu_seconds,
                      "cpu_us_per_request": r.cpu_us_per_request,
                      "system_us_per_request": r.per_request_us(r.system_seconds),
                      "app_cpu_us_per_request": r.per_request_us(r.app_cpu_seconds),
                      "wrk_cpu_us_per_request": r.per_request_us(r.wrk_cpu_seconds), "peak_rss_mb": r.peak_rss_mb,
                      "wrk": asdict(r.wrk)} for r in runs[s.scenario.key]],
        }

    return {"meta": meta, "table": table(summaries), "scenarios": [scenario_json(s) for s in summaries]}


def save(document: dict, folder: Path, stem: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


# --- the response cache: a hit against the same answer forwarded --------------------------------

CACHE_SPEEDUP_GOAL = 10.0  # a cache hit at least this many times the req/s of the same request reaching Gunicorn


def cache_speedup(summaries: list[ScenarioSummary]) -> dict | None:
    """Each server's req/s on cache hits over its req/s for the same 4 KiB answer forwarded to Gunicorn
    (scenarios cached-4k and proxied-4k), when both ran."""
    by_key = {s.scenario.key: s for s in summaries}
    hits, forwarded = by_key.get("cached-4k"), by_key.get("proxied-4k")
    if hits is None or forwarded is None:
        return None
    return {server: _ratio(getattr(hits, server).rps, getattr(forwarded, server).rps) for server in SERVERS}


def cache_line(speedup: dict) -> str:
    verdict = "met" if speedup["proxy"] >= CACHE_SPEEDUP_GOAL else "missed"
    return (f"cache hits over the same 4 KiB answer forwarded to Gunicorn: proxy {speedup['proxy']:.1f}x "
            f"(goal >={CACHE_SPEEDUP_GOAL:g}x: {verdict}), nginx {speedup['nginx']:.1f}x")
