"""The master and its workers: several processes, restarts, reloads under load, stops."""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import requests

from tests.helpers import Process, RecordingUpstream, raw_request, status_of, wait_until


def config(upstream: str, workers: int = 2, extra: str = "") -> str:
    return f"""
        [server]
        listen = ["127.0.0.1:0"]
        workers = {workers}
        {extra}
        [upstreams.app]
        servers = ["{upstream}"]
        [status]
        [[routes]]
        prefix = "/"
        upstream = "app"
    """


def worker_pids(proxy) -> set[int]:
    return {int(m[1]) for line in proxy.lines if (m := re.search(r"worker (\d+) \(generation", line))}


def live(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def serving_pids(proxy, count: int = 40) -> set[int]:
    pids = set()
    for _ in range(count):
        with requests.get(proxy.url + "/_proxy/status") as response:  # a new connection each time
            pids.add(response.json()["pid"])
    return pids


def start_workers(start_proxy, recording_upstream, workers: int = 2, extra: str = ""):
    """A proxy with ``workers`` workers in front of a recording upstream, once every worker is up."""
    proxy = start_proxy(config(recording_upstream().address, workers=workers, extra=extra))
    wait_until(lambda: len(worker_pids(proxy)) == workers, what=f"{workers} workers")
    return proxy


def test_workers_share_the_listening_socket(start_proxy, recording_upstream):
    proxy = start_workers(start_proxy, recording_upstream)
    workers = worker_pids(proxy)
    assert proxy.pid not in workers
    assert wait_until(lambda: serving_pids(proxy) == workers, what="both workers to answer")


def test_a_killed_worker_is_replaced(start_proxy, recording_upstream):
    proxy = start_workers(start_proxy, recording_upstream)
    victim = sorted(worker_pids(proxy))[0]
    os.kill(victim, signal.SIGKILL)
    proxy.wait_for_line(rf"worker {victim} died \(killed by SIGKILL\)")
    wait_until(lambda: len(worker_pids(proxy) - {victim}) == 2, what="a replacement worker")
    assert requests.get(proxy.url + "/x").status_code == 200


def test_sighup_with_an_invalid_file_keeps_serving(start_proxy, recording_upstream):
    upstream = recording_upstream()
    proxy = start_proxy(config(upstream.address, workers=1))
    wait_until(lambda: len(worker_pids(proxy)) == 1, what="the worker")
    good = proxy.config_path.read_text()
    proxy.config_path.write_text(good + "\n[limits]\nmax_body_bytes = \"lots\"\n")
    proxy.signal(signal.SIGHUP)
    proxy.wait_for_line(r"reload failed, still serving the previous configuration: .*limits\.max_body_bytes")
    assert requests.get(proxy.url + "/x").status_code == 200
    assert len(worker_pids(proxy)) == 1


def test_reload_under_load_loses_no_request(start_proxy, recording_upstream):
    proxy = start_workers(start_proxy, recording_upstream)
    first_generation = worker_pids(proxy)
    results: list = []
    stop = threading.Event()

    def client():
        while not stop.is_set() and len(results) < 20_000:
            try:
                # a new connection for every other request, so reloads meet both kinds
                with requests.Session() as session:
                    for _ in range(2):
                        results.append(session.get(proxy.url + "/load", timeout=10).status_code)
            except requests.RequestException as exc:
                results.append(f"{type(exc).__name__}: {exc}")
    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for generation in range(2, 5):
            wait_until(lambda g=generation: len(results) > 50 * g, what="traffic before the reload")
            proxy.signal(signal.SIGHUP)
            proxy.wait_for_line(rf"worker \d+ \(generation {generation}\) is accepting")
            wait_until(lambda g=generation: sum("reload complete" in line for line in proxy.lines) >= g - 1,
                       what="the old workers to be retired")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    counts = collections.Counter(results)
    assert counts == {200: len(results)}, counts
    wait_until(lambda: not any(live(pid) for pid in first_generation), what="the first workers to exit")


def test_reload_applies_the_new_configuration(start_proxy, recording_upstream):
    old = recording_upstream(lambda raw: b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nold")
    new = recording_upstream(lambda raw: b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew")
    proxy = start_proxy(config(old.address, workers=1))
    assert requests.get(proxy.url + "/").text == "old"
    proxy.config_path.write_text(proxy.config_path.read_text().replace(old.address, new.address))
    proxy.signal(signal.SIGHUP)
    proxy.wait_for_line("reload complete")
    assert wait_until(lambda: requests.get(proxy.url + "/").text == "new", what="the new upstream")


def test_sigquit_stops_at_once(start_proxy, recording_upstream):
    hang = threading.Event()

    def slow(raw):
        hang.wait(20)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    upstream = recording_upstream(slow)
    proxy = start_proxy(config(upstream.address, workers=1))
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: upstream.received, what="the request to reach the upstream")
    started = time.monotonic()
    proxy.signal(signal.SIGQUIT)
    assert proxy.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    sock.settimeout(5)
    assert sock.recv(100) == b""  # cut, not answered
    hang.set()
    sock.close()


def test_max_connections_answers_503(start_proxy, recording_upstream):
    upstream = recording_upstream()
    proxy = start_proxy(config(upstream.address, workers=1, extra="max_connections = 3"))
    held = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(3)]
    try:
        for sock in held:  # each is surely accepted once it has been answered
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(sock.recv(4096)) == 200
        reply = raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(reply) == 503 and b"retry-after: 1" in reply.lower()
        proxy.wait_for_line(r"max_connections \(3\) reached")
    finally:
        for sock in held:
            sock.close()
    assert wait_until(lambda: status_of(raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n"
                                                     b"Connection: close\r\n\r\n")) == 200,
                      what="room again")


