"""A plain WSGI app for proxy tests: echoes what it received, and misbehaves on request."""

from __future__ import annotations

import hashlib
import json
import os
import time


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
