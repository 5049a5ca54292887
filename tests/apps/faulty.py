"""A WSGI app whose worker dies in the middle of an answer, for fault tests."""

from __future__ import annotations

import os
import signal
import time


def app(environ, start_response):
    if environ["PATH_INFO"] == "/die-mid-body":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100000")])

        def body():
            yield b"x" * 1000
            time.sleep(0.05)  # let the first bytes leave before the worker dies
            os.kill(os.getpid(), signal.SIGKILL)
            yield b"never"
        return body()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