def test_status_and_metrics_add_up_every_worker(start_proxy, recording_upstream):
    proxy = start_workers(start_proxy, recording_upstream)
    sent = 0

    def both_workers_served():
        nonlocal sent
        for _ in range(10):  # a new connection each time, so both workers take some
            with requests.get(proxy.url + "/count-me") as response:
                assert response.status_code == 200
            sent += 1
        workers = requests.get(proxy.url + "/_proxy/status").json()["workers"]
        return len(workers) == 2 and all(w["requests"] > 0 for w in workers)
    wait_until(both_workers_served, timeout=30, what="both workers to serve requests")

    # Other workers' numbers are at most one publish interval (1 s) old: poll.
    def totals():
        text = requests.get(proxy.url + "/_proxy/metrics").text
        status = requests.get(proxy.url + "/_proxy/status").json()
        return (f'proxy_requests_total{{route="/",status="200"}} {sent}' in text and "proxy_workers 2" in text
                and status["upstreams"]["app"]["servers"][0]["requests"] == sent)
    wait_until(totals, timeout=10, what="the metrics of both workers to add up")


def test_the_pid_file_and_the_status_page_name_the_master(start_proxy, recording_upstream, tmp_path):
    # Relative to the config file's folder (tmp_path), although the proxy runs in the repository's.
    proxy = start_workers(start_proxy, recording_upstream, extra='pid_file = "proxy.pid"')
    pid_file = tmp_path / "proxy.pid"
    assert pid_file.read_text() == f"{proxy.pid}\n"
    status = requests.get(proxy.url + "/_proxy/status").json()
    assert status["master_pid"] == proxy.pid and status["pid"] in worker_pids(proxy)
    assert proxy.stop() == 0
    assert not pid_file.exists()


