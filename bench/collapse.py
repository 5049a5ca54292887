"""Collapsed forwarding, counted: N clients miss one key at the same moment; how many reach Gunicorn?

Both servers' response caches should send one request upstream and answer
the others from it (the proxy's ``lock``, nginx's ``proxy_cache_lock``).
``/api/cached/collapse`` (bench/app.py) takes 0.2 s and leaves one line per
request it receives in the run's folder, tagged with the run, so the count is
Gunicorn's own.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from .report import label

CLIENTS = 100
PATH = "/api/cached/collapse?run={run}"


def misses(port: int, run: str, clients: int = CLIENTS, timeout: float = 30.0) -> list[int]:
    """Send ``clients`` requests for one new key at once; the status of each answer (0: none)."""
    barrier = threading.Barrier(clients)
    statuses = [0] * clients
    request = f"GET {PATH.format(run=run)} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()

    def client(i: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
                barrier.wait(timeout)
                sock.sendall(request)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            statuses[i] = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else 0
        except (OSError, ValueError, threading.BrokenBarrierError):
            statuses[i] = 0

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    return statuses


def upstream_count(work: Path, run: str) -> int:
    """Requests for ``run`` that reached Gunicorn."""
    record = work / "collapse"
    return record.read_text().split().count(run) if record.exists() else 0


def measure(stack) -> dict:
    """{server: {"clients", "answered", "upstream_requests"}} for one burst of misses per server of ``stack``
    (nginx and each proxy engine)."""
    out = {}
    for server, started in stack.servers.items():
        run = f"{server}-{id(out)}"
        statuses = misses(started.port, run)
        out[server] = {"clients": len(statuses), "answered": sum(1 for s in statuses if s == 200),
                       "upstream_requests": upstream_count(stack.layout.work, run)}
    return out


def line(result: dict) -> str:
    parts = [f"{label(server)} {r['upstream_requests']} (of {r['clients']} clients, {r['answered']} answered 200)"
             for server, r in result.items()]
    return f"collapsed forwarding: {CLIENTS} concurrent misses for one key reached Gunicorn: " + "; ".join(parts)
