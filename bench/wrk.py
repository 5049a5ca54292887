"""Running wrk and reading its result.

``command`` and ``parse`` are pure; ``run`` is the one function that waits.
wrk prints its result through wrk_report.lua as one JSON line, so the
numbers are wrk's own (microseconds, every error counter), not re-parsed
from its human-readable summary.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("wrk_report.lua")
MARKER = "WRK_JSON "
TIMEOUT_SECONDS = 10  # per request: a request slower than this is an error, not a latency
EXTRA_SECONDS = 30  # beyond the run's duration before wrk itself is considered stuck


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    bytes: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]  # connect, read, write, status (non-2xx/3xx), timeout

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


class WrkError(RuntimeError):
    pass


def find() -> str | None:
    return shutil.which("wrk")


def command(url: str, connections: int, seconds: float, threads: int, headers=()) -> list[str]:
    threads = max(1, min(threads, connections))
    sent = [f"-H{name}: {value}" for name, value in headers]
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            f"--timeout={TIMEOUT_SECONDS}s", *sent, "-s", str(SCRIPT), url]


def parse(output: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER):])
            break
    else:
        raise WrkError(f"no result line in wrk's output:\n{output[-2000:]}")
    ms = 1000.0
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        bytes=data["bytes"],
        p50_ms=data["p50_us"] / ms,
        p90_ms=data["p90_us"] / ms,
        p99_ms=data["p99_us"] / ms,
        mean_ms=data["mean_us"] / ms,
        max_ms=data["max_us"] / ms,
        errors={"connect": data["connect_errors"], "read": data["read_errors"], "write": data["write_errors"],
                "status": data["status_errors"], "timeout": data["timeouts"]},
    )


def run(url: str, connections: int, seconds: float, threads: int, headers=()) -> WrkResult:
    return parse(output(command(url, connections, seconds, threads, headers), seconds))


def output(argv: list[str], seconds: float) -> str:
    """What a load generator prints, once it has run for ``seconds``; WrkError when it fails or hangs."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + EXTRA_SECONDS,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise WrkError(f"{argv[0]} did not finish within {seconds + EXTRA_SECONDS:g}s: {' '.join(argv)}") from None
    if done.returncode != 0:
        raise WrkError(f"{argv[0]} exited with {done.returncode}: {' '.join(argv)}\n{done.stderr or done.stdout}")
    return done.stdout
