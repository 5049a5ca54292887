"""Request policy without sockets: placeholders, rewriting, header rules, the shared LRU table, nginx's
limit_req arithmetic, trusted proxies, basic auth and the one-line errors of every new key."""

from __future__ import annotations

import base64
import os
import random

import bcrypt
import pytest

from proxy import config
from proxy.config import ConfigError
from proxy.explain import build_request, parse
from proxy.http.clientip import TrustedProxies
from proxy.http.decide import Check, ConnFacts, Decider, Delayed, Forward, Reply, Static
from proxy.http.placeholders import TemplateError, Vars, compile_template, raw_remainder
from proxy.server.zones import ConnZone, Region, Table, Zones, limit_req

HTTP = ConnFacts(b"http", "127.0.0.1", b"127.0.0.1:8080", 8443)


def head(cfg, method="GET", target="/", headers=()):
    return parse(cfg, build_request(method, target, list(headers), "127.0.0.1:8080"))


def load(tmp_path, data):
    return config.from_dict(data, tmp_path / "proxy.toml")


def basic(user: str, password: str) -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


@pytest.fixture
def users(tmp_path):
    hashed = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
    (tmp_path / "htpasswd").write_text(f"# made with htpasswd -B\nalice:{hashed}\n")
    return "htpasswd"


# --- placeholders ------------------------------------------------------------

@pytest.mark.parametrize("text, problem", [
    ("https://x/\r\nSet-Cookie: a=b", "only printable ASCII"),
    ("https://x/\n", "only printable ASCII"),
    ("https://{hostname}/", "unknown placeholder {hostname}"),
    ("https://{host/", "a brace"),
    ("https://host}/", "a brace"),
])
def test_templates_refuse_what_could_inject_or_is_mistyped(text, problem):
    with pytest.raises(TemplateError, match=problem):
        compile_template(text)


def test_template_expands_each_placeholder(tmp_path):
    cfg = load(tmp_path, {})
    request = head(cfg, "GET", "/old/a%20b/c?x=1&y", [("Host", "Shop.Example.test:8080")])
    values = Vars(request, request.host, b"https", "192.0.2.7", b"rid-1", "/old/")
    template = compile_template("{scheme}|{host}|{uri}|{path}|{query}|{client_ip}|{request_id}")
    assert template.expand(values) == b"https|shop.example.test|/old/a%20b/c?x=1&y|a%20b/c|x=1&y|192.0.2.7|rid-1"
    assert compile_template("plain").literal == b"plain"


def test_path_after_the_prefix_keeps_the_encoding_or_encodes_the_normalised_path(tmp_path):
    cfg = load(tmp_path, {})
    assert raw_remainder(head(cfg, "GET", "/api/a%2Fb?q"), "/api/") == b"a%2Fb"
    # routing matched the decoded path: the raw one does not start with the prefix, so it is encoded again
    assert raw_remainder(head(cfg, "GET", "/%61pi/x%20y"), "/api/") == b"x%20y"
    assert raw_remainder(head(cfg, "GET", "/api/./z/../w"), "/api/") == b"w"


# --- rewriting ----------------------------------------------------------------

@pytest.mark.parametrize("prefix, strip, front, target, expected", [
    ("/api/", True, "", "/api/x?q=1&r", "/x?q=1&r"),
    ("/api/", True, "/v2/", "/api/x/y?q", "/v2/x/y?q"),
    ("/api/", True, "", "/api/", "/"),
    ("/api/", True, "", "/api/?", "/?"),
    ("/api", True, "", "/api/x", "/x"),
    ("/api", True, "/v2", "/api", "/v2"),
    ("/api/", False, "/v2/", "/api/x?q", "/v2/api/x?q"),
    ("/api/", True, "/v2", "/api/x", "/v2/x"),
    ("/api/", True, "", "/api/a%2Fb?x=%20", "/a%2Fb?x=%20"),
])
def test_strip_prefix_and_upstream_prefix_give_the_upstream_target(tmp_path, prefix, strip, front, target,
                                                                   expected):
    cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
                          "routes": [{"prefix": prefix, "upstream": "app", "strip_prefix": strip,
                                      "upstream_prefix": front}]})
    action = Decider(cfg).decide(head(cfg, "GET", target), HTTP)
    assert type(action) is Forward and (action.target or head(cfg, "GET", target).target) == expected.encode()


