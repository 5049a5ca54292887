"""The benchmark's sans-IO parts: wrk's result line, h2load's summary, groups and medians, the configs, the table."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import tomllib
from pathlib import Path

import pytest

from bench import cli, configs, h2load, load, report, wrk
from bench.scenarios import BY_KEY, GZIP_LEVEL, SCENARIOS

WRK_LINE = ('WRK_JSON {"requests":3000,"duration_us":3000000,"bytes":123,"connect_errors":0,"read_errors":1,'
            '"write_errors":0,"status_errors":2,"timeouts":0,"p50_us":1500,"p90_us":2500,"p99_us":4000,'
            '"mean_us":1600.5,"max_us":9000}')
BOTH = ("llhttp", "h11")


def result(rps: float, p99_ms: float, **errors: int) -> wrk.WrkResult:
    return wrk.WrkResult(requests=int(rps * 3), seconds=3.0, bytes=0, p50_ms=1.0, p90_ms=2.0, p99_ms=p99_ms,
                         mean_ms=1.0, max_ms=p99_ms, errors={"connect": 0, "read": 0, "write": 0, "status": 0,
                                                             "timeout": 0, **errors})


def run(server: str, group: int, rps: float, p99_ms: float = 10, rss: float = 20, **errors: int) -> report.Run:
    return report.Run(server, group, result(rps, p99_ms, **errors), cpu_seconds=rps * 3 * 200e-6, peak_rss_mb=rss,
                      app_cpu_seconds=rps * 3 * 300e-6, wrk_cpu_seconds=rps * 3 * 30e-6)


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


def test_each_engines_ratio_is_the_median_of_its_per_group_ratios_not_a_ratio_of_medians():
    # nginx swings 6k -> 2k -> 4k between groups; within each group llhttp is at half of it, h11 at 0.9, 0.7, 0.5.
    runs = [run("llhttp", 0, 3000), run("nginx", 0, 6000), run("h11", 0, 5400),
            run("nginx", 1, 2000), run("h11", 1, 1400, p99_ms=40), run("llhttp", 1, 1000, p99_ms=30, rss=25),
            run("h11", 2, 2000), run("llhttp", 2, 2000), run("nginx", 2, 4000, p99_ms=5)]
    summary = report.summarise(BY_KEY["proxied"], runs, BOTH)
    assert summary.groups == 3
    llhttp, h11 = summary.engines
    assert (llhttp.engine, h11.engine) == BOTH
    assert llhttp.rps_ratio == pytest.approx(0.5)
    assert h11.rps_ratios == pytest.approx((0.9, 0.7, 0.5))
    assert h11.rps_ratio == pytest.approx(0.7)  # a ratio of medians would say 2000 / 4000 = 0.5
    assert llhttp.p99_ratio == pytest.approx(2.0) and h11.p99_ratio == pytest.approx(2.0)
    assert llhttp.proxy.peak_rss_mb == 25 and summary.nginx.rps == 4000
    assert llhttp.proxy.cpu_us_per_request == pytest.approx(200)
    assert llhttp.proxy.app_cpu_us_per_request == pytest.approx(300)
    assert llhttp.proxy.wrk_cpu_us_per_request == pytest.approx(30)
    assert "req/s 0.50x" in llhttp.verdict and "p99 2.00x" in llhttp.verdict
    assert "req/s 0.70x" in h11.verdict


def test_incomplete_groups_are_left_out():
    runs = [run("llhttp", 0, 3000), run("nginx", 0, 3000), run("h11", 0, 3000),
            run("llhttp", 1, 1), run("nginx", 1, 3000)]  # the run stopped before h11's turn
    summary = report.summarise(BY_KEY["static-4k"], runs, BOTH)
    assert summary.groups == 1
    assert [e.verdict for e in summary.engines] == ["met", "met"]
    assert not math.isnan(summary.engines[0].rps_ratio)
    with pytest.raises(ValueError):
        report.summarise(BY_KEY["static-4k"], runs[3:], BOTH)


def test_a_group_where_nginx_answered_nothing_has_no_ratio_and_the_json_stays_json(tmp_path):
    # A 1 s --quick run of the 10 MiB stream on a busy machine can end before nginx finishes one answer.
    runs = [run("llhttp", 0, 30), run("nginx", 0, 0, p99_ms=0), run("h11", 0, 20),
            run("nginx", 1, 40), run("h11", 1, 20), run("llhttp", 1, 40)]
    summary = report.summarise(BY_KEY["stream-10m"], runs, BOTH)
    llhttp, h11 = summary.engines
    assert llhttp.rps_ratio == pytest.approx(1.0) and h11.rps_ratio == pytest.approx(0.5)  # group 1 alone
    alone = report.summarise(BY_KEY["proxied"], runs[:3], BOTH)
    assert math.isnan(alone.engines[0].rps_ratio)
    assert "req/s n/a < 0.9x" in alone.engines[0].verdict
    path = report.save(report.to_json([alone], {"proxied": runs[:3]}, {}), tmp_path, "nan")
    saved = json.loads(path.read_text())  # allow_nan=False when writing: the file is strict JSON
    assert saved["scenarios"][0]["engines"]["llhttp"]["rps_ratio"] is None
    assert "**n/a**" in saved["table"]


def test_one_engine_alone_is_summarised_against_nginx():
    summary = report.summarise(BY_KEY["static-1m"], [run("h11", 0, 900), run("nginx", 0, 1000)], ("h11",))
    [h11] = summary.engines
    assert h11.engine == "h11" and h11.rps_ratio == pytest.approx(0.9) and h11.verdict == "met"


def test_rss_target_and_errors_are_judged_for_each_engine():
    runs = [run("llhttp", 0, 900, rss=90, connect=5), run("nginx", 0, 1000), run("h11", 0, 850, rss=70)]
    llhttp, h11 = report.summarise(BY_KEY["proxied-1k"], runs, BOTH).engines
    assert "RSS 90 MB" in llhttp.verdict and "5 errors" in llhttp.verdict
    assert h11.verdict == "met"


def test_the_order_rotates_so_each_server_takes_each_place():
    orders = [report.order(g, BOTH) for g in range(3)]
    assert orders[0] == ("llhttp", "nginx", "h11")
    assert [o[0] for o in orders] == ["llhttp", "nginx", "h11"]
    for place in range(3):
        assert {o[place] for o in orders} == {"llhttp", "nginx", "h11"}
    assert report.order(3, BOTH) == orders[0]
    # One engine: the pairs alternate, as they always have.
    assert [report.order(g, ("llhttp",)) for g in range(3)] == [("llhttp", "nginx"), ("nginx", "llhttp"),
                                                                ("llhttp", "nginx")]


def test_the_table_has_a_row_per_engine_and_one_for_nginx_and_the_json_holds_both_engines():
    runs = {s.key: [run("llhttp", 0, 900), run("nginx", 0, 1000), run("h11", 0, 400)] for s in SCENARIOS[:2]}
    summaries = [report.summarise(s, runs[s.key], BOTH) for s in SCENARIOS[:2]]
    document = json.loads(json.dumps(report.to_json(summaries, runs, {"date": "x"})))
    lines = document["table"].splitlines()
    assert len(lines) == 2 + 3 * 2
    assert all(len(line) == len(lines[0]) for line in lines)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [c[1] for c in cells[:3]] == ["proxy llhttp", "proxy h11", "nginx"]
    assert cells[0][0] == SCENARIOS[0].title and cells[1][0].startswith("target: >=0.9x")
    assert cells[0][3] == "**0.90x**" and cells[1][3] == "**0.40x**" and cells[2][3] == ""
    assert cells[0][6:9] == ["200", "300", "30"]  # CPU µs per request: server, app, wrk
    assert [c[-1] for c in cells] == ["met", "missed: req/s 0.40x < 0.9x", "",  # proxied: >= 0.9x
                                      "met", "missed: req/s 0.40x < 0.8x", ""]  # 4 KiB: >= 0.8x
    first = document["scenarios"][0]
    assert first["groups"] == 1 and set(first["engines"]) == set(BOTH)
    assert first["engines"]["h11"]["rps_ratios"] == [pytest.approx(0.4)]
    assert first["engines"]["llhttp"]["proxy"]["cpu_us_per_request"] == pytest.approx(200)
    assert first["nginx"]["rps"] == 1000
    assert [r["server"] for r in first["runs"]] == ["llhttp", "nginx", "h11"]


def test_both_engines_are_measured_unless_told_otherwise():
    assert cli.options_from(cli.parser().parse_args([])).engines == BOTH
    one = cli.options_from(cli.parser().parse_args(["--engines", "h11", "--pairs", "3"]))
    assert (one.engines, one.groups) == (("h11",), 3)
    assert cli.options_from(cli.parser().parse_args(["--quick"])).groups == 1
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--engines", "picohttp"])


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


def test_every_location_reaches_both_servers():
    every = layout(policy=True, gzip=True)  # /policy/ and the gzip path only when their scenario runs
    nginx = configs.nginx_conf(every)
    proxy = configs.proxy_toml(every)
    for location in configs.LOCATIONS:
        assert f"location {location.prefix} {{" in nginx
        assert f'prefix = "{location.prefix}"' in proxy
    assert "alias /tmp/w/static/;" in nginx and 'static = "/tmp/w/static"' in proxy
    assert "proxy_pass http://app;" in nginx and 'upstream = "app"' in proxy
    assert nginx.count("{") == nginx.count("}")


def test_a_location_brings_what_it_needs_beside_its_block(monkeypatch):
    cached = configs.Location(
        "/api/x/", lambda layout: "proxy_pass http://app;\nproxy_cache x;\n",
        lambda layout: 'upstream = "app"\ncache = "x"\n',
        nginx_http=lambda layout: f"proxy_cache_path {layout.work}/nginx-x keys_zone=x:1m;\n",
        proxy_tables=lambda layout: '[caches.x]\nmemory = "64m"\n')
    monkeypatch.setattr(configs, "LOCATIONS", (*configs.LOCATIONS, cached))
    nginx = configs.nginx_conf(layout())
    assert "\n    proxy_cache_path /tmp/w/nginx-x keys_zone=x:1m;\n" in nginx.split("server {")[0]
    assert "location /api/x/ {\n            proxy_pass http://app;\n            proxy_cache x;\n        }" in nginx
    proxy = tomllib.loads(configs.proxy_toml(layout()))
    assert proxy["routes"][-1] == {"prefix": "/api/x/", "upstream": "app", "cache": "x"}
    assert proxy["caches"]["x"] == {"memory": "64m"}


def test_the_engines_configs_differ_only_in_the_engine():
    llhttp, h11 = (configs.proxy_toml(layout(), engine).splitlines() for engine in BOTH)
    assert [(a, b) for a, b in zip(llhttp, h11) if a != b] == [('http_engine = "llhttp"', 'http_engine = "h11"')]
    assert layout().proxy_config("h11") == Path("/tmp/w/proxy-h11.toml")


def test_root_gets_a_worker_user_and_workers_reach_both_configs():
    assert "user root root;" in configs.nginx_conf(layout(run_as_root=True))
    assert "worker_processes 2;" in configs.nginx_conf(layout(workers=2))
    assert "workers = 2" in configs.proxy_toml(layout(workers=2, proxy_master=True))
    assert "workers = 1" in configs.proxy_toml(layout(proxy_master=True))  # said explicitly when the key exists


def test_the_gzip_scenario_compresses_on_both_at_the_same_level_and_nowhere_else():
    scenario = BY_KEY["gzip-100k"]
    assert "gzip on;" not in configs.nginx_conf(layout()) and "compress" not in configs.proxy_toml(layout())
    nginx = configs.nginx_conf(layout(gzip=True))
    location = nginx.split(f"location {scenario.path} {{", 1)[1].split("}", 1)[0]
    for directive in ("gzip on;", f"gzip_comp_level {GZIP_LEVEL};", "gzip_min_length 1024;",
                      "gzip_types application/json;", "gzip_proxied any;", "gzip_vary on;", "proxy_pass http://app;"):
        assert directive in location
    assert nginx.count("gzip on;") == 1
    routes = tomllib.loads(configs.proxy_toml(layout(gzip=True)))["routes"]
    assert [r for r in routes if "compress" in r] == [
        {"prefix": scenario.path, "upstream": "app", "compress": {"encodings": ["gzip"], "level": {"gzip": GZIP_LEVEL}}}]
    assert "-HAccept-Encoding: gzip" in wrk.command("http://127.0.0.1:1/", 32, 1, 2, scenario.headers)
    assert not any(s.headers for s in SCENARIOS if s is not scenario)


def sized(server: str, group: int, rps: float, bytes_per_request: int) -> report.Run:
    measured = run(server, group, rps)
    return dataclasses.replace(measured, wrk=dataclasses.replace(measured.wrk, bytes=int(rps * 3) * bytes_per_request))


def test_bytes_on_the_wire_are_compared_per_answer_within_each_group():
    runs = [sized("llhttp", 0, 300, 20000), sized("nginx", 0, 400, 19000),
            sized("nginx", 1, 100, 19500), sized("llhttp", 1, 90, 19800)]
    summary = report.summarise(BY_KEY["gzip-100k"], runs, ("llhttp",))
    [engine] = summary.engines
    assert engine.bytes_ratio == pytest.approx(statistics.median([20000 / 19000, 19800 / 19500]))
    assert engine.proxy.bytes_per_request == pytest.approx(19900)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in report.table([summary]).splitlines()[2:]]
    assert cells[0][10] == "19.4k (1.03x)" and cells[1][10] == "18.8k"
    assert report.to_json([summary], {"gzip-100k": runs}, {})["scenarios"][0]["engines"]["llhttp"]["bytes_ratio"] \
        == pytest.approx(engine.bytes_ratio)


def test_both_servers_cache_the_cached_prefix_alike():
    nginx = configs.nginx_conf(layout())
    proxy = configs.proxy_toml(layout())
    assert "location /api/cached/ {" in nginx and "proxy_cache cached;" in nginx and "proxy_cache_lock on;" in nginx
    assert "proxy_cache_path /tmp/w/nginx-cache " in nginx
    assert '[caches.bench]' in proxy and 'prefix = "/api/cached/"' in proxy and 'cache = "bench"' in proxy
    assert BY_KEY["cached-4k"].path.startswith("/api/cached/") and not BY_KEY["proxied-4k"].path.startswith(
        "/api/cached/")


def test_cache_speedup_is_each_servers_hits_over_the_same_answer_forwarded():
    def summary(key, llhttp_rps, h11_rps, nginx_rps):
        runs = [run("llhttp", 0, llhttp_rps), run("h11", 0, h11_rps), run("nginx", 0, nginx_rps)]
        return report.summarise(BY_KEY[key], runs, BOTH)

    speedup = report.cache_speedup([summary("cached-4k", 12000, 8000, 40000), summary("proxied-4k", 1000, 1000, 2000)])
    assert speedup == {"llhttp": pytest.approx(12.0), "h11": pytest.approx(8.0), "nginx": pytest.approx(20.0)}
    line = report.cache_line(speedup)
    assert "proxy llhttp 12.0x (goal >=10x: met), proxy h11 8.0x (goal >=10x: missed), nginx 20.0x" in line
    assert report.cache_speedup([summary("cached-4k", 1, 1, 1)]) is None
    assert report.cache_json({"nginx": math.nan}) == {"nginx": None}  # JSON has no NaN


def test_collapsed_forwarding_counts_gunicorns_own_record(tmp_path):
    from bench import collapse

    (tmp_path / "collapse").write_text("proxy-1\nnginx-2\nproxy-1\n")
    assert collapse.upstream_count(tmp_path, "proxy-1") == 2 and collapse.upstream_count(tmp_path, "x") == 0
    line = collapse.line({"llhttp": {"clients": 100, "answered": 100, "upstream_requests": 1},
                          "nginx": {"clients": 100, "answered": 99, "upstream_requests": 2}})
    assert "reached Gunicorn: proxy llhttp 1 (of 100 clients, 100 answered 200); nginx 2 (of 100" in line


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
    # A run that ends just under a second (--quick's 1 s runs) is reported in milliseconds.
    quick = h2load.parse(H2LOAD_OUTPUT.replace("finished in 3.00s", "finished in 997.91ms"), log)
    assert quick.seconds == pytest.approx(0.99791) and quick.requests == 5200


def test_http2_scenarios_use_h2load_over_tls():
    scenario = BY_KEY["h2-static-4k"]
    assert load.tls(scenario) and not load.tls(BY_KEY["static-4k"])
    argv = h2load.command("https://127.0.0.1:1/x", scenario.connections, scenario.streams, 3, Path("/tmp/log"))
    assert argv[:5] == ["h2load", "-c10", "-m10", "-t2", "-D3"]


def test_the_policy_route_is_in_both_configs_only_when_measured():
    assert "/policy/" not in configs.nginx_conf(layout()) and "/policy/" not in configs.proxy_toml(layout())
    nginx, proxy = configs.nginx_conf(layout(policy=True)), configs.proxy_toml(layout(policy=True))
    for same in (("proxy_set_header X-Site shop;", '"X-Site" = "shop"'), ("allow 127.0.0.0/8;", 'allow = ["127.0.0.0/8"]'),
                 ("limit_req zone=bench", 'rate_limit = "bench"')):
        assert same[0] in nginx and same[1] in proxy
