"""Per-route request policy against real sockets: redirects, path rewriting, header rules, error pages,
allow/deny, basic auth, trusted proxies, connection limits. (Rate limits: test_rate_limits.py.)

Clients connect from chosen loopback addresses (127.0.0.2, 127.0.0.9...: all of 127.0.0.0/8 is this
machine), so the proxy sees different peers without any other host."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import threading

import bcrypt
import pytest

from tests.h2client import H2Client
from tests.helpers import ProxyProcess, RecordingUpstream, raw_request, status_of, wait_until

CONFIG = """
[server]
listen = ["127.0.0.1:0"]
h2c = true
trusted_proxies = ["127.0.0.5/32"]
[limits]
max_body_bytes = 100
[upstreams.app]
servers = ["{upstream}"]
[upstreams.down]
servers = ["127.0.0.1:{closed}"]
connect_timeout = 1.0

[[routes]]
prefix = "/"
static = "public"
error_pages = {{ 404 = "errors/404.html" }}
response_headers = {{ set = {{ "X-Frame-Options" = "DENY" }} }}

[[routes]]
prefix = "/old/"
redirect = "https://new.example.test/{{path}}?from={{host}}&{{query}}"
redirect_status = 301
[[routes]]
prefix = "/r302/"
redirect = "{{scheme}}://{{host}}{{uri}}"
[[routes]]
prefix = "/r303/"
redirect = "/seen?id={{request_id}}&ip={{client_ip}}"
redirect_status = 303
[[routes]]
prefix = "/r307/"
redirect = "/elsewhere"
redirect_status = 307
[[routes]]
prefix = "/r308/"
redirect = "/elsewhere"
redirect_status = 308

[[routes]]
prefix = "/api/"
upstream = "app"
strip_prefix = true
upstream_prefix = "/v2/"
request_headers = {{ set = {{ "X-Site" = "shop", "X-Who" = "{{client_ip}} {{request_id}}" }}, remove = ["X-Debug"] }}
response_headers = {{ set = {{ "X-Frame-Options" = "DENY" }}, add = {{ "X-Served-For" = "{{client_ip}}" }}, remove = ["X-Powered-By"] }}
error_pages = {{ "5xx" = "errors/5xx.html", 413 = "errors/413.html" }}

[[routes]]
prefix = "/plain/"
upstream = "app"

[[routes]]
prefix = "/down/"
upstream = "down"
error_pages = {{ 502 = "errors/502.html", "5xx" = "errors/5xx.html" }}

[[routes]]
prefix = "/caught/"
upstream = "app"
error_pages = {{ "5xx" = "errors/5xx.html" }}
intercept_errors = true

[[routes]]
prefix = "/local/"
upstream = "app"
allow = ["127.0.0.0/8", "::1/128"]
deny = ["127.0.0.9/32"]

[[routes]]
prefix = "/office/"
upstream = "app"
allow = ["10.0.0.0/8"]
error_pages = {{ 403 = "errors/403.html" }}

[[routes]]
prefix = "/private/"
upstream = "app"
basic_auth = {{ realm = "shop", users_file = "htpasswd" }}

[[routes]]
prefix = "/passed/"
upstream = "app"
basic_auth = {{ realm = "shop", users_file = "htpasswd", forward_auth = true }}