def test_a_route_without_policy_gets_the_plain_actions(tmp_path):
    cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
                          "routes": [{"prefix": "/", "upstream": "app"}]})
    action = Decider(cfg).decide(head(cfg, "GET", "/x"), HTTP)
    assert type(action) is Forward and action.policy is None and action.target is None


# --- header rules, pages, access ----------------------------------------------

def test_header_rules_remove_then_set_then_add(tmp_path):
    cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}}, "routes": [{
        "prefix": "/", "upstream": "app",
        "request_headers": {"set": {"X-Site": "shop", "Host": "internal"}, "add": {"X-Via": "{client_ip}"},
                            "remove": ["X-Debug"]}}]})
    action = Decider(cfg).decide(head(cfg), HTTP)
    rules = action.policy.policy.request_rules
    headers = [(b"host", b"a"), (b"x-site", b"old"), (b"x-debug", b"1"), (b"x-via", b"p")]
    values = Vars(head(cfg), b"a", b"http", "10.0.0.1", b"r", "/")
    assert rules.apply(headers, values) == [(b"x-via", b"p"), (b"x-site", b"shop"), (b"host", b"internal"),
                                            (b"x-via", b"10.0.0.1")]


def test_allow_and_deny_deny_wins(tmp_path):
    cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}}, "routes": [{
        "prefix": "/", "upstream": "app", "allow": ["127.0.0.0/8", "::1/128"], "deny": ["127.0.0.9/32"]}]})
    decider = Decider(cfg)

    def status(ip):
        action = decider.decide(head(cfg), ConnFacts(b"http", ip, b"l", None))
        return action.status if type(action) is Reply else "forward"

    assert [status(ip) for ip in ("127.0.0.1", "::1", "127.0.0.9", "192.0.2.1")] == ["forward", "forward", 403, 403]


def test_unix_stands_for_the_clients_of_unix_listeners_in_allow_and_deny(tmp_path):
    cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}}, "routes": [
        {"prefix": "/local/", "upstream": "app", "allow": ["unix:"]},
        {"prefix": "/", "upstream": "app", "deny": ["unix:"]}]})
    decider = Decider(cfg)

    def status(path, ip):
        action = decider.decide(head(cfg, target=path), ConnFacts(b"http", ip, b"l", None))
        return action.status if type(action) is Reply else "forward"

    assert [status("/local/x", ip) for ip in ("unix:", "127.0.0.1")] == ["forward", 403]
    assert [status("/x", ip) for ip in ("unix:", "127.0.0.1")] == [403, "forward"]


def test_error_pages_exact_before_class(tmp_path):
    (tmp_path / "404.html").write_text("four")
    (tmp_path / "5xx.html").write_text("five")
    cfg = load(tmp_path, {"routes": [{"prefix": "/", "static": ".", "error_pages": {404: "404.html",
                                                                                       "5xx": "5xx.html"}}]})
    policy = Decider(cfg).decide(head(cfg), HTTP).policy.policy
    assert policy.page(404) == (b"four", b"text/html; charset=utf-8")
    assert policy.page(502)[0] == policy.page(504)[0] == b"five"
    assert policy.page(403) is None


# --- trusted proxies ----------------------------------------------------------

@pytest.mark.parametrize("peer, forwarded, client", [
    ("10.0.0.2", ["203.0.113.5"], "203.0.113.5"),
    ("10.0.0.2", ["198.51.100.1, 203.0.113.5, 10.0.0.7"], "203.0.113.5"),  # right-most untrusted
    ("10.0.0.2", ["198.51.100.1", "203.0.113.5"], "203.0.113.5"),  # several fields are one list
    ("10.0.0.2", ["10.0.0.8, 10.0.0.7"], "10.0.0.8"),  # all trusted: the left-most
    ("10.0.0.2", ["nonsense, 10.0.0.7"], "10.0.0.7"),  # not an address: stop at the last trusted hop
    ("10.0.0.2", [], "10.0.0.2"),
    ("10.0.0.2", ["[2001:db8::1]:443"], "2001:db8::1"),
    ("10.0.0.2", ["203.0.113.5:5555"], "203.0.113.5"),
    ("192.0.2.9", ["203.0.113.5"], "192.0.2.9"),  # not a trusted peer: its X-Forwarded-For means nothing
])
def test_the_client_is_the_right_most_untrusted_address(peer, forwarded, client):
    import ipaddress

    trusted = TrustedProxies((ipaddress.ip_network("10.0.0.0/8"),))
    assert trusted.client(peer, [(b"x-forwarded-for", v.encode()) for v in forwarded]) == client


