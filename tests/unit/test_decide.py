"""decide(): the one place a request's fate is chosen, driven with parsed heads and no sockets."""

from __future__ import annotations

import pytest

from proxy import config
from proxy.errors import ClientError
from proxy.explain import build_request, parse
from proxy.http.decide import ConnFacts, Decider, Forward, Purge, Reply, Static, StatusPage

HTTP = ConnFacts(b"http", "127.0.0.1", b"127.0.0.1:8080", 8443)
HTTPS = ConnFacts(b"https", "127.0.0.1", b"127.0.0.1:8443", 8443)
FAR = ConnFacts(b"http", "192.0.2.7", b"127.0.0.1:8080", 8443)


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "public").mkdir()
    return config.from_dict({
        "upstreams": {"app": {"servers": ["127.0.0.1:8001"]}, "ws": {"servers": ["127.0.0.1:8002"], "upgrade": []}},
        "status": {},
        "routes": [
            {"prefix": "/", "static": "public", "upstream": "app"},
            {"prefix": "/api/", "upstream": "app"},
            {"prefix": "/files/", "static": "public"},
            {"prefix": "/nows/", "upstream": "ws"},
        ],
    }, tmp_path / "proxy.toml")


def head(cfg, method="GET", target="/", headers=()):
    return parse(cfg, build_request(method, target, list(headers), "127.0.0.1:8080"))


def decide(cfg, *args, conn=HTTP, **kwargs):
    return Decider(cfg).decide(head(cfg, *args, **kwargs), conn)


def test_options_asterisk_is_answered_by_the_proxy(cfg):
    action = decide(cfg, "OPTIONS", "*")
    assert type(action) is Reply and action.status == 200 and (b"allow", b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS") in action.headers


def test_status_pages_for_allowed_clients_only(cfg):
    assert decide(cfg, "GET", "/_proxy/status") == StatusPage("status")
    assert decide(cfg, "HEAD", "/_proxy/metrics") == StatusPage("metrics")
    hidden = decide(cfg, "GET", "/_proxy/status", conn=FAR)
    assert type(hidden) is Reply and hidden.status == 404
    assert decide(cfg, "POST", "/_proxy/status").status == 405


def test_longest_prefix_wins_and_methods_choose_static_or_upstream(cfg):
    api = decide(cfg, "GET", "/api/users")
    assert type(api) is Forward and api.route.prefix == "/api/" and api.host == b"127.0.0.1:8080"
    page = decide(cfg, "GET", "/page.html")
    assert type(page) is Static and page.route.prefix == "/" and type(page.otherwise) is Forward
    assert type(decide(cfg, "POST", "/page.html")) is Forward  # try_files: other methods go to the app
    files = decide(cfg, "GET", "/files/a.txt")
    assert type(files) is Static and files.otherwise is None
    refused = decide(cfg, "DELETE", "/files/a.txt")
    assert type(refused) is Reply and refused.status == 405 and (b"allow", b"GET, HEAD") in refused.headers


def test_no_route_is_404():
    cfg = config.from_dict({"upstreams": {"app": {"servers": ["127.0.0.1:1"]}},
                            "routes": [{"prefix": "/api/", "upstream": "app"}]}, config.Path("/tmp/x.toml"))
    action = Decider(cfg).decide(head(cfg, "GET", "/elsewhere"), HTTP)
    assert type(action) is Reply and action.status == 404


def test_upgrades_follow_the_group(cfg):
    ws = [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    allowed = decide(cfg, "GET", "/api/socket", headers=ws)
    assert type(allowed) is Forward and allowed.upgrade.protocol == b"websocket"
    refused = decide(cfg, "GET", "/nows/socket", headers=ws)
    assert type(refused) is Reply and refused.status == 400 and "allows no upgrades" in refused.why
    # On a static route with an upstream, a file still answers; only the fallback is refused.
    static = decide(cfg, "GET", "/page.html", headers=[("Connection", "Upgrade"), ("Upgrade", "foo")])
    assert type(static) is Static and type(static.otherwise) is Reply and static.otherwise.status == 400
    # h2c is ignored, as RFC 9113 section 3.1 allows.
    assert decide(cfg, "GET", "/nows/x", headers=[("Connection", "Upgrade"), ("Upgrade", "h2c")]).upgrade is None


def test_http10_without_host_gets_the_listener_address(cfg):
    raw = b"GET /api/x HTTP/1.0\r\n\r\n"
    action = Decider(cfg).decide(parse(cfg, raw), HTTP)
    assert type(action) is Forward and action.host == b"127.0.0.1:8080"


def test_redirect_http_sends_plain_requests_to_https(tmp_path):
    import trustme

    trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "site.pem"))
    cert, key = tmp_path / "site.pem", ""
    cfg = config.from_dict({
        "upstreams": {"app": {"servers": ["127.0.0.1:1"]}}, "status": {},
        "routes": [{"prefix": "/", "upstream": "app"}],
        "tls": {"certificate": str(cert), "key": str(key), "redirect_http": True, "listen": ["127.0.0.1:8443"]},
    }, tmp_path / "proxy.toml")
    decider = Decider(cfg)
    moved = decider.decide(head(cfg, "POST", "/api/x?q=1", [("Host", "shop.test:8080")]), HTTP)
    assert type(moved) is Reply and moved.status == 308
    assert (b"location", b"https://shop.test:8443/api/x?q=1") in moved.headers
    assert type(decider.decide(head(cfg, "GET", "/api/x"), HTTPS)) is Forward
    assert decider.decide(head(cfg, "GET", "/_proxy/status"), HTTP) == StatusPage("status")  # pages first


