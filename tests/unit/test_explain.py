"""``proxy explain``: the dry run tells the truth about routing, files and forwarded headers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy import config
from proxy.explain import explain
from proxy.http.headers import connection_tokens, upstream_request_headers, why_dropped

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path):
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "page.html").write_text("<p>hi</p>")
    (tmp_path / "public" / "docs").mkdir()
    (tmp_path / "proxy.toml").write_text("""
[server]
listen = ["127.0.0.1:9999"]
[upstreams.app]
servers = ["127.0.0.1:8001", {address = "127.0.0.1:8002", weight = 2}, "app.internal:8000"]
[status]
[[routes]]
prefix = "/api/"
upstream = "app"
[[routes]]
prefix = "/"
static = "public"
upstream = "app"
[[routes]]
prefix = "/files/"
static = "public"
""")
    return config.load(tmp_path / "proxy.toml")


def test_forwarded_request_shows_route_server_and_headers(site):
    text = explain(site, "GET", "/api/users?id=3", [("X-Forwarded-For", "6.6.6.6"), ("Connection", "X-Foo"),
                                                   ("X-Foo", "1"), ("Accept", "application/json")],
                   client_ip="203.0.113.9")
    assert "route:   routes[0] prefix '/api/' (the longest matching prefix; also matched: /)" in text
    assert "server:  127.0.0.1:8002 of upstream 'app' (round_robin" in text  # weight 2 goes first
    assert "resolved when the proxy runs: app.internal:8000" in text
    assert "  GET /api/users?id=3 HTTP/1.1" in text
    assert "  x-forwarded-for: 203.0.113.9" in text
    assert "  accept: application/json" in text
    assert "x-foo: 1" not in text.lower().split("sent upstream")[1]
    assert "dropped: X-Forwarded-For: replaced by the proxy's own value" in text
    assert "dropped: X-Foo: named by Connection" in text


def test_static_file_served_by_the_proxy(site, tmp_path):
    text = explain(site, "GET", "/page.html", [])
    assert f"file:    {tmp_path / 'public' / 'page.html'} (text/html; charset=utf-8, 9 bytes) -> 200" in text
    assert "sent upstream" not in text


def test_missing_file_falls_through_to_the_app(site):
    text = explain(site, "GET", "/nothing-here", [])
    assert "no file" in text and "forwarded to upstream 'app'" in text
    assert "sent upstream" in text


def test_static_only_route_answers_404_and_405(site):
    assert "answer:  404 from the proxy: no such file" in explain(site, "GET", "/files/missing.txt", [])
    assert "answer:  405" in explain(site, "DELETE", "/files/page.html", [])


def test_folder_without_slash_redirects(site):
    assert "answer:  301 to /docs/" in explain(site, "GET", "/docs", [])


def test_bad_requests_are_refused_before_routing(site):
    text = explain(site, "GET", "/%2e%2e/etc/passwd", [])
    assert "answer:  400 from the proxy itself" in text and "nothing would reach an upstream" in text
    assert "answer:  405" in explain(site, "TRACE", "/", [])


def test_status_page(site):
    assert "200 the proxy's own status page" in explain(site, "GET", "/_proxy/status", [])
    assert "not in [status] allow" in explain(site, "GET", "/_proxy/metrics", [], client_ip="192.0.2.1")


def test_command_line():
    result = subprocess.run([sys.executable, "-m", "proxy", "explain", "--config", str(ROOT / "proxy.toml"),
                             "GET", "/api/whoami", "-H", "X-Request-ID: demo-1"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "x-request-id: demo-1" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "proxy", "explain", "--config", str(ROOT / "proxy.toml"),
                          "GET", "/", "-H", "no colon"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "expected 'Name: value'" in bad.stderr


@pytest.mark.parametrize("headers", [
    [(b"connection", b"x-a, keep-alive"), (b"x-a", b"1"), (b"x-b", b"2"), (b"te", b"trailers")],
    [(b"x-forwarded-for", b"1.2.3.4"), (b"via", b"1.0 other"), (b"x-request-id", b"r"), (b"accept", b"*/*")],
    [(b"content-length", b"3"), (b"expect", b"100-continue"), (b"x_y", b"z"), (b"forwarded", b"for=x")],
    [(b"proxy", b"http://evil.example"), (b"accept", b"*/*")],
])
def test_why_dropped_agrees_with_the_rewriter(headers):
    out = upstream_request_headers(headers, host=b"h", client_ip="9.9.9.9", scheme=b"http", request_id=b"new-id",
                                   via=b"1.1 t", body_length=None)
    kept = {name for name, value in out if (name, value) in headers}
    named = connection_tokens(headers)
    for name, _ in headers:
        assert (why_dropped(name, named) is None) == (name in kept), name


def test_websocket_upgrade_is_explained_and_its_headers_kept(site):
    out = explain(site, "GET", "/api/ws", [("Connection", "Upgrade"), ("Upgrade", "websocket")])
    assert "upgrade: websocket: Connection and Upgrade are forwarded" in out
    assert "dropped: Connection" not in out and "dropped: Upgrade" not in out
    assert "  connection: upgrade\n  upgrade: websocket" in out


def test_refused_upgrade_is_explained(site):
    out = explain(site, "GET", "/api/ws", [("Connection", "Upgrade"), ("Upgrade", "foo")])
    assert out.endswith("answer:  400 from the proxy: upgrade to foo is not allowed here (upstream 'app' allows "
                        "websocket)")


def test_explain_names_the_site_each_policy_and_the_target_upstream(tmp_path):
    (tmp_path / "proxy.toml").write_text("""