def test_request_facts_carry_the_real_client_into_decide(tmp_path):
    cfg = load(tmp_path, {"server": {"trusted_proxies": ["127.0.0.1/32"]},
                          "upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
                          "routes": [{"prefix": "/", "upstream": "app", "deny": ["203.0.113.0/24"]}]})
    decider = Decider(cfg)
    request = head(cfg, headers=[("X-Forwarded-For", "203.0.113.5")])
    facts = decider.request_facts(request.headers, HTTP)
    assert (facts.client_ip, facts.peer) == ("203.0.113.5", "127.0.0.1")
    assert decider.decide(request, facts).status == 403
    assert decider.request_facts(head(cfg).headers, HTTP) is HTTP


def test_trusted_unix_listeners_read_x_forwarded_for(tmp_path):
    # A balancer on the same host that reaches the proxy over a unix socket (nginx set_real_ip_from unix:).
    cfg = load(tmp_path, {"server": {"trusted_proxies": ["unix:"]},
                          "upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
                          "routes": [{"prefix": "/", "upstream": "app"}]})
    decider = Decider(cfg)
    request = head(cfg, headers=[("X-Forwarded-For", "203.0.113.5")])
    over_unix = ConnFacts(b"http", "unix:", b"localhost", None)
    assert decider.request_facts(request.headers, over_unix).client_ip == "203.0.113.5"
    assert decider.request_facts(request.headers, HTTP) is HTTP  # 127.0.0.1 is not trusted


# --- basic auth ---------------------------------------------------------------

def test_basic_auth_challenges_checks_off_loop_and_remembers(tmp_path, users):
    cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}}, "routes": [{
        "prefix": "/", "upstream": "app", "basic_auth": {"realm": "shop", "users_file": users}}]})
    decider = Decider(cfg)
    none = decider.decide(head(cfg), HTTP)
    assert none.status == 401 and none.headers == ((b"www-authenticate", b'Basic realm="shop", charset="UTF-8"'),)
    for bad in [("Authorization", "Basic !!!"), ("Authorization", "Bearer x"),
                ("Authorization", "Basic " + base64.b64encode(b"nocolon").decode())]:
        assert decider.decide(head(cfg, headers=[bad]), HTTP).status == 401
    good = head(cfg, headers=[basic("alice", "wonderland")])
    check = decider.decide(good, HTTP)
    assert type(check) is Check and type(check.then) is Forward and check.otherwise.status == 401
    assert check.credentials.verify()
    check.credentials.auth.remember(check.credentials)
    assert type(decider.decide(good, HTTP)) is Forward  # known good: no second bcrypt
    for wrong in (basic("alice", "wrong"), basic("mallory", "wonderland")):
        action = decider.decide(head(cfg, headers=[wrong]), HTTP)
        assert type(action) is Check and not action.credentials.verify()


def test_authorization_is_not_forwarded_unless_asked(tmp_path, users):
    def hidden(forward):
        cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}}, "routes": [{
            "prefix": "/", "upstream": "app",
            "basic_auth": {"users_file": users, "forward_auth": forward}}]})
        rules = Decider(cfg).decide(head(cfg), HTTP).policy.policy.request_rules
        return rules is not None and b"authorization" in rules.drop

    assert hidden(False) and not hidden(True)


# --- the shared LRU table -------------------------------------------------------

def test_table_forgets_the_least_recently_used_key():
    table = Table(bytearray(Table.size(3)), 3)
    for key in (11, 22, 33):
        table.insert(key)
    table.touch(table.find(11))  # 22 is now the least recently used
    table.insert(44)
    assert table.find(22) == -1 and all(table.find(k) >= 0 for k in (11, 33, 44))
    assert table.keys_in_use_order() == [44, 11, 33]


def test_table_agrees_with_a_dict_under_random_use():
    """Colliding keys (a tiny index) and evictions: the index's backward-shift deletion must never lose one."""
    rng = random.Random(7)
    capacity = 16
    table = Table(bytearray(Table.size(capacity)), capacity)
    order: list[int] = []  # the model: least recently used first
    for _ in range(5000):
        key = rng.choice([rng.randrange(64), rng.randrange(-2**63, 2**63)])
        entry = table.find(key)
        assert (entry >= 0) == (key in order)
        if entry >= 0:
            table.touch(entry)
            order.remove(key)
        else:
            table.insert(key)
            if len(order) == capacity:
                order.pop(0)
        order.append(key)
        assert table.used == len(order)
    assert table.keys_in_use_order() == order[::-1]


