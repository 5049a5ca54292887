"""The three servers of one benchmark run: Gunicorn, nginx and the proxy.

``prepare`` lays out the run's temporary folder (static files, nginx's
prefix, both configs); ``Stack`` starts the servers inside a ``Processes``
block, which stops them however the run ends.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import configs
from .procs import Child, Processes, StartError, accepting, free_port
from .scenarios import STATIC_FILES

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMP_DIRS = ("nginx-client-body", "nginx-proxy-temp", "nginx-fastcgi-temp", "nginx-uwsgi-temp",
                   "nginx-scgi-temp")

# The app tier as appserver/stack.py runs it (`make up`): gthread, 2 workers, keep-alive 75 s.
GUNICORN_WORKERS = 2
GUNICORN_ARGS = ("--workers", str(GUNICORN_WORKERS), "--worker-class", "gthread", "--threads", "4", "--keep-alive", "75")


def find_nginx() -> str | None:
    # Debian puts it in /usr/sbin, which is not on every user's PATH.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def prepare(work: Path, *, nginx_sendfile: bool, proxy_sendfile: bool, workers: int,
            proxy_master: bool = False) -> configs.Layout:
    static = work / "static"
    static.mkdir()
    for name, size in STATIC_FILES.items():
        # Not compressible and not all one byte, like a real asset.
        (static / name).write_bytes(os.urandom(size))
    for name in NGINX_TEMP_DIRS:
        (work / name).mkdir()
    certificate, key = make_certificate(work)
    layout = configs.Layout(work=work, static=static, app_port=free_port(), nginx_port=free_port(),
                            nginx_tls_port=free_port(), certificate=certificate, key=key,
                            nginx_sendfile=nginx_sendfile, proxy_sendfile=proxy_sendfile, workers=workers,
                            proxy_master=proxy_master, run_as_root=os.geteuid() == 0)
    (work / "nginx.conf").write_text(configs.nginx_conf(layout))
    (work / "proxy.toml").write_text(configs.proxy_toml(layout))
    return layout


def make_certificate(work: Path) -> tuple[Path, Path]:
    """A self-signed certificate for both TLS listeners, made by ``proxy gencert`` (the openssl command)."""
    done = subprocess.run([sys.executable, "-m", "proxy", "gencert", "--out", str(work), "localhost", "127.0.0.1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise StartError(f"cannot make the TLS certificate: {(done.stderr or done.stdout).strip()}")
    return work / "cert.pem", work / "key.pem"


_UNVERIFIED = ssl._create_unverified_context()  # the run's own self-signed certificate


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout, context=_UNVERIFIED) as response:
        return response.status, response.read()


@dataclass
class Stack:
    layout: configs.Layout
    gunicorn: Child
    nginx: Child
    proxy: Child
    proxy_port: int
    proxy_tls_port: int

    def url(self, server: str, path: str, tls: bool = False) -> str:
        if tls:
            return f"https://127.0.0.1:{self.proxy_tls_port if server == 'proxy' else self.layout.nginx_tls_port}{path}"
        return f"http://127.0.0.1:{self.proxy_port if server == 'proxy' else self.layout.nginx_port}{path}"

    def child(self, server: str) -> Child:
        return self.proxy if server == "proxy" else self.nginx

    def check_alive(self) -> None:
        for child in (self.gunicorn, self.nginx, self.proxy):
            if not child.alive:
                raise StartError(f"{child.name} exited with status {child.proc.returncode} during the run:\n"
                                 f"{child.tail()}")


def start_gunicorn(procs: Processes, layout: configs.Layout) -> Child:
    child = procs.start("gunicorn", [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{layout.app_port}",
                                     *GUNICORN_ARGS, "bench.app:app"], cwd=ROOT)
    child.wait_for(lambda: accepting(layout.app_port), "accepting connections")
    # The master listens before it forks: wait for the workers too, so that their CPU is counted.
    child.wait_for(lambda: len(child.group()) >= 1 + GUNICORN_WORKERS, f"{GUNICORN_WORKERS} workers")
    return child


def start_nginx(procs: Processes, layout: configs.Layout, nginx: str) -> Child:
    work = layout.work
    child = procs.start("nginx", [nginx, "-p", str(work), "-c", str(work / "nginx.conf"),
                                  "-e", str(work / "nginx-error.log")])
    child.wait_for(lambda: accepting(layout.nginx_port), "accepting connections")
    child.wait_for(lambda: len(child.group()) >= 1 + layout.workers, f"{layout.workers} worker(s)")
    return child


def start_proxy(procs: Processes, layout: configs.Layout, source: Path, runner: tuple[str, ...] = ("-m", "proxy"),
                name: str = "proxy") -> tuple[Child, int, int]:
    """``python -m proxy`` from ``source`` (the repo, or a scratch copy being tried out).

    ``runner`` replaces ``-m proxy`` to run the same CLI under a profiler.
    """
    argv = [sys.executable, *runner, "--config", str(layout.work / "proxy.toml")]
    child = procs.start(name, argv, cwd=source, env={"PYTHONPATH": f"{source}{os.pathsep}{ROOT}"})
    match = child.wait_for_log(r"listening on http://[^\s:]+:(\d+)/")
    tls = child.wait_for_log(r"listening on https://[^\s:]+:(\d+)/")
    if layout.proxy_master:  # the master logs first, then forks: wait for its workers too
        child.wait_for(lambda: len(child.group()) >= 1 + layout.workers, f"{layout.workers} worker(s)")
    return child, int(match[1]), int(tls[1])


def proxy_supports_workers(source: Path) -> bool:
    """Whether the proxy in ``source`` has a [server] workers key, i.e. a master process that forks workers.

    Asked in a child process, so the harness never imports the proxy it measures.
    """
    code = ("import dataclasses, proxy.config as c; "
            "print('workers' in {f.name for f in dataclasses.fields(c.ServerSettings)})")
    done = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(source)})
    return done.stdout.strip() == "True"


def start(procs: Processes, layout: configs.Layout, nginx: str, source: Path) -> Stack:
    gunicorn = start_gunicorn(procs, layout)
    nginx_child = start_nginx(procs, layout, nginx)
    proxy, port, tls_port = start_proxy(procs, layout, source)
    return Stack(layout, gunicorn, nginx_child, proxy, port, tls_port)


def sanity_check(stack: Stack, paths: list[str], tls: bool = False) -> None:
    """Every path answers 200 with the same body on both servers before anything is timed."""
    for path in paths:
        bodies = {}
        for server in ("proxy", "nginx"):
            try:
                status, body = http_get(stack.url(server, path, tls))
            except OSError as exc:
                raise StartError(f"{server} GET {path}: {exc}") from None
            if status != 200:
                raise StartError(f"{server} GET {path}: status {status}")
            bodies[server] = body
        if len(bodies["proxy"]) != len(bodies["nginx"]):
            raise StartError(f"GET {path}: proxy sent {len(bodies['proxy'])} bytes, nginx {len(bodies['nginx'])}")
