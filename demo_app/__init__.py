"""The demo Flask application: the app tier's workload, built to show what the proxy did.

Every route is under /api/: everything else (``/``, CSS, JS, images in
``static/``) is served by the proxy from disk and never reaches Flask, which
is why the app has no static folder at all.

``ProxyFix`` trusts exactly one hop, the proxy, which *replaces* (never
appends to) X-Forwarded-For/-Proto/-Host. With ``x_for=1`` werkzeug takes the
last address of X-Forwarded-For, the one our proxy wrote, so a client that
sends its own X-Forwarded-For cannot choose the address the app sees. Trust
more hops only when there really are more proxies in front.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import threading
import time
import uuid

from flask import Flask, Response, jsonify, request, stream_with_context, url_for
from flask_sock import Sock
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

MAX_SLOW_SECONDS = 10.0  # /api/slow never holds a worker longer than this
CACHED_SECONDS = 10  # /api/cached/report: how long the proxy's cache may answer for the app
MAX_STREAM_CHUNKS = 50
MAX_STREAM_INTERVAL = 1.0
WS_IDLE_SECONDS = 600.0  # a WebSocket that sends nothing for this long is closed, freeing its thread


class DemoError(RuntimeError):
    """Raised on purpose by /api/error."""


class BadParameter(HTTPException):
    code = 400


def _number(name: str, default: float, low: float, high: float) -> float:
    """A query parameter as a number clamped to [low, high]; 400 when it is not a number."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadParameter(f"{name} must be a number, got {raw!r}") from None
    if value != value:  # NaN
        raise BadParameter(f"{name} must be a number, got {raw!r}")
    return min(max(value, low), high)


class Tally:
    """The POSTs one worker process received: a counter, and optionally a record that outlives the process.

    With ``folder`` set, each POST's request id is appended to a file of its own
    per container and process before the answer is sent, so what a process
    received can still be read after it is killed or its container removed
    (tests/e2e/test_swarm.py counts lost and duplicated POSTs from these files:
    a POST the proxy sent twice would be there twice).
    """

    def __init__(self, folder: str | None) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self.path = os.path.join(folder, f"{socket.gethostname()}-{os.getpid()}.ids") if folder else None

    def add(self, request_id: str) -> int:
        with self.lock:
            self.count += 1
            if self.path:
                # One short line per write on a file opened for appending: a kill cuts between lines, never in one.
                with open(self.path, "a", encoding="ascii") as record:
                    record.write(request_id + "\n")
            return self.count


