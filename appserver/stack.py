"""``make up``: start both tiers on 127.0.0.1, print the URL, stop both on Ctrl-C.

Each tier runs as its own process in its own process group, exactly as it
would in production (or in its own container): the app tier (``appserver``
with appserver.toml) first, then the proxy once the app tier accepts
connections. Ctrl-C (or SIGTERM) sends SIGTERM to each tier's main process,
which drains gracefully (Gunicorn's master stops its own workers, as it
expects to); whatever is still running in either group after
``STOP_SECONDS`` is killed, so no process and no port is left behind.

The proxy is given a copy of proxy.toml that listens on ``--proxy-port`` and
sends the app tier's traffic to ``--app-port`` (any upstream server written
as 127.0.0.1:8000 or localhost:8000), with relative folders made absolute, so
other ports need no edited config. The original is checked first, so a
mistake in it is reported against proxy.toml itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from .cli import check_bind
from .config import ConfigError as AppConfigError, load as load_app_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_APP_PORT = 8000
DEFAULT_PROXY_PORT = 8080
STOP_SECONDS = 10.0
READY_SECONDS = 30.0


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Tier:
    """One tier's process group. Its leader is reaped only in ``reap``, after the group is
    killed: until then the leader's pid, which is the group id, cannot be reused, so the
    kill can only reach processes this launcher started."""

    def __init__(self, name: str, argv: list[str], host: str, port: int) -> None:
        self.name = name
        self.argv = argv
        self.host = host
        self.port = port
        self.process: subprocess.Popen | None = None

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"<Tier {self.name} 127.0.0.1:{self.port} pid={pid} exit={self.exit_status()}>"

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, cwd=ROOT, start_new_session=True)

    def exit_status(self) -> int | None:
        """The leader's exit status once it has exited (left unreaped), else None."""
        if self.process is None:
            return None
        if self.process.returncode is not None:
            return self.process.returncode
        info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return None if info is None else info.si_status

    def wait_ready(self, deadline: float, stopping) -> bool:
        while time.monotonic() < deadline:
            if self.exit_status() is not None or stopping():
                return False
            if _accepting(self.host, self.port):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is None or self.exit_status() is not None:
            return
        # The leader only: signalled as a group, Gunicorn's workers would start
        # their own shutdown before the master has begun its orderly one.
        try:
            os.kill(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return

    def reap(self, deadline: float) -> None:
        if self.process is None:
            return
        while self.exit_status() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.exit_status() is None:
            print(f"{self.name} did not stop in {STOP_SECONDS:g}s: killing it", file=sys.stderr)
        # The whole group, even after a clean exit: nothing the tier started may outlive it.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def tiers(args: argparse.Namespace, proxy_config: Path) -> list[Tier]:
    python = sys.executable
    app = Tier("app tier (appserver)",
               [python, "-m", "appserver", "--config", str(args.app_config), "--bind", f"127.0.0.1:{args.app_port}"],
               "127.0.0.1", args.app_port)
    web = Tier("web tier (proxy)", [python, "-m", "proxy", "--config", str(proxy_config)],
               "127.0.0.1", args.proxy_port)
    return [app, web]


# --- the proxy.toml copy ---------------------------------------------------------

def derive_proxy_config(data: dict[str, Any], base: Path, proxy_port: int, app_port: int) -> dict[str, Any]:
    """proxy.toml's content with the launcher's ports, and every relative path (static folders, logs, the
    pid file, certificates) made absolute against ``base``, the folder proxy.toml is in."""
    from proxy.config import with_absolute_paths

    defaults = {f"{host}:{DEFAULT_APP_PORT}" for host in ("127.0.0.1", "localhost")}
    out = with_absolute_paths(data, base)
    out.setdefault("server", {})["listen"] = [f"127.0.0.1:{proxy_port}"]
    for upstream in out.get("upstreams", {}).values():
        upstream["servers"] = [f"127.0.0.1:{app_port}" if s in defaults else s for s in upstream.get("servers", [])]
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dump_toml(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """The subset of TOML that proxy.toml uses: scalars, lists, tables and arrays of tables."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data.items()
             if not isinstance(v, dict) and not _is_table_array(v)]
    for key, value in data.items():
        path = ".".join(json.dumps(p) for p in (*prefix, key))
        if isinstance(value, dict):
            lines.append(f"\n[{path}]\n" + dump_toml(value, (*prefix, key)))
        elif _is_table_array(value):
            lines += [f"\n[[{path}]]\n" + dump_toml(item, (*prefix, key)) for item in value]
    return "\n".join(lines)


def write_proxy_config(source: Path, folder: Path, proxy_port: int, app_port: int) -> Path:
    """Check proxy.toml (one-line error naming it) and write the launcher's copy into ``folder``."""
    from proxy import config as proxy_config

    proxy_config.load(source)
    with open(source, "rb") as fh:
        data = tomllib.load(fh)
    target = folder / "proxy.toml"
    target.write_text(f"# written by appserver.stack from {source}\n"
                      + dump_toml(derive_proxy_config(data, source.resolve().parent, proxy_port, app_port)))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appserver.stack", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "proxy.toml", help="proxy.toml (default: %(default)s)")
    parser.add_argument("--app-config", type=Path, default=ROOT / "appserver.toml",
                        help="appserver.toml (default: %(default)s)")
    parser.add_argument("--app-port", type=int, default=DEFAULT_APP_PORT)
    parser.add_argument("--proxy-port", type=int, default=DEFAULT_PROXY_PORT)
    args = parser.parse_args(argv)

    from proxy.errors import ConfigError as ProxyConfigError

    folder = Path(tempfile.mkdtemp(prefix="twotier-stack-"))
    try:
        try:
            load_app_config(args.app_config)
            proxy_config = write_proxy_config(args.config, folder, args.proxy_port, args.app_port)
        except (AppConfigError, ProxyConfigError) as exc:
            print(f"cannot start: {exc}", file=sys.stderr)
            return 1
        return run(tiers(args, proxy_config), args.proxy_port)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(stack: list[Tier], proxy_port: int) -> int:
    """Start the tiers in order, wait for Ctrl-C/SIGTERM or a tier's death, stop them all."""
    for tier in stack:
        try:
            check_bind((f"{tier.host}:{tier.port}",))
        except AppConfigError as exc:
            print(f"cannot start the {tier.name}: {exc}", file=sys.stderr)
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
            if not tier.wait_ready(time.monotonic() + READY_SECONDS, lambda: stopping):
                if not stopping:
                    print(f"the {tier.name} did not come up; see its messages above", file=sys.stderr)
                    status = 1
                return status
        print(f"\ntwotier is up: http://127.0.0.1:{proxy_port}/  (Ctrl-C stops both tiers)\n", flush=True)
        while not stopping:
            for tier in stack:
                if tier.exit_status() is not None:
                    print(f"the {tier.name} exited with status {tier.exit_status()}; stopping",
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
