"""The app tier's own WSGI middleware: request id, Server-Timing, and /healthz.

It goes around the application in every worker (``wrap_worker_app`` is
Gunicorn's ``post_worker_init`` hook), so the application's own routes and
code stay untouched:

* ``X-Request-ID``: the proxy's id is kept when well formed, otherwise (the
  app server called directly) a new one is made. The app sees it in its
  environ, the response carries it, and Gunicorn's access log prints it from
  the response (``%({x-request-id}o)s``), so both tiers log the same id.
* ``Server-Timing: app;dur=<ms>``: the time from the worker handing the
  request to the application until the application started its response.
  It must be known when the head is sent, so for a streamed body it is the
  time to the first byte, not to the last. The proxy adds its own entries
  (W3C Server-Timing allows several header fields; browsers join them).
* ``/healthz``: answered here, without calling the application, so a health
  check says "this worker can take requests" and never runs (or logs in)
  the application's code; an application route of that name is shadowed.
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable, Iterable

HEALTH_PATH = "/healthz"

# The proxy accepts the same alphabet (proxy/http/headers.py); anything else,
# e.g. quotes that would break an access-log line, is replaced.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._~:+/=-]{1,128}$")

_HEALTH_BODY = b"ok\n"


def request_id(value: str | None) -> str:
    """The caller's id when well formed, else a new random one (32 hex digits, like the proxy's)."""
    if value and _REQUEST_ID_RE.match(value):
        return value
    return os.urandom(16).hex()


def server_timing(seconds: float) -> str:
    return f"app;dur={seconds * 1000:.3f}"


def _replace_header(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    lower = name.lower()
    return [(n, v) for n, v in headers if n.lower() != lower] + [(name, value)]


class AppTier:
    """WSGI middleware; ``clock`` is injectable so tests can drive the timing."""

    def __init__(self, app: Callable, clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.clock = clock

    def __repr__(self) -> str:
        return f"<AppTier around {self.app!r}>"

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = self.clock()
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        environ["HTTP_X_REQUEST_ID"] = rid

        def timed_start_response(status: str, headers: list, exc_info=None):
            headers = _replace_header(list(headers), "X-Request-ID", rid)
            # Appended, not replaced: an application may send Server-Timing entries of its own.
            headers.append(("Server-Timing", server_timing(self.clock() - started)))
            return start_response(status, headers, exc_info)

        if environ.get("PATH_INFO") == HEALTH_PATH:
            return health(environ, timed_start_response)
        return self.app(environ, timed_start_response)


def health(environ: dict, start_response: Callable) -> list[bytes]:
    """200 "ok" for GET and HEAD; never cached, so a probe always reaches a worker."""
    method = environ.get("REQUEST_METHOD")
    if method not in ("GET", "HEAD"):
        start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
        return []
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store"),
                              ("Content-Length", str(len(_HEALTH_BODY)))])
    return [] if method == "HEAD" else [_HEALTH_BODY]


def wrap_worker_app(worker) -> None:
    """Gunicorn ``post_worker_init`` hook: put AppTier around the app this worker loaded."""
    if not isinstance(worker.wsgi, AppTier):
        worker.wsgi = AppTier(worker.wsgi)
