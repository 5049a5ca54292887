"""Several real Gunicorn servers behind the proxy: failover, retries, health checks, status pages."""

from __future__ import annotations

import collections
import json
import re
import signal
import threading
import uuid

import pytest
import requests

from tests.helpers import GunicornProcess, free_port, stop_all, wait_until

APP = "tests.apps.basic:app"


def gunicorn(name: str, tmp_path, port: int | None = None) -> GunicornProcess:
    env = {"TEST_SERVER_NAME": name, "TEST_COUNT_DIR": str(tmp_path)}
    return GunicornProcess(APP, "--threads", "4", "--keep-alive", "75", workers=2, worker_class="gthread",
                           env=env, port=port)


@pytest.fixture
def servers(tmp_path):
    started = [gunicorn(name, tmp_path) for name in ("a", "b", "c")]
    yield started
    stop_all(started)


def proxy_config(addresses, extra="", health=""):
    servers = ", ".join(f'"{a}"' for a in addresses)
    defaults = "\n".join(line for line in ("max_fails = 1", "fail_timeout = 30.0")
                         if line.split(" =")[0] not in extra)
    return f"""
        [server]
        listen = ["127.0.0.1:0"]
        [upstreams.app]
        servers = [{servers}]
        {defaults}
        {extra}
        {health}
        [status]
        [[routes]]
        prefix = "/"
        upstream = "app"
    """


def hammer(url, method, count, threads, results, make_body=None):
    """Bounded load: ``threads`` sessions sending ``count`` requests each; statuses into ``results``."""
    def worker():
        with requests.Session() as session:
            for _ in range(count):
                body = make_body() if make_body else None
                try:
                    status = session.request(method, url, data=body, timeout=10).status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                results.append((status, body))
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    return pool


def test_round_robin_spreads_over_all_servers(start_proxy, servers):
    proxy = start_proxy(proxy_config([s.address for s in servers]))
    with requests.Session() as session:
        names = collections.Counter(session.get(proxy.url + "/echo").json()["name"] for _ in range(60))
    assert names == {"a": 20, "b": 20, "c": 20}


def test_sigkill_under_load_loses_no_get(start_proxy, servers):
    proxy = start_proxy(proxy_config([s.address for s in servers]))
    results: list = []
    pool = hammer(proxy.url + "/echo", "GET", 150, 6, results)
    wait_until(lambda: len(results) > 200, what="load to be under way")
    servers[1].signal(signal.SIGKILL)  # master and workers at once, mid-load
    for thread in pool:
        thread.join(60)
    statuses = collections.Counter(status for status, _ in results)
    assert statuses == {200: 900}, statuses
    wait_until(lambda: any("127.0.0.1:%d down" % servers[1].port in line for line in proxy.lines),
               what="the down line")
    assert sum(f"{servers[1].address} down" in line for line in proxy.lines) == 1


def test_posts_are_never_sent_twice(start_proxy, servers, tmp_path):
    proxy = start_proxy(proxy_config([s.address for s in servers]))
    results: list = []
    pool = hammer(proxy.url + "/count", "POST", 100, 6, results, make_body=lambda: uuid.uuid4().hex.encode())
    wait_until(lambda: len(results) > 150, what="load to be under way")
    servers[0].signal(signal.SIGKILL)
    for thread in pool:
        thread.join(60)
    recorded = collections.Counter()
    for path in tmp_path.glob("*.ids"):
        recorded.update(line for line in path.read_bytes().split(b"\n") if line)
    assert recorded, "the app recorded nothing"
    assert max(recorded.values()) == 1, "a POST reached the app servers twice"
    for status, body in results:
        if status == 200:
            assert recorded[body] == 1
    assert len(results) == 600
    ok = sum(1 for status, _ in results if status == 200)
    assert ok >= 590, collections.Counter(s for s, _ in results)  # at most the few in flight on the killed server


@pytest.mark.parametrize("unhealthy_threshold, taken_out, back", [
    (1, r"down: ", r"up: \d+ good health checks$"),
    # Out of reach: only a refused request takes b out, resting it for fail_timeout (60 s); the probes end that.
    (1000, r"down: .*resting 60s", r"up: \d+ good health checks end its rest"),
], ids=["taken-out-by-active-checks", "rested-by-passive-checks"])
def test_restarted_server_comes_back_through_active_checks(start_proxy, tmp_path, unhealthy_threshold, taken_out,
                                                            back):
    a = gunicorn("a", tmp_path)
    b = gunicorn("b", tmp_path)
    try:
        health = "[upstreams.app.health]\npath = \"/healthz\"\ninterval = 0.2\ntimeout = 0.5\n" \
                 f"healthy_threshold = 2\nunhealthy_threshold = {unhealthy_threshold}"
        proxy = start_proxy(proxy_config([a.address, b.address], extra="fail_timeout = 60.0", health=health))
        port = b.port
        b.stop()
        out = re.compile(rf"upstream app 127\.0\.0\.1:{port} {taken_out}")
        with requests.Session() as session:
            wait_until(lambda: session.get(proxy.url + "/echo").status_code == 200
                       and any(out.search(line) for line in proxy.lines), what="b to be taken out")
            assert {session.get(proxy.url + "/echo").json()["name"] for _ in range(10)} == {"a"}
        b = gunicorn("b", tmp_path, port=port)
        proxy.wait_for_line(rf"upstream app 127\.0\.0\.1:{port} {back}", timeout=30)
        with requests.Session() as session:
            names = collections.Counter(session.get(proxy.url + "/echo").json()["name"] for _ in range(20))
        assert names == {"a": 10, "b": 10}
        status = requests.get(proxy.url + "/_proxy/status").json()
        states = {s["address"]: s["state"] for s in status["upstreams"]["app"]["servers"]}
        assert states == {a.address: "up", b.address: "up"}
    finally:
        a.stop()
        b.stop()


