"""Unix sockets on both sides of the proxy, against real sockets: Gunicorn (and appserver) bound to
``unix:/path`` as an upstream, the proxy listening on ``unix:/path``, with several workers, reloads,
health checks and the status page."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest
import requests

from tests.helpers import (ROOT, GunicornProcess, Process, accepting, raw_request, status_of, wait_until)

GET_ECHO = b"GET /echo HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n"


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


def proxy_toml(listen: str, upstream: str, extra: str = "", workers: int = 1) -> str:
    return f"""
        [server]
        listen = {listen}
        workers = {workers}
        [upstreams.app]
        servers = ["{upstream}"]
        {extra}
        [status]
        allow = ["127.0.0.1/32", "unix:"]
        [[routes]]
        prefix = "/"
        upstream = "app"
    """


def status(target) -> dict:
    response = raw_request(target, b"GET /_proxy/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200, response[:200]
    return json.loads(body_of(response))


def server_state(target) -> dict:
    [group] = status(target)["upstreams"].values()
    [server] = group["servers"]
    return server


@pytest.fixture
def unix_gunicorn(tmp_path):
    """Gunicorn's threaded worker on a unix socket: it keeps connections alive, as the sync one does not."""
    gunicorn = GunicornProcess("tests.apps.basic:app", "--threads", "4", "--keep-alive", "75",
                               worker_class="gthread", unix=str(tmp_path / "app.sock"))
    yield gunicorn
    gunicorn.stop()


def test_a_gunicorn_on_a_unix_socket_is_an_upstream(start_proxy, unix_gunicorn):
    proxy = start_proxy(proxy_toml('["127.0.0.1:0"]', unix_gunicorn.address))
    response = requests.get(proxy.url + "/echo", headers={"Host": "app.example.test"})
    assert response.status_code == 200
    seen = response.json()
    # The app gets what it gets over TCP: the client's address in X-Forwarded-For, the Host it asked for.
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["host"] == "app.example.test"
    assert seen["pid"] != proxy.pid
    # Kept alive and reused like a TCP connection; the status page names the server as written.
    for _ in range(3):
        assert requests.get(proxy.url + "/echo").status_code == 200
    server = server_state(proxy.port)
    assert server["address"] == unix_gunicorn.address
    assert server["state"] == "up" and server["requests"] >= 4 and server["connects"] == 1, server
    assert f"uaddr={unix_gunicorn.address}" in proxy.access_lines()[0]


def test_health_checks_reach_a_unix_socket_server(start_proxy, tmp_path):
    path = tmp_path / "app.sock"
    gunicorn = GunicornProcess("tests.apps.basic:app", unix=str(path))
    try:
        proxy = start_proxy(proxy_toml('["127.0.0.1:0"]', gunicorn.address, extra="""
            [upstreams.app.health]
            path = "/healthz"
            interval = 0.2
            healthy_threshold = 1
            unhealthy_threshold = 1
        """))
        wait_until(lambda: server_state(proxy.port)["last_check_seconds_ago"] is not None, what="a probe")
        assert server_state(proxy.port)["state"] == "up"
    finally:
        gunicorn.stop()
    down = wait_until(lambda: (s := server_state(proxy.port))["state"] == "down" and s, what="the probe to fail")
    assert "No such file or directory" in down["last_error"] or "refused" in down["last_error"], down
    assert status_of(raw_request(proxy.port, GET_ECHO)) == 503
    gunicorn = GunicornProcess("tests.apps.basic:app", unix=str(path))  # back on the same path
    try:
        wait_until(lambda: server_state(proxy.port)["state"] == "up", what="the server to come back")
        assert status_of(raw_request(proxy.port, GET_ECHO)) == 200
    finally:
        gunicorn.stop()


def test_the_proxy_serves_on_a_unix_socket(start_proxy, unix_gunicorn, tmp_path):
    path = str(tmp_path / "proxy.sock")
    proxy = start_proxy(proxy_toml(f'["127.0.0.1:0", "unix:{path}"]', unix_gunicorn.address, workers=2))
    proxy.wait_for_line(rf"listening on unix:{path} \(http\)")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert stat.S_ISSOCK(os.stat(path).st_mode) and mode == 0o666, oct(mode)  # nginx's default
    response = raw_request(path, GET_ECHO)
    assert status_of(response) == 200
    seen = json.loads(body_of(response))
    # A unix socket's client has no address: "unix:", as nginx's $remote_addr; RFC 7239 says "unknown".
    assert seen["headers"]["x-forwarded-for"] == "unix:"
    assert seen["headers"]["forwarded"] == "for=unknown;proto=http;host=app.example.test"
    # The access line is written once the answer went out; the client may read the answer first.
    assert wait_until(lambda: proxy.access_lines(), what="the access line")[-1].startswith("unix: - - ")
    # [status] allow = ["unix:"] lets local clients of the socket read the status page; both workers serve it.
    # Which worker accepts is the kernel's choice, and on a busy machine one may take many in a row:
    # ask until both have answered (each request a new connection), bounded by wait_until's timeout.
    pids: set[int] = set()
    wait_until(lambda: pids.add(status(path)["pid"]) or len(pids) == 2, what="both workers to answer")
    assert proxy.stop() == 0
    assert not os.path.exists(path)  # the master removes its socket file as it ends


