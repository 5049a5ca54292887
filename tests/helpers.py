"""Real processes and sockets for integration tests: the proxy, Gunicorn, a recording upstream.

Everything listens on 127.0.0.1 with a port chosen at run time, readiness is
polled (never a fixed sleep), and each helper stops only the process group it
started.
"""

from __future__ import annotations

import os
import re
import signal
from signal import SIGQUIT, SIGTERM
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0
EVENT_LOOPS = ("asyncio", "uvloop")  # the values of [server] event_loop that pick a loop; "auto" is uvloop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = READY_TIMEOUT, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def compose_duration(text: str) -> float:
    """A compose-file duration ("5s", "1m30s", "500ms") in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    found = re.findall(r"([\d.]+)(ms|s|m|h)", text)
    assert found, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in found)


def connect(target: int | str, timeout: float = 5.0) -> socket.socket:
    """A connection to a port of 127.0.0.1, or (a str) to a unix socket's path."""
    if isinstance(target, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        return sock
    return socket.create_connection(("127.0.0.1", target), timeout=timeout)


def accepting(port: int | str, host: str = "127.0.0.1") -> bool:
    """Something listens on ``port`` of ``host`` (or, a str, on that unix socket)."""
    try:
        sock = connect(port, timeout=0.2) if isinstance(port, str) else socket.create_connection((host, port), 0.2)
    except OSError:
        return False
    sock.close()
    return True


class Process:
    """A child process in its own group, with its output collected line by line."""

    def __init__(self, argv: list[str], cwd: Path = ROOT, env: dict | None = None) -> None:
        self.argv = argv
        self.lines: list[str] = []
        self.stdout: list[str] = []
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return "\n".join(self.lines + self.stdout)

    def wait_for_line(self, pattern: str, timeout: float = READY_TIMEOUT, stream: str = "stderr"):
        regex = re.compile(pattern)
        sink = self.lines if stream == "stderr" else self.stdout

        def found():
            for line in list(sink):
                match = regex.search(line)
                if match:
                    return match
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[:3]} exited with {self.proc.returncode}:\n{self.output()}")
            return None

        return wait_until(found, timeout, what=f"/{pattern}/ in output")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0, sig: int = SIGTERM) -> int:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=2)
        return self.proc.returncode


class ProxyProcess(Process):
    """``python -m proxy`` with a config written to ``folder``; ``port`` is the first TCP listener's
    (``tcp=False`` for a proxy with none: it is then ready once its workers accept)."""

    def __init__(self, folder: Path, config: str, args: list[str] = (), tcp: bool = True) -> None:
        self.config_path = Path(folder) / "proxy.toml"
        self.config_path.write_text(textwrap.dedent(config))
        super().__init__([sys.executable, "-m", "proxy", "--config", str(self.config_path), *args])
        if not tcp:
            self.wait_for_line(r"is accepting connections")
            return
        match = self.wait_for_line(r"listening on http://(\S+):(\d+)/")
        self.host = match[1]
        self.port = int(match[2])
        self.url = f"http://127.0.0.1:{self.port}"

    def access_lines(self) -> list[str]:
        return list(self.stdout)


class GunicornProcess(Process):
    """Gunicorn serving ``app`` (module:callable) on a free port of 127.0.0.1, or on the unix socket
    ``unix`` (a path); ``address`` is how proxy.toml names it."""

    def __init__(self, app: str, *args: str, workers: int = 1, worker_class: str = "sync",
                 env: dict | None = None, port: int | None = None, unix: str | None = None) -> None:
        self.port = port or free_port()
        bind = f"unix:{unix}" if unix else f"127.0.0.1:{self.port}"
        super().__init__([sys.executable, "-m", "gunicorn", "--bind", bind,
                          "--workers", str(workers), "--worker-class", worker_class,
                          "--graceful-timeout", "3", *args, app], env=env)
        target = unix or self.port
        wait_until(lambda: accepting(target) or self._died(), what="gunicorn to accept connections")
        if self.proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{self.output()}")
        self.address = bind

    def _died(self) -> bool:
        return self.proc.poll() is not None

    def stop(self, timeout: float = 10.0, sig: int = SIGQUIT) -> int:
        """Gunicorn's quick shutdown (SIGQUIT): tests that need the graceful one send SIGTERM."""
        return super().stop(timeout, sig)


def stop_all(processes) -> None:
    """Signal every process first, then wait for each: teardown in parallel."""
    for process in processes:
        process.signal(signal.SIGQUIT if isinstance(process, GunicornProcess) else signal.SIGTERM)
    for process in processes:
        process.stop()


class RecordingUpstream:
    """A raw TCP upstream: records every byte it receives and answers with ``respond(request_bytes)``.

    ``respond`` gets the bytes of one request head (and body, by Content-Length)
    and returns the raw response bytes, or None to close without answering.
    """

    def __init__(self, respond=None, keep_alive: bool = True) -> None:
        self.respond = respond or (lambda raw: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.keep_alive = keep_alive
        self.received: list[bytes] = []  # one entry per request
        self.connections = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            conn.settimeout(30)
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = 0
                match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                if match:
                    length = int(match[1])
                while len(rest) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    rest += data
                raw = head + b"\r\n\r\n" + rest[:length]
                buffer = rest[length:]
                self.received.append(raw)
                answer = self.respond(raw)
                if answer is None:
                    return
                try:
                    conn.sendall(answer)
                except OSError:
                    return
                if not self.keep_alive:
                    return

    def close(self) -> None:
        self._closed = True
        self._sock.close()


def raw_request(port: int | str, data: bytes, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes to a port of 127.0.0.1 (or a unix socket's path), return everything the proxy
    answers until it closes (or ``timeout``)."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


def status_of(response: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    return int(match[1]) if match else None


def proxy_config(*, upstream: str | None = None, static: str | None = None, prefix: str = "/", server: str = "",
                 limits: str = "", log: str = "", upstream_extra: str = "", status: bool = False) -> str:
    """A proxy.toml on a free port of 127.0.0.1 with one route: forwarded to ``upstream``, served from
    ``static``, or both. ``server``, ``limits``, ``log`` and ``upstream_extra`` are extra TOML lines
    for those tables; ``status`` adds an empty [status] table."""
    parts = ["[server]", 'listen = ["127.0.0.1:0"]', server]
    if limits:
        parts += ["[limits]", limits]
    if log:
        parts += ["[log]", log]
    if upstream:
        parts += ["[upstreams.app]", f'servers = ["{upstream}"]', upstream_extra]
    if status:
        parts.append("[status]")
    parts += ["[[routes]]", f'prefix = "{prefix}"']
    if static is not None:
        parts.append(f'static = "{static}"')
    if upstream:
        parts.append('upstream = "app"')
    return "\n".join(textwrap.dedent(part).strip() for part in parts if part) + "\n"


def single_upstream_config(address: str, extra: str = "") -> str:
    """A proxy.toml that forwards everything to one server: the shape most tests need."""
    return proxy_config(upstream=address, upstream_extra=extra)
