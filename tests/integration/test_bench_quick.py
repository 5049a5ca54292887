"""`python -m bench --quick` end to end: Gunicorn, nginx, the proxy and wrk, no thresholds.

A smoke test: it proves the harness starts, measures and stops every server
from a fresh clone. Performance itself is judged by `make bench` and
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


@needs_tools
def test_quick_bench_runs_every_scenario_and_saves_the_table(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--results-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    [saved] = tmp_path.glob("*-quick.json")
    document = json.loads(saved.read_text())
    keys = [s["scenario"]["key"] for s in document["scenarios"]]
    # The HTTP/2 scenarios need h2load; without it they are left out, saying so.
    assert keys == [s.key for s in cli.SCENARIOS if s.protocol != "h2" or h2load.find()]
    for scenario in document["scenarios"]:
        assert scenario["pairs"] == 1
        for server in ("proxy", "nginx"):
            assert scenario[server]["rps"] > 0, (scenario["scenario"]["key"], server)
        assert scenario["proxy"]["peak_rss_mb"] > 0
    assert document["table"] in done.stdout


@needs_tools
def test_bench_leaves_no_server_behind(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--scenario", "static-4k",
                           "--results-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    ports = [int(p) for p in re.findall(r":(\d+)", done.stdout.split("servers up:", 1)[1].splitlines()[0])]
    assert len(ports) == 3
    assert not [port for port in ports if accepting(port)]


def test_workers_option_runs_or_is_refused_with_a_reason(tmp_path):
    argv = [sys.executable, "-m", "bench", "--quick", "--scenario", "static-4k", "--proxy-workers", "2",
            "--results-dir", str(tmp_path)]
    if not stack.proxy_supports_workers(stack.ROOT):
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "workers" in done.stderr
        return
    if MISSING:
        pytest.skip("; ".join(MISSING))
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    [saved] = tmp_path.glob("*-quick.json")
    document = json.loads(saved.read_text())
    assert document["meta"]["options"]["workers"] == 2
    assert document["scenarios"][0]["proxy"]["rps"] > 0
