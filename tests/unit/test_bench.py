"""The benchmark's sans-IO parts: wrk's result line, h2load's summary, pairing and medians, the two configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import cli, configs, h2load, load, report, wrk
from bench.scenarios import BY_KEY

WRK_LINE = ('WRK_JSON {"requests":3000,"duration_us":3000000,"bytes":123,"connect_errors":0,"read_errors":1,'
            '"write_errors":0,"status_errors":2,"timeouts":0,"p50_us":1500,"p90_us":2500,"p99_us":4000,'
            '"mean_us":1600.5,"max_us":9000}')


def result(rps: float, p99_ms: float) -> wrk.WrkResult:
    return wrk.WrkResult(requests=int(rps * 3), seconds=3.0, bytes=0, p50_ms=1.0, p90_ms=2.0, p99_ms=p99_ms,
                         mean_ms=1.0, max_ms=p99_ms, errors={"connect": 0, "read": 0, "write": 0, "status": 0,
                                                             "timeout": 0})


def test_wrk_result_line_is_parsed_amid_wrks_own_output():
    parsed = wrk.parse("Running 3s test @ http://127.0.0.1:1/\n  2 threads\n" + WRK_LINE + "\n")
    assert parsed.rps == 1000
    assert (parsed.p50_ms, parsed.p99_ms) == (1.5, 4.0)
    assert parsed.error_count == 3


def test_missing_result_line_is_an_error():
    with pytest.raises(wrk.WrkError):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused")


def test_wrk_command_never_has_more_threads_than_connections():
    assert "-t1" in wrk.command("http://127.0.0.1:1/", connections=1, seconds=1, threads=2)


def test_ratio_is_the_median_of_per_pair_ratios_not_a_ratio_of_medians():
    # nginx swings 6k -> 2k between pairs; within each pair the proxy is at half of it.
    runs = [report.Run("proxy", 0, result(3000, 10), 1.0, 20), report.Run("nginx", 0, result(6000, 10), 0.1, 5),
            report.Run("nginx", 1, result(2000, 10), 0.1, 5), report.Run("proxy", 1, result(1000, 30), 1.0, 25),
            report.Run("proxy", 2, result(2000, 10), 1.0, 22), report.Run("nginx", 2, result(4000, 5), 0.1, 5)]
    summary = report.summarise(BY_KEY["proxied"], runs)
    assert summary.pairs == 3
    assert summary.rps_ratio == pytest.approx(0.5)
    assert summary.p99_ratio == pytest.approx(2.0)
    assert summary.proxy.peak_rss_mb == 25
    assert summary.verdict.startswith("missed")
    assert "req/s 0.50x" in summary.verdict and "p99 2.00x" in summary.verdict


def test_incomplete_pairs_are_left_out():
    runs = [report.Run("proxy", 0, result(3000, 10), 1.0, 20), report.Run("nginx", 0, result(3000, 10), 0.1, 5),
            report.Run("proxy", 1, result(1, 10), 1.0, 20)]
    summary = report.summarise(BY_KEY["static-4k"], runs)
    assert summary.pairs == 1
    assert summary.verdict == "met"
    assert not math.isnan(summary.rps_ratio)


def test_rss_target_and_errors_are_judged():
    failing = wrk.WrkResult(requests=10, seconds=1.0, bytes=0, p50_ms=1, p90_ms=1, p99_ms=1, mean_ms=1, max_ms=1,
                            errors={"connect": 5, "read": 0, "write": 0, "status": 0, "timeout": 0})
    runs = [report.Run("proxy", 0, failing, 1.0, 90), report.Run("nginx", 0, result(10, 1), 0.1, 5)]
    summary = report.summarise(BY_KEY["proxied-1k"], runs)
    assert "RSS 90 MB" in summary.verdict and "5 errors" in summary.verdict


def test_pairs_alternate_which_server_goes_first():
    assert [cli.order(i) for i in range(3)] == [("proxy", "nginx"), ("nginx", "proxy"), ("proxy", "nginx")]


def layout(**changes) -> configs.Layout:
    values = dict(work=Path("/tmp/w"), static=Path("/tmp/w/static"), app_port=8001, nginx_port=8002,
                  nginx_tls_port=8003, certificate=Path("/tmp/w/cert.pem"), key=Path("/tmp/w/key.pem"),
                  nginx_sendfile=False, proxy_sendfile=False)
    return configs.Layout(**{**values, **changes})


def test_both_configs_pool_upstream_connections_and_log_nothing():
    nginx = configs.nginx_conf(layout())
    proxy = configs.proxy_toml(layout())
    assert "keepalive 32;" in nginx and "keepalive = 32" in proxy
    assert "server 127.0.0.1:8001;" in nginx and '"127.0.0.1:8001"' in proxy
    assert "access_log off;" in nginx and 'access = "off"' in proxy
    assert "worker_processes 1;" in nginx and "workers" not in proxy
    assert "sendfile off;" in nginx and "sendfile = false" in proxy
    assert "user " not in nginx


def test_root_gets_a_worker_user_and_workers_reach_both_configs():
    assert "user root root;" in configs.nginx_conf(layout(run_as_root=True))
    assert "worker_processes 2;" in configs.nginx_conf(layout(workers=2))
    assert "workers = 2" in configs.proxy_toml(layout(workers=2, proxy_master=True))
    assert "workers = 1" in configs.proxy_toml(layout(proxy_master=True))  # said explicitly when the key exists


def test_both_configs_speak_http2_over_tls_with_the_same_certificate():
    nginx = configs.nginx_conf(layout())
    proxy = configs.proxy_toml(layout())
    assert "listen 127.0.0.1:8003 ssl http2" in nginx and "ssl_certificate /tmp/w/cert.pem;" in nginx
    assert '[tls]' in proxy and 'certificate = "/tmp/w/cert.pem"' in proxy
    # h2load opens no new connection after a GOAWAY: neither server may send one during a run.
    assert f"keepalive_requests {configs.KEEPALIVE_REQUESTS};" in nginx
    assert f"keepalive_requests = {configs.KEEPALIVE_REQUESTS}" in proxy


H2LOAD_OUTPUT = """starting benchmark...
finished in 3.00s, 1739.84 req/s, 6.90MB/s
requests: 5220 total, 5230 started, 5220 done, 5200 succeeded, 20 failed, 15 errored, 2 timeout
status codes: 5190 2xx, 0 3xx, 4 4xx, 6 5xx
traffic: 20.71MB (21715800) total, 100.20KB (102604) headers (space savings 90.04%), 20.47MB (21463040) data
"""


def test_h2load_summary_and_per_request_log_give_wrks_numbers():
    log = "".join(f"1700000000{i:06d}\t200\t{(i + 1) * 1000}\n" for i in range(100))  # 1 ms .. 100 ms
    parsed = h2load.parse(H2LOAD_OUTPUT, log)
    assert parsed.requests == 5200 and parsed.seconds == 3.0 and parsed.bytes == 21715800
    assert (parsed.p50_ms, parsed.p99_ms, parsed.max_ms) == (51.0, 100.0, 100.0)
    assert parsed.errors == {"failed": 3, "errored": 15, "timeout": 2, "status": 10}
    with pytest.raises(wrk.WrkError):
        h2load.parse("no protocol was negotiated", "")


def test_http2_scenarios_use_h2load_over_tls():
    scenario = BY_KEY["h2-static-4k"]
    assert load.tls(scenario) and not load.tls(BY_KEY["static-4k"])
    argv = h2load.command("https://127.0.0.1:1/x", scenario.connections, scenario.streams, 3, Path("/tmp/log"))
    assert argv[:5] == ["h2load", "-c10", "-m10", "-t2", "-D3"]