def create_app(tally_folder: str | None = None) -> Flask:
    """The application factory: a fresh app per call (tests make their own).

    ``tally_folder``: where each process records the request ids of the POSTs to
    /api/tally it received (wsgi.py takes it from $DEMO_TALLY_DIR); None keeps the count in memory only.
    """
    app = Flask(__name__, static_folder=None)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    tally = Tally(tally_folder)
    reports = itertools.count(1)  # the answers /api/cached/report made in this process (next() is atomic)

    @app.get("/api/whoami")
    def whoami():
        """What the app saw of this request, after the proxy and ProxyFix."""
        original = request.environ.get("werkzeug.proxy_fix.orig", {})
        return jsonify(
            remote_addr=request.remote_addr,
            peer_addr=original.get("REMOTE_ADDR", request.remote_addr),
            scheme=request.scheme,
            host=request.host,
            url=url_for("whoami", _external=True),
            method=request.method,
            protocol=request.environ.get("SERVER_PROTOCOL", ""),  # what reached Gunicorn: HTTP/1.1, whatever the client spoke
            request_id=request.headers.get("X-Request-ID"),
            via=request.headers.get("Via"),
            worker_pid=os.getpid(),
            hostname=socket.gethostname(),
            thread=threading.current_thread().name,
            multithread=bool(request.environ.get("wsgi.multithread")),
            server_software=request.environ.get("SERVER_SOFTWARE", ""),
            view="demo_app.whoami",
            headers=dict(request.headers),
        )

    @app.post("/api/upload")
    def upload():
        """A form POST with a file. Behind the proxy the whole body was buffered before Gunicorn got the
        request, so ``read_ms`` (the app reading the body off its socket) stays small however slow the
        client's upload was."""
        started = time.perf_counter()
        form = request.form.to_dict()
        files = []
        for field_name, storage in request.files.items(multi=True):
            digest = hashlib.sha256()
            size = 0
            for block in iter(lambda: storage.stream.read(65536), b""):
                digest.update(block)
                size += len(block)
            files.append({"field": field_name, "filename": storage.filename, "content_type": storage.mimetype,
                          "size": size, "sha256": digest.hexdigest()})
        return jsonify(fields=form, files=files, content_length=request.content_length,
                       read_ms=round((time.perf_counter() - started) * 1000, 3), worker_pid=os.getpid())

    @app.post("/api/tally")
    def tally_post():
        """Counts one POST in this worker process and says which process counted it. Behind the proxy a
        POST is never sent twice, so over a rolling update the counts add up to the POSTs clients sent."""
        body = request.get_data()
        # The proxy always sends one (the client's when well formed); called directly, the app makes one.
        request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        if not (request_id.isascii() and request_id.isprintable() and " " not in request_id
                and len(request_id) <= 128):
            raise BadParameter("X-Request-ID must be at most 128 printable ASCII characters without spaces")
        count = tally.add(request_id)
        return jsonify(tally=count, request_id=request_id, bytes=len(body),
                       sha256=hashlib.sha256(body).hexdigest(), hostname=socket.gethostname(),
                       worker_pid=os.getpid())

    @app.get("/api/tally")
    def tally_get():
        """How many POSTs this worker process has counted since it started."""
        return jsonify(tally=tally.count, hostname=socket.gethostname(), worker_pid=os.getpid())

    @app.get("/api/cached/report")
    def cached_report():
        """A cacheable answer: the proxy's response cache (proxy.toml: [caches.demo]) keeps it for
        CACHED_SECONDS, then serves it stale while one request refreshes it in the background. Each answer
        says when and by which worker it was made, and how many this process has made: a hit shows the same
        numbers again, and the app's counter does not move."""
        made = next(reports)
        body = jsonify(report="the app's answer, made once and kept by the proxy", generated_at=time.time(),
                       made_by_this_process=made, worker_pid=os.getpid(), hostname=socket.gethostname())
        body.headers["Cache-Control"] = f"public, max-age={CACHED_SECONDS}, stale-while-revalidate=60"
        body.headers["ETag"] = f'"{os.getpid()}-{made}"'
        return body

    @app.get("/api/slow")
    def slow():
        """Sleeps ``seconds`` (at most MAX_SLOW_SECONDS): longer than the proxy's read_timeout -> 504."""
        seconds = _number("seconds", 1.0, 0.0, MAX_SLOW_SECONDS)
        time.sleep(seconds)
        return jsonify(slept=seconds, worker_pid=os.getpid(), hostname=socket.gethostname())

    @app.get("/api/stream")
    def stream():
        """``chunks`` lines, ``interval`` seconds apart, with no Content-Length: Gunicorn sends them
        chunked and the proxy relays each chunk as it comes instead of waiting for the end."""
        chunks = int(_number("chunks", 5, 1, MAX_STREAM_CHUNKS))
        interval = _number("interval", 0.2, 0.0, MAX_STREAM_INTERVAL)

        def lines():
            for i in range(chunks):
                if i:
                    time.sleep(interval)
                yield f"chunk {i + 1} of {chunks} from worker {os.getpid()} at {time.time():.3f}\n"

        return Response(stream_with_context(lines()), mimetype="text/plain")

    @app.get("/api/error")
    def error():
        """An unhandled exception: Flask logs the traceback and answers 500; the proxy passes it on."""
        raise DemoError("this 500 comes from the app, on purpose")

    @app.errorhandler(500)
    def internal_error(exc):
        # JSON with the app's own marker, so it is easy to tell from a 502/504 that the proxy makes.
        # Only the demo's own exception is described; any other stays private to the error log.
        original = getattr(exc, "original_exception", None)
        detail = str(original) if isinstance(original, DemoError) else ""
        return jsonify(error="internal server error", raised_by="demo_app", detail=detail), 500

    @app.errorhandler(BadParameter)
    def bad_parameter(exc):
        return jsonify(error=exc.description), 400

    # WebSocket: Flask-Sock (simple-websocket) on Gunicorn's gthread workers. Each open socket holds one
    # worker thread until it closes; the server pings every 25 s, which also keeps the proxy's tunnel
    # under its websocket_idle_timeout (300 s). Messages over 64 KiB close the socket (1009).
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25, "max_message_size": 64 * 1024}
    sock = Sock(app)

    @sock.route("/ws/echo")
    def ws_echo(ws):
        """Sends back every message with the worker and thread that hold this socket. Through the proxy
        the connection is a tunnel of raw bytes: one upgrade request, then frames both ways."""
        where = {"worker_pid": os.getpid(), "thread": threading.current_thread().name}
        ws.send(json.dumps({"hello": "tunnel open", "scheme": request.scheme, **where}))
        while True:
            message = ws.receive(timeout=WS_IDLE_SECONDS)
            if message is None:  # nothing for WS_IDLE_SECONDS
                ws.close(reason=1000, message="idle")
                return
            ws.send(json.dumps({"echo": message, "at": time.time(), **where}))

    @app.get("/")
    def app_root():
        # Reached only when Gunicorn is called directly: through the proxy, / is static/index.html.
        return jsonify(message="This is the app tier. The demo page is served by the proxy "
                               "(http://127.0.0.1:8080/); the app answers /api/ only."), 404

    return app