[[routes]]
prefix = "/few/"
upstream = "app"
conn_limit = 2
[[routes]]
prefix = "/few503/"
upstream = "app"
conn_limit = 1
conn_limit_status = 503
"""

PAGES = {"404": "<h1>custom 404</h1>", "5xx": "<h1>custom 5xx</h1>", "502": "<h1>custom 502</h1>",
         "413": "<h1>custom 413</h1>", "403": "<h1>custom 403</h1>"}


class Upstream(RecordingUpstream):
    """Answers 200 with an X-Powered-By header; /v2/fail and /caught/ 500 with a body of its own;
    paths with "slow" wait until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = 0
        super().__init__(self.answer)

    def answer(self, raw: bytes) -> bytes:
        line = raw.split(b"\r\n", 1)[0]
        if b"slow" in line:
            self.waiting += 1
            self.release.wait(20)
            self.waiting -= 1
        if b"fail" in line or b"/caught/" in line:
            return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 11\r\n\r\nstack trace"
        return b"HTTP/1.1 200 OK\r\nX-Powered-By: PHP/5\r\nContent-Length: 2\r\n\r\nok"

    def last(self) -> bytes:
        return self.received[-1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("policy")
    (folder / "public").mkdir()
    (folder / "public" / "index.html").write_text("home")
    (folder / "errors").mkdir()
    for code, body in PAGES.items():
        (folder / "errors" / f"{code}.html").write_text(body)
    hashed = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
    (folder / "htpasswd").write_text(f"alice:{hashed}\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens there once this closes
    upstream = Upstream()
    proxy = ProxyProcess(folder, CONFIG.format(upstream=upstream.address, closed=closed))
    yield proxy, upstream
    upstream.release.set()
    proxy.stop()
    upstream.close()


def request(port: int, raw: bytes, source: str = "127.0.0.1") -> bytes:
    """One request from ``source`` (a loopback address), the whole answer (Connection: close)."""
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def get(port: int, path: str, *headers: str, source: str = "127.0.0.1", method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: shop.example.test", "Connection: close", *headers]
    return request(port, ("\r\n".join(lines) + "\r\n\r\n").encode(), source)


def header(answer: bytes, name: str) -> str | None:
    match = re.search(rb"\r\n" + name.lower().encode() + rb": ([^\r]*)\r\n", answer.split(b"\r\n\r\n")[0] + b"\r\n")
    return match[1].decode() if match else None


def body(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- redirects ----------------------------------------------------------------

@pytest.mark.parametrize("path, status, location", [
    ("/old/a/b%20c?x=1", 301, "https://new.example.test/a/b%20c?from=shop.example.test&x=1"),
    ("/r302/z?q", 302, "http://shop.example.test/r302/z?q"),
    ("/r307/", 307, "/elsewhere"),
    ("/r308/", 308, "/elsewhere"),
])
def test_redirects(stack, path, status, location):
    proxy, upstream = stack
    before = len(upstream.received)
    answer = get(proxy.port, path)
    assert status_of(answer) == status and header(answer, "location") == location
    assert len(upstream.received) == before


def test_redirect_placeholders_for_request_id_and_client(stack):
    proxy, _ = stack
    answer = get(proxy.port, "/r303/", "X-Request-ID: abc-123")
    assert status_of(answer) == 303 and header(answer, "location") == "/seen?id=abc-123&ip=127.0.0.1"


# --- rewriting and header rules -------------------------------------------------

def test_strip_prefix_and_upstream_prefix_keep_the_query(stack):
    proxy, upstream = stack
    answer = get(proxy.port, "/api/items/a%2Fb?q=1&r=%20x", "X-Debug: yes", "X-Request-ID: rid-7")
    assert status_of(answer) == 200
    sent = upstream.last()
    assert sent.startswith(b"GET /v2/items/a%2Fb?q=1&r=%20x HTTP/1.1\r\n")
    assert b"\r\nx-site: shop\r\n" in sent and b"x-debug" not in sent.lower()
    assert b"\r\nx-who: 127.0.0.1 rid-7\r\n" in sent


def test_a_route_without_rewriting_forwards_the_target_as_sent(stack):
    proxy, upstream = stack
    assert status_of(get(proxy.port, "/plain/a?b", "X-Debug: yes")) == 200
    assert upstream.last().startswith(b"GET /plain/a?b HTTP/1.1\r\n") and b"x-debug: yes" in upstream.last()


def test_response_header_rules_apply_to_upstream_answers_and_to_the_proxys_own(stack):
    proxy, _ = stack
    answer = get(proxy.port, "/api/x", source="127.0.0.2")
    assert header(answer, "x-frame-options") == "DENY" and header(answer, "x-powered-by") is None
    assert header(answer, "x-served-for") == "127.0.0.2"
    assert header(get(proxy.port, "/plain/x"), "x-powered-by") == "PHP/5"  # no rule there
    missing = get(proxy.port, "/nothing-here")
    assert status_of(missing) == 404 and header(missing, "x-frame-options") == "DENY"  # "always", as nginx says


def test_a_routes_policy_applies_to_http2_streams_too(stack):
    """Over HTTP/2 (h2c on this listener): redirects, header rules, error pages (for a head refused before any
    decision too), basic auth with its check in a thread."""
    proxy, upstream = stack
    auth = "Basic " + base64.b64encode(b"alice:wonderland").decode()
    with H2Client(proxy.port, tls=False, authority=b"shop.example.test") as client:
        moved = client.request("GET", "/old/a?x=1")
        assert (moved.status, moved.header(b"location")) == (
            301, b"https://new.example.test/a?from=shop.example.test&x=1")
        ruled = client.request("GET", "/api/x")
        assert ruled.status == 200 and ruled.header(b"x-frame-options") == b"DENY"
        assert ruled.header(b"x-powered-by") is None and ruled.header(b"x-served-for") == b"127.0.0.1"
        missing = client.request("GET", "/nothing-here")
        assert (missing.status, bytes(missing.body)) == (404, PAGES["404"].encode())
        large = client.request("POST", "/api/x", [("content-length", "500")], b"x" * 500)
        assert (large.status, bytes(large.body)) == (413, PAGES["413"].encode())
        assert large.header(b"x-frame-options") == b"DENY"
        assert client.request("GET", "/private/x").status == 401
        assert client.request("GET", "/private/x", [("authorization", auth)]).status == 200
        assert b"authorization" not in upstream.last().lower()


# --- error pages ----------------------------------------------------------------

def test_error_page_for_a_missing_static_file(stack):
    proxy, _ = stack
    answer = get(proxy.port, "/nothing-here")
    assert status_of(answer) == 404 and body(answer) == PAGES["404"].encode()
    assert header(answer, "content-type") == "text/html; charset=utf-8"
    head = get(proxy.port, "/nothing-here", method="HEAD")
    assert status_of(head) == 404 and body(head) == b""


def test_error_page_for_an_upstream_that_is_down(stack):
    proxy, _ = stack
    answer = get(proxy.port, "/down/x")
    assert status_of(answer) == 502 and body(answer) == PAGES["502"].encode()


def test_error_page_for_a_body_too_large(stack):
    proxy, _ = stack
    answer = request(proxy.port, b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n\r\n" + b"x" * 500)
    assert status_of(answer) == 413 and body(answer) == PAGES["413"].encode()
    assert header(answer, "x-frame-options") == "DENY"


def test_upstream_errors_pass_unless_intercepted(stack):
    proxy, _ = stack
    passed = get(proxy.port, "/api/fail")
    assert status_of(passed) == 500 and body(passed) == b"stack trace"
    caught = get(proxy.port, "/caught/x")
    assert status_of(caught) == 500 and body(caught) == PAGES["5xx"].encode()
    assert status_of(get(proxy.port, "/caught/x")) == 500  # and the next one too (the connection was replaced)


# --- access control and trusted proxies -------------------------------------------

@pytest.mark.parametrize("source, status", [("127.0.0.1", 200), ("127.0.0.2", 200), ("127.0.0.9", 403)])
def test_deny_wins_over_allow(stack, source, status):
    proxy, _ = stack
    assert status_of(get(proxy.port, "/local/x", source=source)) == status


def test_allow_refuses_everyone_else_with_its_page(stack):
    proxy, _ = stack
    answer = get(proxy.port, "/office/x")
    assert status_of(answer) == 403 and body(answer) == PAGES["403"].encode()


def test_behind_a_trusted_proxy_the_forwarded_client_counts(stack):
    proxy, upstream = stack
    lb = "127.0.0.5"  # in trusted_proxies
    assert status_of(get(proxy.port, "/office/x", "X-Forwarded-For: 6.6.6.6, 10.1.2.3", source=lb)) == 200
    sent = upstream.last()
    assert b"\r\nx-forwarded-for: 10.1.2.3\r\n" in sent and b"\r\nx-real-ip: 10.1.2.3\r\n" in sent
    assert status_of(get(proxy.port, "/local/x", "X-Forwarded-For: 127.0.0.9", source=lb)) == 403
    # From anywhere else X-Forwarded-For is the client's own say: ignored.
    assert status_of(get(proxy.port, "/office/x", "X-Forwarded-For: 10.1.2.3", source="127.0.0.6")) == 403
    wait_until(lambda: any(line.startswith("10.1.2.3 ") for line in proxy.access_lines()), 5,
               what="the access log line with the forwarded client")


# --- basic auth ------------------------------------------------------------------

def test_basic_auth_asks_then_admits_without_forwarding_the_password(stack):
    proxy, upstream = stack
    asked = get(proxy.port, "/private/x")
    assert status_of(asked) == 401 and header(asked, "www-authenticate") == 'Basic realm="shop", charset="UTF-8"'
    before = len(upstream.received)
    assert status_of(get(proxy.port, "/private/x", basic("alice", "nope"))) == 401
    assert status_of(get(proxy.port, "/private/x", basic("mallory", "wonderland"))) == 401
    assert len(upstream.received) == before
    proxy.wait_for_line(r"basic auth failed \(wrong password\) for user 'alice' from 127\.0\.0\.1: GET /private/x")
    proxy.wait_for_line(r"basic auth failed \(unknown user\) for user 'mallory'")
    assert status_of(get(proxy.port, "/private/x", basic("alice", "wonderland"))) == 200
    assert b"authorization" not in upstream.last().lower()


def test_forward_auth_passes_the_header_on(stack):
    proxy, upstream = stack
    assert status_of(get(proxy.port, "/passed/x", basic("alice", "wonderland"))) == 200
    assert b"\r\nauthorization: Basic " in upstream.last()


def test_good_credentials_on_a_kept_alive_connection(stack):
    proxy, upstream = stack
    line = f"GET /private/k HTTP/1.1\r\nHost: a\r\n{basic('alice', 'wonderland')}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(line)
            answer = b""
            while not answer.endswith(b"ok"):
                answer += sock.recv(65536)
            assert status_of(answer) == 200


# --- connection limits --------------------------------------------------------------

@pytest.mark.parametrize("path, limit, status", [("/few/slow", 2, 429), ("/few503/slow", 1, 503)])
def test_conn_limit_refuses_beyond_the_requests_in_progress(stack, path, limit, status):
    proxy, upstream = stack
    upstream.release.clear()
    results: list[int | None] = []
    threads = [threading.Thread(target=lambda: results.append(status_of(get(proxy.port, path))))
               for _ in range(limit)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: upstream.waiting == limit, 10, what="the slow requests to reach the upstream")
        refused = get(proxy.port, path.replace("slow", "quick"))
        assert status_of(refused) == status
        assert status_of(get(proxy.port, path.replace("slow", "quick"), source="127.0.0.3")) == 200  # another client
    finally:
        upstream.release.set()
        for thread in threads:
            thread.join(20)
    assert results == [200] * limit
    assert status_of(get(proxy.port, path)) == 200  # released when they ended


def test_conn_limit_counts_are_forgotten_when_a_worker_dies_holding_them(start_proxy):
    """A worker killed in the middle of a request can never give its count back: the master resets the
    counts, so the route is not closed to that client for good."""
    from tests.integration.test_processes import worker_pids

    upstream = Upstream()
    try:
        proxy = start_proxy(f"""
[server]
listen = ["127.0.0.1:0"]
workers = 1
[upstreams.app]
servers = ["{upstream.address}"]
[[routes]]
prefix = "/"
upstream = "app"
conn_limit = 1
""")
        wait_until(lambda: worker_pids(proxy), what="the worker")
        [first] = worker_pids(proxy)
        held = threading.Thread(target=lambda: request(proxy.port, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"))
        held.start()
        wait_until(lambda: upstream.waiting == 1, 10, what="the slow request to reach the upstream")
        assert status_of(get(proxy.port, "/quick")) == 429
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(worker_pids(proxy)) == 2, what="a new worker")
        wait_until(lambda: status_of(get(proxy.port, "/quick")) == 200, 10, what="the route to admit the client")
    finally:
        upstream.release.set()
        upstream.close()


# --- where the client address comes from: PROXY headers and unix sockets with trusted_proxies ------------

BEHIND = """
[server]
listen = [{{ address = "127.0.0.1:0", proxy_protocol = true }}, "unix:{sock}"]
trusted_proxies = ["10.0.0.0/8", "unix:"]
[upstreams.app]
servers = ["{upstream}"]
[[routes]]
prefix = "/office/"
upstream = "app"
allow = ["203.0.113.0/24"]
[[routes]]
prefix = "/local/"
upstream = "app"
allow = ["unix:"]
"""


def test_trusted_proxies_read_on_from_the_proxy_headers_client_and_from_unix_sockets(start_proxy, tmp_path):
    upstream = Upstream()
    try:
        sock = tmp_path / "lb.sock"
        proxy = start_proxy(BEHIND.format(sock=sock, upstream=upstream.address))
        proxy.wait_for_line(rf"listening on unix:{sock}")

        def ask(where, path: str, proxy_header: bytes, *headers: bytes) -> bytes:
            lines = [b"GET " + path.encode() + b" HTTP/1.1", b"Host: shop.example.test", b"Connection: close", *headers]
            return raw_request(where, proxy_header + b"\r\n".join(lines) + b"\r\n\r\n")

        balancer = b"PROXY TCP4 10.0.0.1 10.0.0.2 51234 80\r\n"  # a trusted balancer, by its PROXY header
        forwarded = b"X-Forwarded-For: 198.51.100.1, 203.0.113.7"
        assert status_of(ask(proxy.port, "/office/x", balancer, forwarded)) == 200
        assert b"\r\nx-forwarded-for: 203.0.113.7\r\n" in upstream.last()
        # The PROXY header names a client that is not trusted: its X-Forwarded-For is its own say.
        stranger = b"PROXY TCP4 198.51.100.9 10.0.0.2 51234 80\r\n"
        assert status_of(ask(proxy.port, "/office/x", stranger, forwarded)) == 403
        # "unix:" in trusted_proxies: a balancer on this host, over the socket.
        assert status_of(ask(str(sock), "/office/x", b"", b"X-Forwarded-For: 203.0.113.8")) == 200
        assert b"\r\nx-forwarded-for: 203.0.113.8\r\n" in upstream.last()
        # "unix:" in allow: the socket's own clients, and nobody over TCP.
        assert status_of(ask(str(sock), "/local/x", b"")) == 200
        assert status_of(ask(proxy.port, "/local/x", balancer)) == 403
    finally:
        upstream.close()
