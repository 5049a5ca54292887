"""Running h2load (nghttp2's HTTP/2 load generator) and reading its result, as wrk.py does for wrk.

``command`` and ``parse`` are pure; ``run`` is the one function that waits.
h2load prints no latency percentiles, so each run writes its per-request log
(``--log-file``: start time, status, microseconds to the end of the response)
and the percentiles are computed from it; requests, errors and the duration
come from h2load's summary. The result is a ``wrk.WrkResult``, so the report
treats both tools alike.
"""

from __future__ import annotations

import re
import shutil
import statistics
import tempfile
from pathlib import Path

from .wrk import WrkError, WrkResult, output

THREADS = 2  # one per core, as for wrk

# h2load prints the duration in the unit that suits it: "3.00s", but "997.91ms" for a run just under a second.
_FINISHED = re.compile(r"finished in ([\d.]+)(s|ms|us), [\d.]+ req/s, ")
_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout")
_STATUSES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_TRAFFIC = re.compile(r"traffic: [\d.]+\w*B \((\d+)\) total")


def find() -> str | None:
    return shutil.which("h2load")


def command(url: str, connections: int, streams: int, seconds: float, log: Path) -> list[str]:
    """``connections`` clients with ``streams`` requests in flight each, for ``seconds``."""
    return ["h2load", f"-c{connections}", f"-m{streams}", f"-t{max(1, min(THREADS, connections))}",
            f"-D{max(1, round(seconds))}", f"--log-file={log}", url]


def _percentile(ordered: list[int], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] / 1000.0 if ordered else 0.0


def parse(output: str, log: str) -> WrkResult:
    """h2load's summary and its per-request log -> the same numbers wrk reports (ms)."""
    finished, counts, statuses = _FINISHED.search(output), _REQUESTS.search(output), _STATUSES.search(output)
    if not (finished and counts and statuses):
        raise WrkError(f"no result in h2load's output:\n{output[-2000:]}")
    durations = sorted(int(line.split("\t")[2]) for line in log.splitlines() if line.count("\t") >= 2)
    traffic = _TRAFFIC.search(output)
    succeeded, failed, errored, timeout = (int(n) for n in counts.groups()[3:])
    return WrkResult(
        requests=succeeded,
        seconds=float(finished[1]) * _UNIT_SECONDS[finished[2]],
        bytes=int(traffic[1]) if traffic else 0,
        p50_ms=_percentile(durations, 0.50),
        p90_ms=_percentile(durations, 0.90),
        p99_ms=_percentile(durations, 0.99),
        mean_ms=statistics.fmean(durations) / 1000.0 if durations else 0.0,
        max_ms=durations[-1] / 1000.0 if durations else 0.0,
        # failed counts errored and timed-out requests as well; a non-2xx answer is a "status" error as in wrk.
        errors={"failed": failed - errored - timeout, "errored": errored, "timeout": timeout,
                "status": int(statuses[3]) + int(statuses[4])},
    )


def run(url: str, connections: int, streams: int, seconds: float) -> WrkResult:
    with tempfile.TemporaryDirectory(prefix="twotier-h2load-") as folder:
        log = Path(folder) / "requests.log"
        printed = output(command(url, connections, streams, seconds, log), seconds)
        return parse(printed, log.read_text() if log.exists() else "")
