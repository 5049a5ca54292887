"""The app-tier workload for the benchmark: a small JSON answer, a 4 KiB cacheable one, a 10 MiB stream.

Kept apart from demo_app so the measured work never changes under the
benchmark's feet: ``/api/json`` is the cheapest Flask view there is, so the
proxied scenarios measure the two proxies rather than the application.
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, jsonify, request

BIG_BYTES = 10 * 1024 * 1024
BIG_CHUNK = 256 * 1024
_CHUNK = b"x" * BIG_CHUNK  # made once: the app tier should cost as little as possible per byte

# 4 KiB that the app says may be cached for an hour: served at /api/4k (a route without a cache, so every
# request reaches Gunicorn) and /api/cached/4k (a route with one: after the first, hits).
CACHEABLE = (b'{"items":"' + b"x" * (4096 - 13) + b'"}\n')[:4096]
CACHE_FOR_AN_HOUR = {"Cache-Control": "public, max-age=3600"}

app = Flask(__name__, static_folder=None)


@app.get("/api/json")
@app.get("/policy/json")  # the same answer through the route with request policy
def small_json():
    return jsonify(ok=True, service="twotier-bench", items=[1, 2, 3])


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