def test_a_shared_table_is_seen_by_a_forked_process():
    region = Region(Table.size(8), "test")
    zone = ConnZone.__new__(ConnZone)
    zone.region, zone.table = region, Table(region.map, 8)
    assert zone.acquire(5, 2)
    pid = os.fork()
    if pid == 0:  # the child takes the second place and leaves
        os._exit(0 if zone.acquire(5, 2) and not zone.acquire(5, 2) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not zone.acquire(5, 2)
    zone.release(5)
    assert zone.acquire(5, 2)


# --- nginx's limit_req --------------------------------------------------------

def test_limit_req_is_nginx_arithmetic():
    first = limit_req(None, 0.0, rate=1.0, burst=2, delay=0)
    assert first.allowed and first.excess == 0
    assert limit_req(0.0, 0.0, 1.0, 2, 0).excess == 1.0
    assert not limit_req(2.0, 0.0, 1.0, 2, 0).allowed  # 3 beyond the rate > burst 2
    assert limit_req(2.0, 1.0, 1.0, 2, 0).allowed  # one second leaked one request
    assert limit_req(2.0, 0.0, 1.0, 2, 0).retry_after == 1
    assert limit_req(5.0, 0.0, 0.1, 2, 0).retry_after == 40  # 4 requests over, at 0.1 r/s
    held = limit_req(1.0, 0.0, 2.0, 3, 1)  # excess 2 > delay 1: held (2 - 1) / 2 r/s
    assert held.allowed and held.wait == 0.5
    assert limit_req(1.0, 0.0, 2.0, 3, 0).wait == 0.0  # delay 0: nodelay


def test_a_burst_gets_exactly_one_plus_burst(tmp_path):
    cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
                          "rate_limits": {"api": {"rate": "6r/m", "burst": 3}},
                          "routes": [{"prefix": "/", "upstream": "app", "rate_limit": "api"}]})
    decider = Decider(cfg, clock=lambda: 1000.0)
    statuses = [getattr(decider.decide(head(cfg), HTTP), "status", 200) for _ in range(8)]
    assert statuses == [200] * 4 + [429] * 4
    refused = decider.decide(head(cfg), HTTP)
    assert refused.headers == ((b"retry-after", b"10"),)  # one request leaks every 10 s at 6r/m
    other = decider.decide(head(cfg), ConnFacts(b"http", "127.0.0.2", b"l", None))
    assert type(other) is Forward  # another key, another bucket


def test_delay_holds_the_requests_beyond_it(tmp_path):
    cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
                          "rate_limits": {"api": {"rate": "2r/s", "burst": 3, "delay": 1}},
                          "routes": [{"prefix": "/", "upstream": "app", "rate_limit": "api"}]})
    decider = Decider(cfg, clock=lambda: 50.0)
    actions = [decider.decide(head(cfg), HTTP) for _ in range(5)]
    assert [type(a).__name__ for a in actions] == ["Forward", "Forward", "Delayed", "Delayed", "Reply"]
    assert [a.seconds for a in actions[2:4]] == [0.5, 1.0]


def test_rate_limit_by_header_counts_only_requests_with_it(tmp_path):
    cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
                          "rate_limits": {"keys": {"rate": "1r/m", "key": "header:X-Api-Key"}},
                          "routes": [{"prefix": "/", "upstream": "app", "rate_limit": "keys"}]})
    decider = Decider(cfg, clock=lambda: 1.0)
    keyed = head(cfg, headers=[("X-Api-Key", "k1")])
    assert type(decider.decide(keyed, HTTP)) is Forward
    assert decider.decide(keyed, HTTP).status == 429
    assert type(decider.decide(head(cfg), HTTP)) is Forward and type(decider.decide(head(cfg), HTTP)) is Forward


