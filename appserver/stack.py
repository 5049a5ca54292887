"""``make up``: start both tiers on 127.0.0.1, print the URL, stop both on Ctrl-C.

Each tier runs as its own process in its own process group, exactly as it
would in production (or in its own container): the app tier first, then the
proxy once the app tier accepts connections. Ctrl-C (or SIGTERM) sends
SIGTERM to both groups so each drains gracefully; whatever is still running
after ``STOP_SECONDS`` is killed, so no process and no port is left behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STOP_SECONDS = 10.0
READY_SECONDS = 30.0


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


class Tier:
    def __init__(self, name: str, argv: list[str], host: str, port: int) -> None:
        self.name = name
        self.argv = argv
        self.host = host
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, cwd=ROOT, start_new_session=True)

    def wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if _accepting(self.host, self.port):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return

    def reap(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop in {STOP_SECONDS:g}s: killing it", file=sys.stderr)
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()


def tiers(args: argparse.Namespace) -> list[Tier]:
    python = sys.executable
    app = Tier("app tier (gunicorn)",
               [python, "-m", "gunicorn", "--bind", f"127.0.0.1:{args.app_port}", "--workers", "2",
                "--worker-class", "gthread", "--threads", "4", "--keep-alive", "75", "demo_app.wsgi:app"],
               "127.0.0.1", args.app_port)
    web = Tier("web tier (proxy)", [python, "-m", "proxy", "--config", str(args.config)],
               "127.0.0.1", args.proxy_port)
    return [app, web]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appserver.stack", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "proxy.toml"), help="proxy.toml (default: %(default)s)")
    parser.add_argument("--app-port", type=int, default=8000)
    parser.add_argument("--proxy-port", type=int, default=8080)
    args = parser.parse_args(argv)

    stack = tiers(args)
    for tier in stack:
        if _port_in_use(tier.host, tier.port):
            print(f"cannot start the {tier.name}: 127.0.0.1:{tier.port} is already in use "
                  f"(another `make up` still running? stop it, or free the port)", file=sys.stderr)
            return 1

    stopping = False

    def _request_stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    status = 0
    try:
        for tier in stack:
            print(f"==> starting the {tier.name} on 127.0.0.1:{tier.port}", flush=True)
            tier.start()
            if not tier.wait_ready(time.monotonic() + READY_SECONDS):
                if not stopping:
                    print(f"the {tier.name} did not come up; see its messages above", file=sys.stderr)
                    status = 1
                return status
        print(f"\ntwotier is up: http://127.0.0.1:{args.proxy_port}/  (Ctrl-C stops both tiers)\n", flush=True)
        while not stopping:
            for tier in stack:
                if tier.process.poll() is not None:
                    print(f"the {tier.name} exited with status {tier.process.returncode}; stopping",
                          file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        print("==> stopping both tiers", flush=True)
        for tier in reversed(stack):
            tier.stop()
        deadline = time.monotonic() + STOP_SECONDS
        for tier in reversed(stack):
            tier.reap(deadline)
        print("==> stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