def test_a_lone_server_refusing_everything_is_reported_failing(start_proxy):
    port = free_port()  # nothing listens there
    proxy = start_proxy(proxy_config([f"127.0.0.1:{port}"]))
    assert [requests.get(proxy.url + "/x").status_code for _ in range(3)] == [502] * 3  # never rested: alone
    server = requests.get(proxy.url + "/_proxy/status").json()["upstreams"]["app"]["servers"][0]
    assert (server["state"], server["failures"], server["last_error"]) == ("failing", 3, f"connection refused by 127.0.0.1:{port}")
    text = requests.get(proxy.url + "/_proxy/metrics").text
    assert f'proxy_upstream_state{{upstream="app",server="127.0.0.1:{port}",state="failing"}} 1' in text
    assert f'proxy_upstream_state{{upstream="app",server="127.0.0.1:{port}",state="up"}} 0' in text


def test_all_servers_down_is_503_with_retry_after(start_proxy):
    ports = [free_port(), free_port()]
    proxy = start_proxy(proxy_config([f"127.0.0.1:{p}" for p in ports]))
    first = requests.get(proxy.url + "/echo")
    assert first.status_code == 502  # both tried, both refused
    second = requests.get(proxy.url + "/echo")
    assert second.status_code == 503
    assert 1 <= int(second.headers["Retry-After"]) <= 31
    line = wait_until(lambda: next((x for x in proxy.access_lines() if '"GET /echo' in x), None),
                      what="the first request's access line")
    tried = line.split("uaddr=")[1].split(" us=")[0]
    assert sorted(tried.split(", ")) == sorted(f"127.0.0.1:{p}" for p in ports)


def test_backup_takes_over_only_when_primaries_fail(start_proxy, tmp_path):
    primary = gunicorn("primary", tmp_path)
    backup = gunicorn("backup", tmp_path)
    try:
        config = proxy_config([primary.address], extra="")
        config = config.replace(f'servers = ["{primary.address}"]',
                                f'servers = ["{primary.address}", {{ address = "{backup.address}", backup = true }}]')
        proxy = start_proxy(config)
        with requests.Session() as session:
            assert {session.get(proxy.url + "/echo").json()["name"] for _ in range(10)} == {"primary"}
            primary.stop()
            assert {session.get(proxy.url + "/echo").json()["name"] for _ in range(10)} == {"backup"}
    finally:
        primary.stop()
        backup.stop()


def test_next_upstream_on_503_retries_gets_but_not_posts(start_proxy, recording_upstream):
    unavailable = recording_upstream(lambda raw: b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
    fine = recording_upstream(lambda raw: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    proxy = start_proxy(proxy_config([unavailable.address, fine.address],
                                     extra='next_upstream = ["error", "timeout", "http_503"]\nmax_fails = 0'))
    gets = [requests.get(proxy.url + "/x") for _ in range(4)]
    assert [r.status_code for r in gets] == [200] * 4
    posts = [requests.post(proxy.url + "/x", data=b"once") for _ in range(4)]
    assert sorted(r.status_code for r in posts) == [200, 200, 503, 503]
    assert sum(raw.startswith(b"POST") for raw in unavailable.received + fine.received) == 4


def test_status_and_metrics_report_what_happened(start_proxy, servers):
    proxy = start_proxy(proxy_config([s.address for s in servers]))
    with requests.Session() as session:
        for _ in range(9):
            assert session.get(proxy.url + "/echo").status_code == 200
    status = requests.get(proxy.url + "/_proxy/status").json()
    servers_seen = status["upstreams"]["app"]["servers"]
    assert [s["requests"] for s in servers_seen] == [3, 3, 3]
    assert all(s["state"] == "up" and s["idle_connections"] >= 1 for s in servers_seen)
    metrics = requests.get(proxy.url + "/_proxy/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert 'proxy_requests_total{route="/",status="200"} 9' in text
    assert f'proxy_upstream_state{{upstream="app",server="{servers[0].address}",state="up"}} 1' in text
    assert 'proxy_request_duration_seconds_count{route="/"} 9' in text


def test_status_pages_refuse_clients_outside_allow(start_proxy, servers):
    config = proxy_config([servers[0].address]).replace("[status]", '[status]\nallow = ["10.0.0.0/8"]')
    proxy = start_proxy(config)
    assert requests.get(proxy.url + "/_proxy/status").status_code == 404
    assert requests.get(proxy.url + "/_proxy/metrics").status_code == 404


def test_host_name_servers_are_resolved(start_proxy, servers):
    proxy = start_proxy(proxy_config([f"localhost:{servers[0].port}"], extra="resolve_interval = 0.5"))
    assert requests.get(proxy.url + "/echo").json()["name"] == "a"
    status = requests.get(proxy.url + "/_proxy/status").json()
    assert any(s["configured_as"] == f"localhost:{servers[0].port}" for s in status["upstreams"]["app"]["servers"])
    assert json.loads(json.dumps(status)) == status  # plain data all the way down