def test_zones_survive_a_new_configuration_with_the_same_name_and_size(tmp_path):
    def cfg(burst, keys=100):
        return load(tmp_path, {"rate_limits": {"api": {"rate": "1r/m", "burst": burst, "max_keys": keys}}})

    zones = Zones()
    zones.prepare(cfg(0))
    first = zones.rate(cfg(0).rate_limits["api"])
    assert first.take(1, 0.0).allowed
    zones.prepare(cfg(5))
    again = zones.rate(cfg(5).rate_limits["api"])
    assert again.table.find(1) >= 0 and again.settings.burst == 5  # same counts, new settings
    zones.prepare(cfg(5, keys=200))
    zones.keep_only(cfg(5, keys=200))
    assert zones.rate(cfg(5, keys=200).rate_limits["api"]).table.find(1) == -1  # another size: a new table


def test_conn_limit_holds_until_released(tmp_path):
    cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
                          "routes": [{"prefix": "/", "upstream": "app", "conn_limit": 1,
                                      "conn_limit_status": 503}]})
    decider = Decider(cfg)
    first = decider.decide(head(cfg), HTTP)
    assert type(first) is Forward and first.policy.hold is not None
    assert decider.decide(head(cfg), HTTP).status == 503
    first.policy.release()
    assert type(decider.decide(head(cfg), HTTP)) is Forward


# --- the new keys' one-line errors ---------------------------------------------

APP = '[upstreams.app]\nservers = ["127.0.0.1:9"]\n'


