"""A plain WSGI app for proxy tests: echoes what it received, and misbehaves on request."""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from functools import lru_cache


def app(environ, start_response):
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    query = environ.get("QUERY_STRING", "")

    if path == "/echo":
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if "CONTENT_TYPE" in environ:
            headers["content-type"] = environ["CONTENT_TYPE"]
        payload = json.dumps({
            "method": method, "path": path, "query": query, "headers": headers,
            "body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
            "remote_addr": environ.get("REMOTE_ADDR"), "pid": os.getpid(),
            "name": os.environ.get("TEST_SERVER_NAME", ""),
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]
    if path == "/count":
        # Records each request's id in a per-process file, so a test can prove that a
        # request reached the app servers once and only once.
        folder = os.environ["TEST_COUNT_DIR"]
        with open(os.path.join(folder, f"{os.getpid()}.ids"), "ab") as fh:
            fh.write(body + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        name = os.environ.get("TEST_SERVER_NAME", "").encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(name)))])
        return [name]
    if path == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/stream":
        count = int(query.split("=")[1]) if query.startswith("n=") else 5
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"chunk %d\n" % i for i in range(count))
    if path == "/big":
        size = int(query.split("=")[1]) if query.startswith("size=") else 1024 * 1024
        block = b"x" * 65536

        def chunks():
            left = size
            while left > 0:
                yield block[:left]
                left -= len(block)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return chunks()
    if path == "/json":
        # A JSON answer of about ``size`` bytes with a strong ETag and a Vary of its own (compression tests).
        size = int(query.split("=")[1]) if query.startswith("size=") else 20000
        payload = json_records(size)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                                  ("ETag", '"v1"'), ("Vary", "Cookie")])
        return [payload]
    if path == "/json-stream":
        # A JSON array of ``size`` bytes streamed in 64 KiB pieces with no Content-Length (chunked).
        size = int(query.split("=")[1]) if query.startswith("size=") else 1024 * 1024
        start_response("200 OK", [("Content-Type", "application/json")])
        return json_pieces(size)
    if path == "/gzipped":
        # A body the app compressed itself: ``mib`` MiB of zeros as a little gzip (a bomb to whoever decodes it).
        payload = zeros_gzipped(int(query.split("=")[1]) if query.startswith("mib=") else 64)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
                                  ("Content-Length", str(len(payload)))])
        return [payload]
    if path == "/slow":
        time.sleep(float(query.split("=")[1]) if query.startswith("s=") else 1.0)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"slow"]
    if path == "/status":
        code = int(query.split("=")[1])
        start_response(f"{code} X", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return [b"status"]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]


RECORD = b'{"id":"%07d","name":"user %07d","email":"user%07d@example.test","active":true,"rank":"%07d"},'


def json_records(size: int) -> bytes:
    """A JSON array of records, ``size`` bytes or a little less."""
    count = max(0, (size - 2) // len(RECORD % (0, 0, 0, 0)))
    return b"[" + b"".join(RECORD % (i, i, i, i * 7) for i in range(count)).rstrip(b",") + b"]"


def json_pieces(size: int, piece: int = 65536):
    """``json_records(size)`` made and sent a piece at a time: the app never holds the whole body."""
    record = len(RECORD % (0, 0, 0, 0))
    count = max(1, (size - 2) // record)
    per_piece = max(1, piece // record)
    yield b"["
    for start in range(0, count, per_piece):
        end = min(start + per_piece, count)
        chunk = b"".join(RECORD % (i, i, i, i * 7) for i in range(start, end))
        yield chunk[:-1] if end == count else chunk
    yield b"]"


@lru_cache
def zeros_gzipped(mib: int) -> bytes:
    """``mib`` MiB of zero bytes, gzip-compressed at level 9 (about a thousandth of the size)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    return b"".join(z.compress(block) for _ in range(mib)) + z.flush()