[server]
trusted_proxies = ["127.0.0.1/32"]
[upstreams.app]
servers = ["127.0.0.1:9"]
[rate_limits.api]
rate = "5r/s"
[[sites]]
names = ["shop.test"]
  [[sites.routes]]
  prefix = "/api/"
  upstream = "app"
  strip_prefix = true
  request_headers = { set = { "X-Site" = "shop" } }
  allow = ["10.0.0.0/8"]
  rate_limit = "api"
[[sites]]
names = ["other.test"]
  [[sites.routes]]
  prefix = "/"
  redirect = "https://{host}{uri}"
""")
    cfg = config.load(tmp_path / "proxy.toml")
    told = explain(cfg, "GET", "/api/x?q=1", [("Host", "shop.test"), ("X-Forwarded-For", "10.1.1.1")])
    for line in ["client:  10.1.1.1 (X-Forwarded-For: 127.0.0.1 is in [server] trusted_proxies)",
                 "site:    sites[0] (shop.test) for Host 'shop.test', by its names",
                 "rate:    rate_limits.api (5r/s, burst 0) for client_ip '10.1.1.1': within it",
                 "access:  10.1.1.1 is in allow 10.0.0.0/8",
                 "rewrite: /api/x?q=1 -> /x?q=1", "  GET /x?q=1 HTTP/1.1", "  x-site: shop"]:
        assert line in told, told
    assert "answer:  403" in explain(cfg, "GET", "/api/x", [("Host", "shop.test")])
    assert "answer:  302 to https://other.test/a?b" in explain(cfg, "GET", "/a?b", [("Host", "other.test")])
    misdirected = explain(cfg, "GET", "/", [("Host", "nope.test")], scheme="https", server_name="shop.test")
    assert "answer:  421" in misdirected and "site:    none serves Host 'nope.test'" in misdirected


def test_hash_password_makes_an_htpasswd_line_the_config_accepts(tmp_path):
    import bcrypt

    made = subprocess.run([sys.executable, "-m", "proxy", "hash-password", "--user", "alice", "--cost", "4"],
                          input="wonderland\n", capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    user, _, hashed = made.stdout.strip().partition(":")
    assert user == "alice" and hashed.startswith("$2y$04$") and bcrypt.checkpw(b"wonderland", hashed.encode())
    bad = subprocess.run([sys.executable, "-m", "proxy", "hash-password", "--cost", "3"], input="x\n",
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "proxy hash-password: --cost: expected a number from 4 to 31"


@pytest.mark.parametrize("servers, tls, line", [
    ('["unix:/run/gunicorn.sock"]', "",
     "server:  unix:/run/gunicorn.sock of upstream 'app' (round_robin, first pick of 1 known server(s)), "
     "over its unix socket"),
    ('["https://10.0.0.5:8443"]', "",
     "server:  10.0.0.5:8443 of upstream 'app' (round_robin, first pick of 1 known server(s)), over HTTPS "
     "(certificate checked against the system's CAs, for the name 10.0.0.5)"),
    ('["10.0.0.5:8443"]', 'tls = { server_name = "app.internal" }',
     "over HTTPS (certificate checked against the system's CAs, for the name app.internal)"),
    ('["10.0.0.5:8443"]', "tls = { verify = false }",
     "over HTTPS (SNI 10.0.0.5; the certificate is not checked: verify = false)"),
    ('["http://10.0.0.5:8000"]', "", "(round_robin, first pick of 1 known server(s))\n"),
])
def test_explain_says_how_the_server_is_reached(tmp_path, servers, tls, line):
    (tmp_path / "proxy.toml").write_text(f"""
[server]
listen = ["unix:/run/twotier.sock"]
[upstreams.app]
servers = {servers}
{tls}
[[routes]]
prefix = "/"
upstream = "app"
""")
    text = explain(config.load(tmp_path / "proxy.toml"), "GET", "/", [])
    assert line in text + "\n"
    assert "  host: localhost" in text  # a unix listener: the Host a request without one is given


def test_explain_says_where_the_client_address_comes_from(tmp_path):
    (tmp_path / "proxy.toml").write_text("""
[server]
listen = ["127.0.0.1:8080", { address = ":8081", proxy_protocol = true }, "unix:/run/twotier.sock"]
[upstreams.app]
servers = ["127.0.0.1:8000"]
[[routes]]
prefix = "/"
upstream = "app"
""")
    text = explain(config.load(tmp_path / "proxy.toml"), "GET", "/", [], client_ip="203.0.113.7")
    assert ("client:  on 0.0.0.0:8081 (proxy_protocol) the address its PROXY header names "
            "(what --client-ip stands for here)") in text
    assert 'client:  on unix:/run/twotier.sock "unix:" (a unix socket\'s client has no address)' in text
    assert "  x-forwarded-for: 203.0.113.7" in text
    plain = tmp_path / "plain.toml"
    plain.write_text('[upstreams.app]\nservers = ["127.0.0.1:8000"]\n[[routes]]\nprefix = "/"\nupstream = "app"\n')
    assert "client:" not in explain(config.load(plain), "GET", "/", [])
