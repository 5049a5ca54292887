"""The real app tier (``appserver``: Gunicorn + demo_app) behind the real proxy, on 127.0.0.1.

Ports are chosen at run time, readiness is polled, and each test stops only
the processes it started.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from appserver.cli import check_bind
from appserver.config import ConfigError
from tests.h2client import H2Client
from tests.helpers import ROOT, Process, ProxyProcess, accepting, free_port, wait_until

STATIC = ROOT / "demo_app" / "static"


class AppServerProcess(Process):
    """``python -m appserver`` (or any argv ending in a bind) on a free port of 127.0.0.1."""

    def __init__(self, *args: str, argv: list[str] | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        base = argv or [sys.executable, "-m", "appserver"]
        super().__init__([*base, "--bind", self.address, *args])
        wait_until(lambda: accepting(self.port) or self.proc.poll() is not None, what="the app server to listen")
        if self.proc.poll() is not None:
            raise RuntimeError(f"app server exited:\n{self.output()}")
        self.url = f"http://{self.address}"

    def access_lines(self) -> list[str]:
        return list(self.stdout)


class StackProcess(Process):
    """``python -m appserver.stack`` (what ``make up`` runs) on ports chosen at run time."""

    def __init__(self, config: Path | None = None) -> None:
        """``config``: a proxy.toml other than the repository's."""
        self.app_port, self.proxy_port = free_port(), free_port()
        super().__init__([sys.executable, "-m", "appserver.stack", "--app-port", str(self.app_port),
                          "--proxy-port", str(self.proxy_port), *(["--config", str(config)] if config else [])])
        self.wait_for_line(rf"twotier is up: http://127\.0\.0\.1:{self.proxy_port}/", timeout=60, stream="stdout")
        self.url = f"http://127.0.0.1:{self.proxy_port}"


