"""The servers of one benchmark run: Gunicorn, nginx and the proxy once per HTTP/1.1 engine.

``prepare`` lays out the run's temporary folder (static files, nginx's
prefix, the configs); ``start`` starts the servers inside a ``Processes``
block, which stops them however the run ends. The proxies sit side by side,
each idle while another server is measured.
"""

from __future__ import annotations

import gzip
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
from .report import NGINX, label
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
            engines: tuple[str, ...] = configs.ENGINES, proxy_master: bool = False,
            policy: bool = False, gzip: bool = False) -> configs.Layout:
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
                            proxy_master=proxy_master, run_as_root=os.geteuid() == 0, policy=policy,
                            gzip=gzip)
    (work / "nginx.conf").write_text(configs.nginx_conf(layout))
    for engine in engines:
        layout.proxy_config(engine).write_text(configs.proxy_toml(layout, engine))
    return layout


def make_certificate(work: Path) -> tuple[Path, Path]:
    """A self-signed certificate for every TLS listener, made by ``proxy gencert`` (the openssl command)."""
    done = subprocess.run([sys.executable, "-m", "proxy", "gencert", "--out", str(work), "localhost", "127.0.0.1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise StartError(f"cannot make the TLS certificate: {(done.stderr or done.stdout).strip()}")
    return work / "cert.pem", work / "key.pem"


_UNVERIFIED = ssl._create_unverified_context()  # the run's own self-signed certificate


def http_get(url: str, timeout: float = 5.0, headers=()) -> tuple[int, bytes, str | None]:
    """Status, body as sent (not decoded) and Content-Encoding of one GET."""
    request = urllib.request.Request(url, headers=dict(headers))
    with urllib.request.urlopen(request, timeout=timeout, context=_UNVERIFIED) as response:
        return response.status, response.read(), response.headers.get("Content-Encoding")


@dataclass(frozen=True)
class Server:
    """A started server and the ports it listens on: plain HTTP/1.1, and TLS offering HTTP/2."""

    child: Child
    port: int
    tls_port: int

    def url(self, path: str, tls: bool = False) -> str:
        return f"https://127.0.0.1:{self.tls_port}{path}" if tls else f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Stack:
    layout: configs.Layout
    gunicorn: Child
    servers: dict[str, Server]  # NGINX and one proxy per engine, by name (report.servers)

    def url(self, server: str, path: str, tls: bool = False) -> str:
        return self.servers[server].url(path, tls)

    def child(self, server: str) -> Child:
        return self.servers[server].child

    def describe(self) -> str:
        listening = [f"{label(name)} :{s.port} (TLS :{s.tls_port})" for name, s in self.servers.items()]
        return ", ".join([*listening, f"gunicorn :{self.layout.app_port}"])

    def check_alive(self) -> None:
        for child in (self.gunicorn, *(s.child for s in self.servers.values())):
            if not child.alive:
                raise StartError(f"{child.name} exited with status {child.proc.returncode} during the run:\n"
                                 f"{child.tail()}")


def start_gunicorn(procs: Processes, layout: configs.Layout) -> Child:
    child = procs.start("gunicorn", [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{layout.app_port}",
                                     *GUNICORN_ARGS, "bench.app:app"], cwd=ROOT,
                        env={"BENCH_COUNT_DIR": str(layout.work)})  # bench/collapse.py reads the count there
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


def start_proxy(procs: Processes, layout: configs.Layout, source: Path, engine: str,
                runner: tuple[str, ...] = ("-m", "proxy"), name: str = "") -> Server:
    """``python -m proxy`` from ``source`` (the repo, or a scratch copy being tried out) with ``engine``.

    ``runner`` replaces ``-m proxy`` to run the same CLI under a profiler.
    """
    argv = [sys.executable, *runner, "--config", str(layout.proxy_config(engine))]
    name = name or f"proxy-{engine}"
    child = procs.start(name, argv, cwd=source, env={"PYTHONPATH": f"{source}{os.pathsep}{ROOT}"})
    match = child.wait_for_log(r"listening on http://[^\s:]+:(\d+)/")
    tls = child.wait_for_log(r"listening on https://[^\s:]+:(\d+)/")
    if layout.proxy_master:  # the master logs first, then forks: wait for its workers too
        child.wait_for(lambda: len(child.group()) >= 1 + layout.workers, f"{layout.workers} worker(s)")
    return Server(child, int(match[1]), int(tls[1]))


def proxy_server_keys(source: Path) -> frozenset[str]:
    """The [server] keys the proxy in ``source`` declares (``workers``, ``http_engine``...).

    Asked in a child process, so the harness never imports the proxy it measures.
    """
    code = ("import dataclasses, proxy.config as c; "
            "print(' '.join(f.name for f in dataclasses.fields(c.ServerSettings)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(source)})
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise StartError(f"cannot read the proxy's [server] settings from {source}/proxy/config.py: {why}")
    return frozenset(done.stdout.split())


def start(procs: Processes, layout: configs.Layout, nginx: str, source: Path, engines: tuple[str, ...]) -> Stack:
    gunicorn = start_gunicorn(procs, layout)
    servers = {NGINX: Server(start_nginx(procs, layout, nginx), layout.nginx_port, layout.nginx_tls_port)}
    servers.update((engine, start_proxy(procs, layout, source, engine)) for engine in engines)
    return Stack(layout, gunicorn, servers)


def sanity_check(stack: Stack, scenarios, tls: bool = False) -> None:
    """Every scenario's request is answered 200 on every server, with a body of the same length once
    decoded and the same Content-Encoding (a compressed scenario must be compressed by all), before
    anything is timed."""
    for path, headers in sorted({(s.path, s.headers) for s in scenarios}):
        lengths, codings = {}, {}
        for server in stack.servers:
            try:
                status, body, codings[server] = http_get(stack.url(server, path, tls), headers=headers)
            except OSError as exc:
                raise StartError(f"{label(server)} GET {path}: {exc}") from None
            if status != 200:
                raise StartError(f"{label(server)} GET {path}: status {status}")
            lengths[server] = len(gzip.decompress(body) if codings[server] == "gzip" else body)
        if len(set(codings.values())) > 1:
            sent = ", ".join(f"{label(server)} {coding}" for server, coding in codings.items())
            raise StartError(f"GET {path}: the servers sent different Content-Encodings ({sent})")
        if len(set(lengths.values())) > 1:
            sent = ", ".join(f"{label(server)} {n}" for server, n in lengths.items())
            raise StartError(f"GET {path}: the servers sent bodies of different lengths ({sent} bytes)")
