"""The benchmark's sans-IO parts: wrk's result line, pairing and medians, the two configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import cli, configs, report, wrk
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


def test_both_servers_cache_the_cached_prefix_alike():
    nginx = configs.nginx_conf(layout())
    proxy = configs.proxy_toml(layout())
    assert "location /api/cached/ {" in nginx and "proxy_cache bench;" in nginx and "proxy_cache_lock on;" in nginx
    assert "proxy_cache_path /tmp/w/nginx-cache " in nginx
    assert '[caches.bench]' in proxy and 'prefix = "/api/cached/"' in proxy and 'cache = "bench"' in proxy
    assert BY_KEY["cached-4k"].path.startswith("/api/cached/") and not BY_KEY["proxied-4k"].path.startswith(
        "/api/cached/")


def test_cache_speedup_is_each_servers_hits_over_the_same_answer_forwarded():
    def summary(key, proxy_rps, nginx_rps):
        runs = [report.Run("proxy", 0, result(proxy_rps, 1), 1.0, 20),
                report.Run("nginx", 0, result(nginx_rps, 1), 0.1, 5)]
        return report.summarise(BY_KEY[key], runs)

    speedup = report.cache_speedup([summary("cached-4k", 12000, 40000), summary("proxied-4k", 1000, 2000)])
    assert speedup == {"proxy": pytest.approx(12.0), "nginx": pytest.approx(20.0)}
    assert "proxy 12.0x (goal >=10x: met), nginx 20.0x" in report.cache_line(speedup)
    assert report.cache_speedup([summary("cached-4k", 1, 1)]) is None


def test_collapsed_forwarding_counts_gunicorns_own_record(tmp_path):
    from bench import collapse

    (tmp_path / "collapse").write_text("proxy-1\nnginx-2\nproxy-1\n")
    assert collapse.upstream_count(tmp_path, "proxy-1") == 2 and collapse.upstream_count(tmp_path, "x") == 0
    line = collapse.line({"proxy": {"clients": 100, "answered": 100, "upstream_requests": 1}})
    assert "reached Gunicorn: proxy 1 (of 100 clients, 100 answered 200)" in line
