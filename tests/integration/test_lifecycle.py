"""Running the proxy: command line, errors a user can hit, graceful stop, access log formats."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, proxy_config, wait_until


def run_proxy(*args, cwd=ROOT, timeout=20):
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_check_config_prints_a_summary():
    result = run_proxy("--config", "proxy.toml", "--check-config")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("configuration ok: ")
    assert "listen: 127.0.0.1:8080" in out
    assert "/api/" in out and "upstream app" in out
    assert "app: 127.0.0.1:8000" in out


def test_bad_config_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "proxy.toml"
    bad.write_text('[limits]\nmax_body_bytes = "huge"\n')
    for args in (("--config", str(bad)), ("--config", str(bad), "--check-config")):
        result = run_proxy(*args)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"{bad}: limits.max_body_bytes: expected a size" in result.stderr
        assert "Traceback" not in result.stderr


def test_missing_config_file(tmp_path):
    result = run_proxy("--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"proxy: {tmp_path / 'nope.toml'}: no such file"


def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "proxy.toml"
        config.write_text(f'[server]\nlisten = ["127.0.0.1:{port}"]\n')
        result = run_proxy("--config", str(config))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command, args", [
    ("proxy", [["--version"], ["--help"], ["--config", "proxy.toml", "--check-config"],
               ["--config", "no-such.toml", "--check-config"], ["explain", "GET", "/api/whoami", "-H", "X-Request-ID: same"]]),
    ("appserver", [["--version"], ["--help"], ["--config", "appserver.toml", "--check-config"],
                   ["--threads", "0"]]),
])
def test_python_dash_m_and_console_script_agree(command, args):
    """The installed console script and ``python -m`` run the same code: same output, same status."""
    script = Path(sys.executable).parent / command
    if not script.exists():
        pytest.skip(f"the {command} console script is not installed next to {sys.executable}")
    for arguments in args:
        by_module, by_script = (subprocess.run([*argv, *arguments], cwd=ROOT, capture_output=True, text=True,
                                               timeout=60)
                                for argv in ([sys.executable, "-m", command], [str(script)]))
        assert (by_script.returncode, by_script.stdout, by_script.stderr) == (
            by_module.returncode, by_module.stdout, by_module.stderr), arguments
        assert by_module.stdout or by_module.stderr, arguments


def test_sigterm_lets_in_flight_requests_finish(start_proxy, test_app_gunicorn):
    proxy = start_proxy(proxy_config(upstream=test_app_gunicorn.address, server="grace_period = 10.0", status=True))
    idle = socket.create_connection(("127.0.0.1", proxy.port))  # an idle keep-alive client
    late = socket.create_connection(("127.0.0.1", proxy.port))  # one that sends just after the stop began
    result = {}

    def slow_request():
        result["response"] = requests.get(proxy.url + "/slow?s=1.5")
    thread = threading.Thread(target=slow_request)
    thread.start()
    status_url = proxy.url + "/_proxy/status"
    wait_until(lambda: requests.get(status_url).json()["upstreams"]["app"]["servers"][0]["in_flight"] == 1,
               what="the slow request to reach the app")
    proxy.signal(signal.SIGTERM)
    proxy.wait_for_line(r"shutting down: 1 request\(s\) in flight")
    late.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = late.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer.lower()
    assert refused(proxy.port)  # new connections are refused while the in-flight one finishes
    idle.settimeout(5)
    assert idle.recv(1) == b""  # closed after a short linger
    late.close()
    thread.join(10)
    assert result["response"].status_code == 200 and result["response"].text == "slow"
    assert proxy.proc.wait(10) == 0
    assert any('"GET /slow?s=1.5 HTTP/1.1" 200' in line for line in proxy.access_lines())
    idle.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return False
    except OSError:
        return True


def test_json_access_log(start_proxy, tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "a.txt").write_text("a")
    proxy = start_proxy(proxy_config(static="www", log='format = "json"'))
    requests.get(proxy.url + "/a.txt", headers={"User-Agent": 'say "hi"', "X-Request-ID": "rid-1"})
    line = wait_until(lambda: next((x for x in proxy.access_lines() if x.startswith("{")), None),
                      what="an access line")
    record = json.loads(line)
    assert record["request"] == "GET /a.txt HTTP/1.1"
    assert record["status"] == 200 and record["body_bytes_sent"] == 1
    assert record["user_agent"] == 'say "hi"'
    assert record["request_id"] == "rid-1"
    assert record["handler"] == "static" and record["route"] == "/"


def test_access_log_to_file_and_off(start_proxy, tmp_path):
    (tmp_path / "www").mkdir()
    log = tmp_path / "access.log"
    proxy = start_proxy(proxy_config(static="www", log=f'access = "{log}"'))
    requests.get(proxy.url + "/missing")
    wait_until(lambda: log.exists() and '"GET /missing HTTP/1.1" 404' in log.read_text(), what="the log file line")
    assert proxy.access_lines() == []
    proxy.stop()

    # "off": no line anywhere, not on standard output and not in a file called "off".
    log.unlink()
    proxy = start_proxy(proxy_config(static="www", log='access = "off"'))
    for path in ("/missing", "/also-missing"):
        assert requests.get(proxy.url + path).status_code == 404
    assert proxy.stop() == 0  # the last lines are flushed on the way out
    assert proxy.access_lines() == [] and sorted(p.name for p in tmp_path.iterdir()) == ["proxy.toml", "www"]


def test_an_access_log_that_cannot_be_opened_is_one_line(tmp_path):
    config = tmp_path / "proxy.toml"
    config.write_text(f'[log]\naccess = "{tmp_path}/missing-folder/access.log"\n')
    result = run_proxy("--config", str(config))
    assert result.returncode == 1
    assert "log.access: cannot open" in result.stderr and "No such file or directory" in result.stderr
    assert result.stderr.count("\n") == 1


def test_requests_refused_for_their_head_keep_their_line_in_the_access_log(start_proxy, tmp_path):
    """nginx logs the request line, referer and user agent of a 400 or a 413 too; so does the proxy
    (the error log gets nothing for these: they are the client's mistakes)."""
    (tmp_path / "www").mkdir()
    proxy = start_proxy(proxy_config(static="www", limits='max_body_bytes = "1k"'))
    too_large = (b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nUser-Agent: big-sender\r\n"
                 b"Referer: http://x/form\r\n\r\n")
    climbing = b"GET /a/../../etc/passwd HTTP/1.1\r\nHost: x\r\nUser-Agent: climber\r\n\r\n"
    for raw, status in ((too_large, b"413"), (climbing, b"400")):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(raw)
            assert sock.recv(65536).startswith(b"HTTP/1.1 " + status)
    lines = wait_until(lambda: proxy.access_lines() if len(proxy.access_lines()) >= 2 else None,
                       what="two access lines")
    assert '"POST /upload HTTP/1.1" 413' in lines[0] and '"http://x/form" "big-sender"' in lines[0]
    assert '"GET /a/../../etc/passwd HTTP/1.1" 400' in lines[1] and '"climber"' in lines[1]