def test_a_pid_file_that_cannot_be_written_is_one_line(tmp_path):
    path = tmp_path / "proxy.toml"
    path.write_text('[server]\nlisten = ["127.0.0.1:0"]\npid_file = "no-such-folder/proxy.pid"\n')
    result = subprocess.run([sys.executable, "-m", "proxy", "--config", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.endswith(f"proxy: {path}: server.pid_file: cannot write {tmp_path}/no-such-folder/proxy.pid: "
                                  "No such file or directory\n")


def metric(proxy, sample: str) -> float | None:
    for line in requests.get(proxy.url + "/_proxy/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_counters_and_start_time_survive_a_reload(start_proxy, recording_upstream):
    proxy = start_workers(start_proxy, recording_upstream)
    first_generation = worker_pids(proxy)
    for _ in range(30):
        with requests.get(proxy.url + "/count-me") as response:  # a new connection each time: both workers
            assert response.status_code == 200
    # A worker's view reaches the board within a second. When each worker has answered with the full count
    # (its own live view plus the other's published one), the views the master will fold are complete.
    complete: set[int] = set()

    def published():
        with requests.get(proxy.url + "/_proxy/status") as response:
            status = response.json()
        if status["upstreams"]["app"]["servers"][0]["requests"] == 30:
            complete.add(status["pid"])
        return complete == first_generation
    wait_until(published, what="both workers' counts on the board")
    served = 'proxy_requests_total{route="/",status="200"}'
    assert metric(proxy, served) == 30
    before = requests.get(proxy.url + "/_proxy/status").json()

    proxy.signal(signal.SIGHUP)
    for pid in first_generation:
        proxy.wait_for_line(rf"worker {pid} exited")
    # The new workers have counted nothing yet; the master still holds what the old ones did.
    assert metric(proxy, served) == 30
    after = requests.get(proxy.url + "/_proxy/status").json()
    assert after["started"] == before["started"] and after["uptime_seconds"] > before["uptime_seconds"]
    assert not {w["pid"] for w in after["workers"]} & first_generation
    assert after["upstreams"]["app"]["servers"][0]["requests"] == 30
    assert after["master_pid"] == proxy.pid
    assert requests.get(proxy.url + "/count-me").status_code == 200
    assert wait_until(lambda: metric(proxy, served) == 31, what="the new workers' count on top")


def test_sigusr1_reopens_the_log_files_after_rotation(tmp_path):
    """logrotate's way: rename the files, then SIGUSR1 to the master (nginx's signal for it)."""
    upstream = RecordingUpstream()
    config_path = tmp_path / "proxy.toml"
    config_path.write_text(config(upstream.address, workers=2, extra='pid_file = "proxy.pid"').replace(
        "[status]", '[log]\naccess = "access.log"\nerror = "error.log"\n[status]'))
    proxy = Process([sys.executable, "-m", "proxy", "--config", str(config_path)])
    access, error = tmp_path / "access.log", tmp_path / "error.log"  # relative to the config file's folder
    try:
        wait_until(lambda: error.exists() and len(re.findall(r"is accepting", error.read_text())) == 2,
                   what="two workers, in error.log")
        workers = {int(pid) for pid in re.findall(r"worker (\d+) \(generation", error.read_text())}
        url = "http://" + re.search(r"listening on http://(\S+)/", error.read_text())[1]
        requests.get(url + "/before")
        wait_until(lambda: "/before" in access.read_text(), what="the first access line")
        access.rename(tmp_path / "access.log.1")
        error.rename(tmp_path / "error.log.1")

        os.kill(int((tmp_path / "proxy.pid").read_text()), signal.SIGUSR1)
        reopened = [rf"master {proxy.pid}: log files reopened \(SIGUSR1\)",
                    *(rf"worker {pid}: log files reopened \(SIGUSR1\)" for pid in workers)]
        wait_until(lambda: error.exists() and all(re.search(p, error.read_text()) for p in reopened),
                   what="the master and both workers to reopen, in the new error.log")
        for _ in range(10):  # a new connection each time: both workers
            assert requests.get(url + "/after").status_code == 200
        wait_until(lambda: access.exists() and access.read_text().count("/after") == 10,
                   what="every new line in the new access.log")
        assert "/after" not in (tmp_path / "access.log.1").read_text()
        assert "reopened" not in (tmp_path / "error.log.1").read_text()
        assert proxy.proc.poll() is None and all(live(pid) for pid in workers)
    finally:
        assert proxy.stop() == 0
        upstream.close()
