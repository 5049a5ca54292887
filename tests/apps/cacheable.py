"""A WSGI app for the response cache's tests: each answer's caching headers come from its query string,
and every request it receives is counted in a file, so a test can tell a hit from a request that reached
Gunicorn.

Query keys: ``cc`` (Cache-Control), ``etag``, ``lm`` (Last-Modified), ``vary``, ``status``, ``size`` (a body
of that many bytes instead of the default), ``sleep`` (seconds before answering), ``cookie`` (a Set-Cookie),
``expires``, ``fail`` (answer ``status`` only while the file ``$TEST_COUNT_DIR/<fail>`` exists, 200 otherwise).
A request whose If-None-Match holds the ``etag`` is answered 304. The body names the request's
number for its path, so a test sees which answer it got. ``$TEST_COUNT_DIR/<path>`` gets one line per request:
the method and the conditional headers received.
"""

from __future__ import annotations

import os
import threading
import time
from urllib.parse import parse_qs

_lock = threading.Lock()


def _count(environ) -> int:
    folder = os.environ["TEST_COUNT_DIR"]
    name = environ["PATH_INFO"].strip("/").replace("/", "_") or "root"
    line = " ".join([environ["REQUEST_METHOD"], environ.get("HTTP_IF_NONE_MATCH", "-"),
                     environ.get("HTTP_IF_MODIFIED_SINCE", "-"), environ.get("HTTP_ACCEPT_LANGUAGE", "-")])
    with _lock:
        path = os.path.join(folder, name)
        with open(path, "a") as fh:
            fh.write(line + "\n")
        with open(path) as fh:
            return sum(1 for _ in fh)


def app(environ, start_response):
    query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    number = _count(environ)
    if "sleep" in query:
        time.sleep(float(query["sleep"]))
    status = query.get("status", "200")
    if "fail" in query and not os.path.exists(os.path.join(os.environ["TEST_COUNT_DIR"], query["fail"])):
        status = "200"
    headers = [("Content-Type", "text/plain")]
    for key, name in (("cc", "Cache-Control"), ("etag", "ETag"), ("lm", "Last-Modified"), ("vary", "Vary"),
                      ("cookie", "Set-Cookie"), ("expires", "Expires"), ("location", "Location")):
        if key in query:
            headers.append((name, query[key]))
    etag = query.get("etag")
    if etag and environ.get("HTTP_IF_NONE_MATCH") == etag:
        start_response("304 Not Modified", headers)
        return [b""]
    if "size" in query:
        size = int(query["size"])
        block = b"%d" % (number % 10) * 65536

        def chunks():
            left = size
            while left > 0:
                yield block[:left]
                left -= len(block)
        start_response(f"{status} X", headers + [("Content-Length", str(size))])
        return chunks()
    body = f"answer {number} for {environ['REQUEST_METHOD']} {environ['PATH_INFO']}" \
           f" lang={environ.get('HTTP_ACCEPT_LANGUAGE', '-')}\n".encode()
    start_response(f"{status} X", headers + [("Content-Length", str(len(body)))])
    return [body]