def test_status_page_hidden_from_unix_clients_unless_allowed(start_proxy, unix_gunicorn, tmp_path):
    path = str(tmp_path / "proxy.sock")
    proxy = start_proxy(proxy_toml(f'["127.0.0.1:0", "unix:{path}"]', unix_gunicorn.address).replace(
        'allow = ["127.0.0.1/32", "unix:"]', 'allow = ["127.0.0.1/32"]'))
    wait_until(lambda: accepting(path), what="the unix listener")
    assert status_of(raw_request(path, b"GET /_proxy/status HTTP/1.1\r\nHost: x\r\n\r\n",
                                 read_until_close=False)) == 404
    assert status(proxy.port)["server"] == "twotier"


def test_a_unix_listener_table_sets_its_mode(start_proxy, unix_gunicorn, tmp_path):
    path = str(tmp_path / "proxy.sock")
    start_proxy(proxy_toml(f'["127.0.0.1:0", {{address = "unix:{path}", mode = "0660"}}]', unix_gunicorn.address))
    wait_until(lambda: accepting(path), what="the unix listener")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660


def test_a_stale_socket_file_is_replaced(start_proxy, unix_gunicorn, tmp_path):
    path = str(tmp_path / "proxy.sock")
    with socket.socket(socket.AF_UNIX) as dead:  # what a killed proxy leaves: a socket file, nobody listening
        dead.bind(path)
    proxy = start_proxy(proxy_toml(f'["127.0.0.1:0", "unix:{path}"]', unix_gunicorn.address))
    proxy.wait_for_line(r"removed the socket file a stopped process left there")
    assert status_of(raw_request(path, GET_ECHO)) == 200


def run_proxy(config_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", "--config", str(config_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_a_socket_someone_listens_on_or_a_plain_file_is_one_line(tmp_path):
    path = tmp_path / "busy.sock"
    config = tmp_path / "proxy.toml"
    config.write_text(f'[server]\nlisten = ["unix:{path}"]\n')
    with socket.socket(socket.AF_UNIX) as holder:
        holder.bind(str(path))
        holder.listen()
        result = run_proxy(config)
        assert result.returncode == 1
        assert result.stderr.strip() == (f"proxy: cannot listen on unix:{path}: another process listens on it "
                                         "(stop it, or change [server].listen)")
        assert path.exists()  # left alone
    path.unlink()
    path.write_text("not a socket")
    result = run_proxy(config)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("a file that is not a socket is there (remove it, or choose another path)")
    assert path.read_text() == "not a socket"
    config.write_text(f'[server]\nlisten = ["unix:{tmp_path}/no/such/folder.sock"]\n')
    result = run_proxy(config)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("no such file or directory (the folder does not exist)")


def test_reload_adds_and_removes_unix_listeners(start_proxy, unix_gunicorn, tmp_path):
    first, second = str(tmp_path / "first.sock"), str(tmp_path / "second.sock")
    proxy = start_proxy(proxy_toml(f'["127.0.0.1:0", "unix:{first}"]', unix_gunicorn.address, workers=2))
    wait_until(lambda: accepting(first), what="the first unix listener")
    text = proxy.config_path.read_text()
    proxy.config_path.write_text(text.replace(f'"unix:{first}"', f'{{address = "unix:{second}", mode = 0o600}}'))
    proxy.signal(signal.SIGHUP)
    proxy.wait_for_line("reload complete")
    wait_until(lambda: not os.path.exists(first), what="the dropped socket file to go")
    assert stat.S_IMODE(os.stat(second).st_mode) == 0o600
    assert status_of(raw_request(second, GET_ECHO)) == 200
    assert status_of(raw_request(proxy.port, GET_ECHO)) == 200  # the TCP listener was kept
    # A kept unix socket takes a new mode with a reload.
    proxy.config_path.write_text(proxy.config_path.read_text().replace("mode = 0o600", "mode = 0o640"))
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: sum("reload complete" in line for line in proxy.lines) == 2, what="the second reload")
    assert stat.S_IMODE(os.stat(second).st_mode) == 0o640
    assert status_of(raw_request(second, GET_ECHO)) == 200


class AppserverProcess(Process):
    """``appserver --bind unix:PATH`` serving the test app."""

    def __init__(self, path: str) -> None:
        super().__init__([sys.executable, "-m", "appserver", "--bind", f"unix:{path}", "--workers", "1",
                          "tests.apps.basic:app"])
        wait_until(lambda: accepting(path) or self.proc.poll() is not None, what="appserver on its unix socket")


def test_appserver_binds_a_unix_socket_the_proxy_forwards_to(start_proxy, tmp_path):
    path = str(tmp_path / "app.sock")
    app = AppserverProcess(path)
    try:
        assert app.proc.poll() is None, app.output()
        proxy = start_proxy(proxy_toml('["127.0.0.1:0"]', f"unix:{path}"))
        response = requests.get(proxy.url + "/echo")
        assert response.status_code == 200 and response.json()["pid"] != app.pid
        # A second appserver on the same socket is refused in one line; the first keeps it.
        second = subprocess.run([sys.executable, "-m", "appserver", "--bind", f"unix:{path}", "tests.apps.basic:app"],
                                cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert second.stderr.strip() == (f"appserver: cannot listen on unix:{path}: another process listens on it "
                                         "(is another server running there?)")
        assert requests.get(proxy.url + "/echo").status_code == 200
    finally:
        app.stop(sig=signal.SIGTERM)