def children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (Linux /proc)."""
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except FileNotFoundError:
            continue
        for child in map(int, text.split()):
            found |= {child} | children(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def port_free(port: int) -> bool:
    """Nothing listens there: a new server could listen (servers set SO_REUSEADDR, so the
    TIME_WAIT left by connections the stopped server closed does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError:
            return False
    return not accepting(port)


def parse_server_timing(value: str) -> dict[str, dict[str, str]]:
    entries = {}
    for part in re.findall(r'(?:[^,"]|"[^"]*")+', value):
        name, *params = [p.strip() for p in part.split(";")]
        entries[name] = dict(p.split("=", 1) for p in params)
    return entries


@pytest.fixture(scope="module")
def appserver():
    server = AppServerProcess("--workers", "2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, appserver):
    folder = tmp_path_factory.mktemp("apptier")
    proxy = ProxyProcess(folder, f"""
        [server]
        listen = ["127.0.0.1:0"]
        h2c = true
        [upstreams.app]
        servers = ["{appserver.address}"]
        [[routes]]
        prefix = "/static/"
        static = "{STATIC}"
        [[routes]]
        prefix = "/api/"
        upstream = "app"
        [[routes]]
        prefix = "/"
        static = "{STATIC}"
        upstream = "app"
    """)
    yield proxy
    proxy.stop()


def test_whoami_sees_the_client_not_the_spoofed_headers(stack, appserver):
    response = requests.get(stack.url + "/api/whoami", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6", "Forwarded": "for=6.6.6.6;proto=https",
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.test", "X-Request-ID": "e2e-rid-1"})
    assert response.status_code == 200
    seen = response.json()
    assert seen["remote_addr"] == "127.0.0.1"
    assert seen["scheme"] == "http"
    assert seen["host"] == f"127.0.0.1:{stack.port}"
    assert seen["url"] == f"http://127.0.0.1:{stack.port}/api/whoami"
    assert seen["via"] == "1.1 twotier"
    assert "6.6.6.6" not in str(seen["headers"]) and "evil.test" not in str(seen["headers"])
    assert seen["worker_pid"] in children(appserver.pid)
    # The request id, end to end: client -> proxy -> app -> response, and in both access logs.
    assert seen["request_id"] == response.headers["X-Request-ID"] == "e2e-rid-1"
    wait_until(lambda: any("rid=e2e-rid-1" in line for line in stack.access_lines()), 5, what="proxy log")
    line = wait_until(lambda: next((ln for ln in appserver.access_lines() if "rid=e2e-rid-1" in ln), None), 5,
                      what="gunicorn access log")
    assert '"GET /api/whoami HTTP/1.1" 200' in line and f"pid=<{seen['worker_pid']}>" in line


def test_a_request_id_is_made_by_the_proxy_when_absent(stack):
    response = requests.get(stack.url + "/api/whoami")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    assert response.json()["request_id"] == response.headers["X-Request-ID"]


def test_server_timing_from_both_tiers(stack):
    with requests.Session() as session:
        first = session.get(stack.url + "/api/whoami")
        second = session.get(stack.url + "/api/whoami")
    for response in (first, second):
        timing = parse_server_timing(response.headers["Server-Timing"])
        assert {"app", "proxy", "upstream-connect", "upstream-ttfb"} <= set(timing)
        assert timing["proxy"]["desc"] == '"proxy /api/"'
        # The app's time is part of the wait the proxy measured for the app tier's first byte.
        assert 0 < float(timing["app"]["dur"]) <= float(timing["upstream-ttfb"]["dur"])
        assert float(timing["upstream-ttfb"]["dur"]) <= float(timing["proxy"]["dur"])


def test_static_files_never_reach_the_app_tier(stack, appserver):
    for path, kind in [("/", "text/html"), ("/static/app.css", "text/css"), ("/static/app.js", "javascript"),
                       ("/static/tiers.svg", "image/svg+xml")]:
        response = requests.get(stack.url + path)
        assert response.status_code == 200, path
        assert kind in response.headers["Content-Type"], path
        assert response.headers["Server-Timing"].startswith('proxy;dur='), path
        assert "static" in response.headers["Server-Timing"] and "app;" not in response.headers["Server-Timing"]
        rid = response.headers["X-Request-ID"]
        assert not any(rid in line for line in appserver.access_lines()), path
    assert requests.get(stack.url + "/").content == (STATIC / "index.html").read_bytes()


def test_healthz_through_the_proxy_and_directly(stack, appserver):
    for url in (stack.url + "/healthz", appserver.url + "/healthz"):
        response = requests.get(url)
        assert (response.status_code, response.text) == (200, "ok\n"), url
        assert response.headers["Cache-Control"] == "no-store"
        assert "app;dur=" in response.headers["Server-Timing"]
    assert requests.post(appserver.url + "/healthz").status_code == 405


def test_upload_is_buffered_and_arrives_whole(stack):
    data = os.urandom(300_000)
    response = requests.post(stack.url + "/api/upload", data={"note": "hi"},
                             files={"file": ("blob.bin", data, "application/octet-stream")})
    assert response.status_code == 200
    body = response.json()
    assert body["fields"] == {"note": "hi"}
    assert body["files"][0]["size"] == len(data)
    assert body["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_stream_is_relayed_chunk_by_chunk(stack):
    received = []
    with requests.get(stack.url + "/api/stream?chunks=4&interval=0.3", stream=True) as response:
        assert response.status_code == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        for line in response.iter_lines():
            received.append((time.time(), line.decode()))
    assert [text.split(" from ")[0] for _, text in received] == [f"chunk {i} of 4" for i in range(1, 5)]
    produced_last = float(received[-1][1].rsplit(" at ", 1)[1])
    # The first chunk reached the client before the app had written the last one: nothing was held back.
    assert received[0][0] < produced_last


def test_stream_is_relayed_chunk_by_chunk_over_http2(stack):
    """The same over HTTP/2 (h2c with prior knowledge on this listener): each chunk goes on as it comes."""
    with H2Client(stack.port, tls=False, timeout=15) as client:
        stream_id = client.start("GET", "/api/stream?chunks=4&interval=0.3")
        response = client.responses[stream_id]
        client.wait(lambda: b"\n" in response.body)
        first_seen = time.time()
        assert not response.ended
        client.response(stream_id)
    assert response.status == 200
    lines = bytes(response.body).decode().splitlines()
    assert [text.split(" from ")[0] for text in lines] == [f"chunk {i} of 4" for i in range(1, 5)]
    assert first_seen < float(lines[-1].rsplit(" at ", 1)[1])


def test_an_app_500_passes_through_unchanged(stack, appserver):
    via_proxy = requests.get(stack.url + "/api/error")
    direct = requests.get(appserver.url + "/api/error")
    assert via_proxy.status_code == direct.status_code == 500
    assert via_proxy.content == direct.content
    assert via_proxy.json()["raised_by"] == "demo_app"
    assert via_proxy.headers["Content-Type"] == direct.headers["Content-Type"] == "application/json"


def test_sigterm_lets_in_flight_requests_finish():
    server = AppServerProcess("--workers", "1")
    try:
        with requests.get(server.url + "/api/stream?chunks=3&interval=0.5", stream=True, timeout=10) as response:
            lines = response.iter_lines()
            assert next(lines).startswith(b"chunk 1 of 3")  # the request is in a worker now
            server.signal(signal.SIGTERM)
            rest = [line.split(b" from ")[0] for line in lines]
        assert rest == [b"chunk 2 of 3", b"chunk 3 of 3"]
        assert server.proc.wait(15) == 0
    finally:
        server.stop()


def test_plain_gunicorn_with_gunicorn_conf_gets_the_same_tier():
    server = AppServerProcess("--workers", "1", "demo_app.wsgi:app",
                              argv=[sys.executable, "-m", "gunicorn", "-c", "appserver/gunicorn_conf.py"])
    try:
        response = requests.get(server.url + "/api/whoami", headers={"X-Request-ID": "conf-rid"})
        assert response.status_code == 200
        assert "app;dur=" in response.headers["Server-Timing"]
        assert response.headers["X-Request-ID"] == "conf-rid"
        assert requests.get(server.url + "/healthz").text == "ok\n"
        wait_until(lambda: any("rid=conf-rid" in line for line in server.stdout), 5, what="access log line")
    finally:
        server.stop()


def test_a_bad_appserver_toml_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "appserver.toml"
    bad.write_text("workers = -1\n")
    result = subprocess.run([sys.executable, "-m", "appserver", "--config", str(bad)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"appserver: {bad}: workers: expected a whole number >= 1, got -1\n"


def test_make_up_launcher_stops_both_tiers_on_ctrl_c():
    launcher = StackProcess()
    try:
        page = requests.get(launcher.url + "/")
        assert page.status_code == 200 and "twotier" in page.text
        seen = requests.get(launcher.url + "/api/whoami").json()
        # The shipped proxy.toml has [status] for loopback clients: the proxy answers, not Flask's 404.
        status = requests.get(launcher.url + "/_proxy/status")
        assert status.headers["Content-Type"].startswith("application/json")
        assert status.json()["upstreams"]["app"]["servers"][0]["address"] == f"127.0.0.1:{launcher.app_port}"
        assert 'proxy_requests_total{route="/api/",status="200"}' in requests.get(launcher.url + "/_proxy/metrics").text
        started = children(launcher.pid)
        assert seen["worker_pid"] in started
        assert len(started) >= 4  # the proxy, the gunicorn master and its workers

        launcher.signal(signal.SIGINT)  # what the terminal sends on Ctrl-C: to the launcher's process group
        assert launcher.proc.wait(30) == 0
        wait_until(lambda: not any(alive(pid) for pid in started), 10, what="every tier process to exit")
        assert port_free(launcher.app_port) and port_free(launcher.proxy_port)
        assert "==> stopped" in launcher.output()
    finally:
        launcher.stop()


def test_make_up_launcher_reports_a_broken_config_in_one_line(tmp_path):
    bad = tmp_path / "appserver.toml"
    bad.write_text("wokers = 2\n")
    result = subprocess.run([sys.executable, "-m", "appserver.stack", "--app-config", str(bad),
                             "--app-port", str(free_port()), "--proxy-port", str(free_port())],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"cannot start: {bad}: wokers: unknown key (expected one of: "
                                                  "app, bind, workers, worker_class, threads, keepalive, timeout, "
                                                  "graceful_timeout, forwarded_allow_ips, access_log, error_log, "
                                                  "log_level)"]


def test_what_the_proxy_accepts_gunicorn_accepts_too(stack):
    # At the proxy's default limits: 100 header fields (the proxy adds its own), a 6 kB request line,
    # a 12 kB header field. Gunicorn's own defaults would answer 400 to each.
    many = {f"X-Extra-{i}": "1" for i in range(95)}  # + Host, User-Agent, Accept, Accept-Encoding, Connection = 100
    assert requests.get(stack.url + "/api/whoami", headers=many).status_code == 200
    assert requests.get(stack.url + "/api/whoami?q=" + "a" * 6000).status_code == 200
    seen = requests.get(stack.url + "/api/whoami", headers={"X-Big": "b" * 12000})
    assert seen.status_code == 200 and len(seen.json()["headers"]["X-Big"]) == 12000


def test_make_up_launcher_stops_everything_when_a_tier_dies(tmp_path):
    # An app whose module exists but whose callable does not: Gunicorn binds, its workers fail to
    # boot, and the master gives up. The launcher must notice, stop the proxy, and free both ports.
    config = tmp_path / "appserver.toml"
    config.write_text('app = "demo_app.wsgi:no_such_app"\nworkers = 1\n')
    app_port, proxy_port = free_port(), free_port()
    launcher = Process([sys.executable, "-m", "appserver.stack", "--app-config", str(config),
                        "--app-port", str(app_port), "--proxy-port", str(proxy_port)])
    try:
        assert launcher.proc.wait(60) == 1
        assert re.search(r"the app tier \(appserver\) (exited with status \d+; stopping|did not come up)",
                         launcher.output())
        # A leftover proxy would still listen on its port; a leftover Gunicorn worker would still
        # hold the inherited listening socket of the app's.
        assert port_free(app_port) and port_free(proxy_port)
    finally:
        launcher.stop()


def test_an_address_in_use_is_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: address already in use"):
            check_bind((f"127.0.0.1:{port}",))
    check_bind((f"127.0.0.1:{port}", "unix:/tmp/nowhere.sock"))  # free again; unix sockets are Gunicorn's


def test_make_up_launcher_refuses_a_busy_port_in_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "appserver.stack", "--app-port", str(free_port()),
                                 "--proxy-port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"cannot start the web tier (proxy): cannot listen on 127.0.0.1:{port}: "
                                          "address already in use (is another server running there?)"]


def test_demo_websocket_echo_through_the_proxy(stack, appserver):
    """/ws/echo (Flask-Sock on gthread) through the proxy's tunnel: greeting, then echoes."""
    import asyncio
    import json

    import websockets

    async def talk():
        async with websockets.connect(f"ws://127.0.0.1:{stack.port}/ws/echo", open_timeout=10) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send("ping 1")
            echo = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return hello, echo
    hello, echo = asyncio.run(talk())
    assert hello["hello"] == "tunnel open" and hello["scheme"] == "http"
    assert echo["echo"] == "ping 1" and echo["worker_pid"] == hello["worker_pid"]
    assert echo["worker_pid"] in children(appserver.pid)