@pytest.mark.parametrize("text, message", [
    (APP + '[[routes]]\nprefix = "/"\nredirect = "https://x/\\r\\nA: b"\n', "routes[0].redirect: only printable"),
    (APP + '[[routes]]\nprefix = "/"\nredirect = "https://{nope}/"\n', "routes[0].redirect: unknown placeholder"),
    (APP + '[[routes]]\nprefix = "/"\nredirect = "example.test/x"\n', 'routes[0].redirect: expected a URL'),
    (APP + '[[routes]]\nprefix = "/"\nredirect = "/x"\nredirect_status = 200\n',
     "routes[0].redirect_status: expected one of 301, 302, 303, 307, 308"),
    (APP + '[[routes]]\nprefix = "/"\nredirect = "/x"\nupstream = "app"\n', "routes[0].redirect: a redirect answers"),
    ('[[routes]]\nprefix = "/"\nstatic = "."\nstrip_prefix = true\n', "routes[0].strip_prefix: only for a route"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nupstream_prefix = "v2"\n',
     "routes[0].upstream_prefix: expected a URL path prefix"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nrequest_headers = { set = { "Content-Length" = "1" } }\n',
     "routes[0].request_headers.set: Content-Length: Content-Length is a hop-by-hop or framing header"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nrequest_headers = { add = { "Host" = "x" } }\n',
     "routes[0].request_headers.add: Host: Host can only be given in set"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nresponse_headers = { remove = ["Transfer-Encoding"] }\n',
     "routes[0].response_headers.remove: Transfer-Encoding is a hop-by-hop"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nresponse_headers = { set = { "Connection" = "close" } }\n',
     "routes[0].response_headers.set: Connection: Connection is a hop-by-hop"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nresponse_headers = { set = { "X-A" = "a\\nb" } }\n',
     "routes[0].response_headers.set: X-A: only printable ASCII"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nresponse_headers = { set = { "X-A" = "1" }, '
           'remove = ["x-a"] }\n', "routes[0].response_headers.remove: x-a is both in set and in remove"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nerror_pages = { 200 = "x.html" }\n',
     'routes[0].error_pages: 200: expected a status from 400 to 599'),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nerror_pages = { 502 = "missing.html" }\n',
     "routes[0].error_pages: 502: file"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nintercept_errors = true\n',
     "routes[0].intercept_errors: needs error_pages"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nallow = ["10.0.0.0/33"]\n', "routes[0].allow: expected"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nbasic_auth = { realm = "a\\"b", users_file = "u" }\n',
     "routes[0].basic_auth.realm: expected a realm name"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nbasic_auth = { }\n', "routes[0].basic_auth.users_file: missing"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nrate_limit = "api"\n',
     "routes[0].rate_limit: unknown rate limit 'api'"),
    (APP + '[[routes]]\nprefix = "/"\nupstream = "app"\nconn_limit_status = 500\n',
     "routes[0].conn_limit_status: expected one of 429, 503"),
    ('[rate_limits.api]\nrate = "10/s"\n', 'rate_limits.api.rate: expected a rate like "10r/s"'),
    ('[rate_limits.api]\nburst = 1\n', "rate_limits.api.rate: missing"),
    ('[rate_limits.api]\nrate = "1r/s"\nburst = 2\ndelay = 3\n', "rate_limits.api.delay: 3 is more than burst (2)"),
    ('[rate_limits.api]\nrate = "1r/s"\nkey = "cookie"\n', 'rate_limits.api.key: expected "client_ip"'),
    ('[rate_limits.api]\nrate = "1r/s"\nmax_keys = 0\n', "rate_limits.api.max_keys: expected a whole number from 1"),
    ('[server]\ntrusted_proxies = ["proxy"]\n', "server.trusted_proxies: expected a list of an address"),
    ('[server]\nname = "twotier\\n"\n', "server.name: expected a name"),  # no newline into the Server header
    (APP + '[[routes]]\nprefix = "/x\\n"\nupstream = "app"\n', "routes[0].prefix: expected a URL path prefix"),
    ('[[sites]]\nnames = ["a.test"]\n[[sites]]\nnames = ["A.test"]\n', "sites[1].names: 'a.test' is named by sites[0]"),
    ('[[sites]]\ndefault = true\n[[sites]]\ndefault = true\n', "sites[1].default: sites[0] is the default site"),
    ('[[sites]]\nroutes = []\n', "sites[0]: expected names, default = true, or both"),
    ('[[sites]]\nnames = ["bad name"]\n', "sites[0].names: expected a list of a host name"),
    ('[[sites]]\nnames = ["a.test"]\n[[sites.routes]]\nprefix = "/"\n',
     "sites[0].routes[0]: expected static, upstream, both, or redirect"),
    ('[[routes]]\nprefix = "/"\nredirect = "/x"\n[[sites]]\nnames = ["a.test"]\n',
     "routes: with [[sites]], every route belongs to a site"),
    ('[[sites]]\nnames = ["a.test"]\ncertificate = "c.pem"\n', "sites[0].certificate: file"),
])
def test_new_keys_errors_name_the_key(tmp_path, text, message):
    (tmp_path / "u").write_text("")
    (tmp_path / "proxy.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(tmp_path / "proxy.toml")
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_users_file_must_hold_bcrypt_hashes(tmp_path):
    (tmp_path / "htpasswd").write_text("bob:$apr1$abc$def\n")
    (tmp_path / "proxy.toml").write_text(APP + '[[routes]]\nprefix = "/"\nupstream = "app"\n'
                                               'basic_auth = { users_file = "htpasswd" }\n')
    with pytest.raises(ConfigError, match=r"basic_auth.users_file: .* line 1: the hash of 'bob' is not bcrypt; "
                                          r"make one with `htpasswd -B` or `proxy hash-password`"):
        config.load(tmp_path / "proxy.toml")


def test_delayed_and_check_wrap_the_content(tmp_path, users):
    cfg = load(tmp_path, {"upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
                          "rate_limits": {"api": {"rate": "1r/s", "burst": 2, "delay": 1}},
                          "routes": [{"prefix": "/", "static": ".", "upstream": "app", "rate_limit": "api",
                                      "basic_auth": {"users_file": users}}]})
    decider = Decider(cfg, clock=lambda: 3.0)
    request = head(cfg, headers=[basic("alice", "wonderland")])
    actions = [decider.decide(request, HTTP) for _ in range(3)]
    assert type(actions[2]) is Delayed and type(actions[2].then) is Check and type(actions[2].then.then) is Static


def test_with_absolute_paths_reaches_sites_error_pages_and_users_files():
    from pathlib import Path

    data = {"sites": [{"names": ["a.test"], "certificate": "c.pem", "key": "", "routes": [
        {"prefix": "/", "static": "www", "error_pages": {"404": "e/404.html", "5xx": "/abs/5xx.html"},
         "basic_auth": {"realm": "r", "users_file": "htpasswd"}}]}]}
    out = config.with_absolute_paths(data, Path("/etc/twotier"))
    site = out["sites"][0]
    assert (site["certificate"], site["key"]) == ("/etc/twotier/c.pem", "")
    route = site["routes"][0]
    assert route["static"] == "/etc/twotier/www"
    assert route["error_pages"] == {"404": "/etc/twotier/e/404.html", "5xx": "/abs/5xx.html"}
    assert route["basic_auth"] == {"realm": "r", "users_file": "/etc/twotier/htpasswd"}
