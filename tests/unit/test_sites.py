"""Virtual hosts in decide(): the site a Host names, wildcards, the default site, 404 and 421."""

from __future__ import annotations

import pytest

from proxy import config
from proxy.explain import build_request, parse
from proxy.http.decide import ConnFacts, Decider, Reply, Static


@pytest.fixture
def cfg(tmp_path):
    for name in ("shop", "static", "fallback"):
        (tmp_path / name).mkdir()
    return config.from_dict({"sites": [
        {"names": ["shop.example.test", "*.shop.example.test"], "routes": [{"prefix": "/", "static": "shop"}]},
        {"names": ["static.example.test"], "routes": [{"prefix": "/", "static": "static"},
                                                       {"prefix": "/old/", "redirect": "/new/{path}"}]},
    ]}, tmp_path / "proxy.toml")


def folder_for(cfg, host, conn=ConnFacts(b"http", "127.0.0.1", b"127.0.0.1:8080")):
    action = Decider(cfg).decide(parse(cfg, build_request("GET", "/a", [("Host", host)], "x")), conn)
    return action.route.static.name if type(action) is Static else action.status


def test_exact_and_one_label_wildcard_names(cfg):
    assert folder_for(cfg, "shop.example.test") == "shop"
    assert folder_for(cfg, "SHOP.example.test.:8080") == "shop"  # case, trailing dot and port do not matter
    assert folder_for(cfg, "www.shop.example.test") == "shop"
    assert folder_for(cfg, "a.b.shop.example.test") == 404  # a wildcard stands for one label
    assert folder_for(cfg, "static.example.test") == "static"
    assert folder_for(cfg, "other.test") == 404


def test_each_site_has_its_own_routes(cfg):
    decider = Decider(cfg)
    request = parse(cfg, build_request("GET", "/old/x", [("Host", "static.example.test")], "x"))
    assert decider.decide(request, ConnFacts(b"http", "127.0.0.1", b"l")).status == 302
    request = parse(cfg, build_request("GET", "/old/x", [("Host", "shop.example.test")], "x"))
    assert type(decider.decide(request, ConnFacts(b"http", "127.0.0.1", b"l"))) is Static


def test_default_site_takes_unknown_hosts(tmp_path, cfg):
    data = {"sites": [{"names": ["a.test"], "routes": [{"prefix": "/", "static": "shop"}]},
                      {"default": True, "routes": [{"prefix": "/", "static": "fallback"}]}]}
    with_default = config.from_dict(data, tmp_path / "proxy.toml")
    assert folder_for(with_default, "a.test") == "shop"
    assert folder_for(with_default, "unknown.test") == "fallback"
    assert folder_for(with_default, "127.0.0.1:8080") == "fallback"


def test_unknown_host_over_tls_gets_421_when_sni_differs(cfg):
    tls = ConnFacts(b"https", "127.0.0.1", b"127.0.0.1:8443", server_name="shop.example.test")
    assert folder_for(cfg, "other.test", tls) == 421
    same = ConnFacts(b"https", "127.0.0.1", b"127.0.0.1:8443", server_name="other.test")
    assert folder_for(cfg, "other.test", same) == 404
    assert folder_for(cfg, "other.test", ConnFacts(b"https", "127.0.0.1", b"l")) == 404  # no SNI at all


def test_top_level_routes_are_one_default_site(tmp_path):
    (tmp_path / "www").mkdir()
    cfg = config.from_dict({"routes": [{"prefix": "/", "static": "www"}]}, tmp_path / "proxy.toml")
    assert len(cfg.sites) == 1 and cfg.sites[0].default and cfg.sites[0].routes == cfg.routes
    decider = Decider(cfg)
    assert decider.sites.only is not None  # no lookup per request
    assert folder_for(cfg, "anything.test") == "www"


def test_site_certificates_become_sni_entries(tmp_path, ca):
    ca.issue_cert("shop.example.test").private_key_and_cert_chain_pem.write_to_path(tmp_path / "shop.pem")
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(tmp_path / "default.pem")
    (tmp_path / "shop").mkdir()
    cfg = config.from_dict({"tls": {"certificate": "default.pem"}, "sites": [
        {"names": ["shop.example.test"], "certificate": "shop.pem", "routes": [{"prefix": "/", "static": "shop"}]},
    ]}, tmp_path / "proxy.toml")
    assert [(s.where, s.names) for s in cfg.tls.sites] == [("sites[0]", ("shop.example.test",))]


def test_old_tls_sites_with_new_sites_is_one_clear_error(tmp_path, ca):
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(tmp_path / "default.pem")
    with pytest.raises(config.ConfigError, match=r"tls.sites: with \[\[sites\]\], give each site's certificate in "
                                                 r"its own table"):
        config.from_dict({"tls": {"certificate": "default.pem", "sites": [
            {"names": ["a.test"], "certificate": "default.pem"}]},
            "sites": [{"names": ["a.test"], "routes": []}]}, tmp_path / "proxy.toml")


@pytest.fixture(scope="module")
def ca():
    import trustme

    return trustme.CA()
