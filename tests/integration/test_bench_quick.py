"""`python -m bench --quick` end to end: Gunicorn, nginx, the proxy once per engine and wrk, no thresholds.

A smoke test: it proves the harness starts, measures and stops every server
from a fresh clone, and saves a well-formed table with both HTTP/1.1
engines. Performance itself is judged by `make bench` and
docs/performance.md, never here (a shared CI machine is far too noisy).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from bench import cli, h2load, stack
from tests.helpers import ROOT, accepting

MISSING = cli.missing_tools()
needs_tools = pytest.mark.skipif(bool(MISSING), reason="; ".join(MISSING) or "nginx and wrk present")
ENGINES = ["llhttp", "h11"]


def bench(tmp_path, *args: str, timeout: float = 90) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run ``python -m bench --quick ARGS`` into tmp_path; the saved document, if one was saved."""
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", *args, "--results-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    saved = list(tmp_path.glob("*-quick.json"))
    return done, json.loads(saved[0].read_text(), parse_constant=refuse) if len(saved) == 1 else None


def refuse(constant: str):
    raise AssertionError(f"the saved document is not strict JSON: {constant}")


@needs_tools
def test_quick_bench_runs_every_scenario_on_both_engines_and_saves_the_table(tmp_path):
    done, document = bench(tmp_path, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert document["meta"]["options"]["engines"] == ENGINES
    # The HTTP/2 scenarios need h2load; without it they are left out, saying so.
    scenarios = [s for s in cli.SCENARIOS if s.protocol != "h2" or h2load.find()]
    assert [s["scenario"]["key"] for s in document["scenarios"]] == [s.key for s in scenarios]
    # Well-formed, not fast: on a busy machine a 1 s run may end before a 10 MiB answer does.
    for scenario in document["scenarios"]:
        key = scenario["scenario"]["key"]
        assert scenario["groups"] == 1
        assert sorted(r["server"] for r in scenario["runs"]) == sorted([*ENGINES, "nginx"])
        assert all(r["wrk"]["requests"] >= 0 and r["peak_rss_mb"] > 0 for r in scenario["runs"]), key
        assert scenario["nginx"]["rps"] >= 0, key
        assert list(scenario["engines"]) == ENGINES
        for engine, summary in scenario["engines"].items():
            assert summary["proxy"]["rps"] >= 0 and summary["proxy"]["cpu_us_per_request"] >= 0, (key, engine)
            assert summary["rps_ratio"] is None or summary["rps_ratio"] >= 0, (key, engine)
            assert summary["verdict"] == "met" or summary["verdict"].startswith("missed: "), (key, engine)
    # The cache's two extra figures: hits over the same answer forwarded, and collapsed forwarding counted by
    # Gunicorn (a count, not a speed: a hundred concurrent misses reach Gunicorn once through each proxy).
    cache = document["cache"]
    assert set(cache["hit_vs_forwarded"]) == {*ENGINES, "nginx"}
    for engine in ENGINES:
        assert cache["collapsed_forwarding"][engine] == {"clients": 100, "answered": 100, "upstream_requests": 1}
    assert "collapsed forwarding: 100 concurrent misses" in done.stdout
    table = document["table"]
    assert table in done.stdout
    rows = table.splitlines()[2:]
    assert len(rows) == 3 * len(scenarios)
    assert [row.split("|")[2].strip() for row in rows[:3]] == ["proxy llhttp", "proxy h11", "nginx"]


@needs_tools
def test_bench_leaves_no_server_behind(tmp_path):
    done, _ = bench(tmp_path, "--scenario", "static-4k")
    assert done.returncode == 0, done.stdout + done.stderr
    ports = [int(p) for p in re.findall(r":(\d+)", done.stdout.split("servers up:", 1)[1].splitlines()[0])]
    assert len(ports) == 7  # the proxy twice (llhttp, h11) and nginx, plain and TLS each; Gunicorn
    assert not [port for port in ports if accepting(port)]


def test_one_engine_and_workers_run_or_are_refused_with_a_reason(tmp_path):
    args = ["--scenario", "static-4k", "--engines", "h11", "--proxy-workers", "2"]
    if "workers" not in stack.proxy_server_keys(stack.ROOT):
        done, _ = bench(tmp_path, *args)
        assert done.returncode == 2
        assert "workers" in done.stderr
        return
    if MISSING:
        pytest.skip("; ".join(MISSING))
    done, document = bench(tmp_path, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert document["meta"]["options"]["workers"] == 2
    [scenario] = document["scenarios"]
    assert list(scenario["engines"]) == ["h11"]
    assert scenario["engines"]["h11"]["proxy"]["peak_rss_mb"] > 0
    assert "proxy llhttp" not in document["table"]
