"""The app-tier workload for the benchmark: a small JSON answer and a 10 MiB stream.

Kept apart from demo_app so the measured work never changes under the
benchmark's feet: ``/api/json`` is the cheapest Flask view there is, so the
proxied scenarios measure the two proxies rather than the application.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify

BIG_BYTES = 10 * 1024 * 1024
BIG_CHUNK = 256 * 1024
_CHUNK = b"x" * BIG_CHUNK  # made once: the app tier should cost as little as possible per byte

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