def test_refusals_happen_before_decide(cfg):
    with pytest.raises(ClientError) as refused:
        head(cfg, "TRACE", "/")
    assert refused.value.status == 405


# --- the response cache ----------------------------------------------------------------------

@pytest.fixture
def cached(tmp_path):
    return config.from_dict({
        "upstreams": {"app": {"servers": ["127.0.0.1:8001"]}},
        "status": {},
        "caches": {"api": {}},
        "routes": [{"prefix": "/", "upstream": "app"}, {"prefix": "/api/", "upstream": "app", "cache": "api"}],
    }, tmp_path / "proxy.toml")


def test_a_forward_carries_what_its_cache_does(cached):
    assert decide(cached, "GET", "/other").cache is None  # a route without a cache: as before
    lookup = decide(cached, "GET", "/api/x?y=1").cache
    assert (lookup.cache, lookup.mode, lookup.key) == ("api", "lookup", b"http127.0.0.1:8080/api/x?y=1")
    assert decide(cached, "POST", "/api/x").cache.mode == "invalidate"
    assert decide(cached, "GET", "/api/x", headers=[("Authorization", "Basic eDp5")]).cache.mode == "bypass"
    upgrade = decide(cached, "GET", "/api/ws", headers=[("Connection", "Upgrade"), ("Upgrade", "websocket")])
    assert upgrade.upgrade is not None and upgrade.cache is None  # a tunnel is never cached


def test_purge_from_the_status_networks_only(cached):
    assert decide(cached, "PURGE", "/api/x") == Purge(("api",), uri=b"http://127.0.0.1:8080/api/x")
    refused = decide(cached, "PURGE", "/api/x", conn=FAR)
    assert type(refused) is Reply and refused.status == 405
    assert type(decide(cached, "PURGE", "/other")) is Forward  # no cache on that route: the app's business


def test_the_cache_page_purges_a_key(cached):
    assert decide(cached, "DELETE", "/_proxy/cache?key=http%3A%2F%2Fh%2Fa*") == Purge(("api",), key=b"http://h/a*")
    assert decide(cached, "DELETE", "/_proxy/cache").status == 400
    assert decide(cached, "GET", "/_proxy/cache?key=k").status == 405
    assert decide(cached, "DELETE", "/_proxy/cache?key=k", conn=FAR).status == 404
