"""The app-tier workload for the benchmark: a small JSON answer, a 4 KiB cacheable one, a 100 KiB one, and a
10 MiB stream.

Kept apart from demo_app so the measured work never changes under the
benchmark's feet: ``/api/json`` is the cheapest Flask view there is, so the
proxied scenarios measure the two proxies rather than the application.
"""

from __future__ import annotations

import json
import os
import random
import time

from flask import Flask, Response, jsonify, request

BIG_BYTES = 10 * 1024 * 1024
BIG_CHUNK = 256 * 1024
_CHUNK = b"x" * BIG_CHUNK  # made once: the app tier should cost as little as possible per byte

# 4 KiB that the app says may be cached for an hour: served at /api/4k (a route without a cache, so every
# request reaches Gunicorn) and /api/cached/4k (a route with one: after the first, hits).
CACHEABLE = (b'{"items":"' + b"x" * (4096 - 13) + b'"}\n')[:4096]
CACHE_FOR_AN_HOUR = {"Cache-Control": "public, max-age=3600"}

JSON_100K_BYTES = 100 * 1024


def json_100k() -> bytes:
    """About 100 KiB of a typical API listing (records of ids, names, dates, numbers, flags), the same
    bytes on every call: what the compression scenario sends and bench/compression.py measures."""
    rng = random.Random(14)
    words = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
             "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango")
    records, size = [], 2
    while True:
        i = len(records)
        first, last = rng.choice(words), rng.choice(words)
        record = {"id": 100000 + i * 7, "name": f"{first.title()} {last.title()}",
                  "email": f"{first}.{last}{rng.randrange(100)}@example.test",
                  "created": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T"
                             f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z",
                  "active": rng.random() < 0.8, "score": round(rng.uniform(0, 100), 2),
                  "tags": rng.sample(words, rng.randrange(4)), "orders": rng.randrange(500)}
        size += len(json.dumps(record, separators=(",", ":"))) + 1
        if size > JSON_100K_BYTES:
            break
        records.append(record)
    body = json.dumps(records, separators=(",", ":")).encode()
    return body + b" " * (JSON_100K_BYTES - len(body))  # JSON allows trailing whitespace: exactly 100 KiB


_JSON_100K = json_100k()

app = Flask(__name__, static_folder=None)


@app.get("/api/json")
@app.get("/policy/json")  # the same answer through the route with request policy
def small_json():
    return jsonify(ok=True, service="twotier-bench", items=[1, 2, 3])


@app.get("/api/json-100k")
def json_100k_view():
    # Made once: the scenario measures the proxies' compression, not Flask's json.dumps.
    return Response(_JSON_100K, mimetype="application/json")


@app.get("/api/big")
def big_stream():
    def chunks():
        for _ in range(BIG_BYTES // BIG_CHUNK):
            yield _CHUNK

    # Content-Length is known, so both proxies relay a length-framed body as it streams.
    return Response(chunks(), mimetype="application/octet-stream", headers={"Content-Length": str(BIG_BYTES)})


@app.get("/api/4k")
@app.get("/api/cached/4k")
def cacheable():
    return Response(CACHEABLE, mimetype="application/json", headers=CACHE_FOR_AN_HOUR)


@app.get("/api/cached/collapse")
def collapse():
    """Slow enough (0.2 s) for a hundred requests to arrive while the first is on its way; each request
    that reaches Gunicorn leaves a line in $BENCH_COUNT_DIR/collapse (bench/collapse.py counts them)."""
    with open(os.path.join(os.environ["BENCH_COUNT_DIR"], "collapse"), "a") as record:
        record.write(request.args.get("run", "-") + "\n")
    time.sleep(0.2)
    return Response(CACHEABLE, mimetype="application/json", headers=CACHE_FOR_AN_HOUR)
