"""``python -m bench.compression``: what each coding and level costs, the measurement behind the defaults.

The proxy compresses on its event loop, so a level's CPU cost is paid by
every other connection of the worker while a body is compressed. This
measures, for gzip, Brotli and zstd at each level, on the bodies a web
stack sends (the benchmark's 100 KiB JSON answer, the demo page's HTML, JS
and CSS):

* ``whole``: the body in one call (a response whose body is all there, a
  static file compressed once): MB/s of input and the ratio;
* ``streamed``: the body in 16 KiB pieces with a flush after each, as the
  proxy relays a streamed upstream body: MB/s and the ratio;
* per-stream memory: the growth of the process's RSS per encoder fed 1 MiB
  (what a connection receiving a long compressed stream holds).

The encoders are the proxy's own (proxy/http/encoding.py). The numbers go to
docs/performance.md; the defaults in proxy/config.py are the levels past which
the ratio gains less than the speed loses.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIECE = 16 * 1024
LEVELS = {b"gzip": (1, 2, 3, 4, 5, 6, 7, 8, 9), b"br": (0, 1, 2, 3, 4, 5, 6, 7, 9, 11),
          b"zstd": (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 19)}


def corpus() -> dict[str, bytes]:
    from .app import json_100k

    static = ROOT / "demo_app" / "static"
    return {"json-100k": json_100k(), **{name: (static / name).read_bytes()
                                        for name in ("index.html", "app.js", "app.css")}}


def _best(fn, budget: float) -> float:
    """Seconds for one call of ``fn``: the best of as many calls as fit ``budget`` (at least 3)."""
    best = float("inf")
    spent = 0.0
    calls = 0
    while calls < 3 or spent < budget:
        started = time.perf_counter()
        fn()
        took = time.perf_counter() - started
        best = min(best, took)
        spent += took
        calls += 1
    return best


def whole(coding: bytes, level: int, data: bytes, budget: float) -> tuple[float, float]:
    """(MB/s of input, compressed/original) for the body in one call."""
    from proxy.http import encoding

    out = encoding.compress(coding, level, data)
    seconds = _best(lambda: encoding.compress(coding, level, data), budget)
    return len(data) / seconds / 1e6, len(out) / len(data)


def streamed(coding: bytes, level: int, data: bytes, budget: float) -> tuple[float, float]:
    """(MB/s, ratio) for the body in PIECE-sized pieces, each flushed, as the proxy relays a stream."""
    from proxy.http import encoding

    pieces = [data[i:i + PIECE] for i in range(0, len(data), PIECE)]
    size = 0

    def run() -> None:
        nonlocal size
        encoder = encoding.encoder(coding, level)
        size = 0
        for piece in pieces:
            size += len(encoder.feed(piece)) + len(encoder.flush())
        size += len(encoder.finish())

    seconds = _best(run, budget)
    return len(data) / seconds / 1e6, size / len(data)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def stream_memory(coding: bytes, level: int, data: bytes, streams: int = 20) -> float:
    """KiB of RSS per encoder that has been fed 1 MiB in pieces (the encoders kept alive)."""
    from proxy.http import encoding

    body = (data * (1024 * 1024 // len(data) + 1))[:1024 * 1024]
    pieces = [body[i:i + PIECE] for i in range(0, len(body), PIECE)]
    before = _rss_kib()
    kept = []
    for _ in range(streams):
        encoder = encoding.encoder(coding, level)
        for piece in pieces:
            encoder.feed(piece)
            encoder.flush()
        kept.append(encoder)
    return (_rss_kib() - before) / streams


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compression", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per measurement (default %(default)s)")
    parser.add_argument("--coding", action="append", choices=["gzip", "br", "zstd"], help="only this coding")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    bodies = corpus()
    sizes = ", ".join(f"{name} {len(data) // 1024} KiB" for name, data in bodies.items())
    print(f"bodies: {sizes}; MB/s of input (best of {args.budget:g}s), compressed size / original")
    header = ["coding", "level", *(f"{name} whole" for name in bodies), "json streamed", "KiB/stream"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for coding, levels in LEVELS.items():
        if args.coding and coding.decode() not in args.coding:
            continue
        for level in levels:
            cells = [coding.decode(), str(level)]
            for data in bodies.values():
                speed, ratio = whole(coding, level, data, args.budget)
                cells.append(f"{speed:.0f} MB/s, {ratio:.3f}")
            speed, ratio = streamed(coding, level, bodies["json-100k"], args.budget)
            cells.append(f"{speed:.0f} MB/s, {ratio:.3f}")
            cells.append(f"{stream_memory(coding, level, bodies['json-100k']):.0f}")
            print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
