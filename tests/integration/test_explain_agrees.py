"""``proxy explain`` against the running server: a table of requests, each sent for real and explained."""

from __future__ import annotations

import base64
import socket

import bcrypt
import pytest

from proxy import config
from proxy.explain import explain_bytes
from tests.helpers import RecordingUpstream, status_of

CONFIG = """
[server]
listen = ["127.0.0.1:0"]
trusted_proxies = ["127.0.0.1/32"]
[log]
access = "off"
[status]
[upstreams.app]
servers = ["{upstream}"]
[upstreams.plain]
servers = ["{upstream}"]
upgrade = []
[rate_limits.api]
rate = "100r/s"
burst = 10

[[sites]]
names = ["t"]
default = true
[[sites.routes]]
prefix = "/"
static = "www"
upstream = "app"
[[sites.routes]]
prefix = "/only/"
static = "www/only"
[[sites.routes]]
prefix = "/plain/"
upstream = "plain"
[[sites.routes]]
prefix = "/old/"
redirect = "https://{{host}}/new/{{path}}"
redirect_status = 308
[[sites.routes]]
prefix = "/api/"
upstream = "app"
strip_prefix = true
upstream_prefix = "/v2/"
request_headers = {{ set = {{ "X-Site" = "t" }}, remove = ["X-Debug"] }}
response_headers = {{ set = {{ "X-Frame-Options" = "DENY" }} }}
rate_limit = "api"
conn_limit = 5
[[sites.routes]]
prefix = "/local/"
upstream = "app"
allow = ["127.0.0.0/8"]
deny = ["127.0.0.9/32"]
[[sites.routes]]
prefix = "/private/"
static = "www"
upstream = "app"
basic_auth = {{ realm = "t", users_file = "htpasswd" }}
error_pages = {{ 401 = "www/file.txt" }}

[[sites]]
names = ["other.test", "*.other.test"]
[[sites.routes]]
prefix = "/"
redirect = "/elsewhere{{uri}}"
"""

GOOD = "Authorization: Basic " + base64.b64encode(b"alice:wonderland").decode()
BAD = "Authorization: Basic " + base64.b64encode(b"alice:guess").decode()

TABLE = [
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",  # the folder's index.html
    b"GET /file.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    b"HEAD /file.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /file.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=0-1\r\n\r\n",
    b"GET /file.txt HTTP/1.1\r\nHost: t\r\nIf-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n\r\n",
    b"POST /file.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",  # try_files: other methods go upstream
    b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /only HTTP/1.1\r\nHost: t\r\n\r\n",  # no route for /only without the slash: the / route's folder
    b"GET /only/ HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /only/missing HTTP/1.1\r\nHost: t\r\n\r\n",
    b"DELETE /only/a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /plain/x HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /plain/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /_proxy/status HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /_proxy/metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    b"TRACE / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /%00 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /../etc/passwd HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /a/../file.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.0\r\n\r\n",
    # sites: another site by Host (its own routes), and the default one for a Host no site names
    b"GET /file.txt HTTP/1.1\r\nHost: other.test\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: www.other.test:8080\r\n\r\n",
    b"GET /file.txt HTTP/1.1\r\nHost: a.b.other.test\r\n\r\n",
    # a redirect, a rewritten and rate and conn limited forward with header rules
    b"GET /old/a?b HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /old/a HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx",
    b"GET /api/x?q=1 HTTP/1.1\r\nHost: t\r\nX-Debug: 1\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
    # allow/deny, with the client read from X-Forwarded-For (127.0.0.1 is a trusted proxy)
    b"GET /local/x HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /local/x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 127.0.0.9\r\n\r\n",
    b"GET /local/x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n",
    b"GET /local/x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.9.9.9, 127.0.0.2\r\n\r\n",
    # basic auth: none, wrong, good (a static file, or forwarded when there is none)
    b"GET /private/file.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    f"GET /private/file.txt HTTP/1.1\r\nHost: t\r\n{BAD}\r\n\r\n".encode(),
    f"GET /private/file.txt HTTP/1.1\r\nHost: t\r\n{GOOD}\r\n\r\n".encode(),
    f"GET /private/nothing HTTP/1.1\r\nHost: t\r\n{GOOD}\r\n\r\n".encode(),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agree")
    (folder / "www" / "only").mkdir(parents=True)
    (folder / "www" / "index.html").write_text("<p>index</p>")
    (folder / "www" / "file.txt").write_text("a file\n")
    (folder / "www" / "only" / "a.txt").write_text("a\n")
    (folder / "www" / "private").mkdir()
    (folder / "www" / "private" / "file.txt").write_text("secret\n")
    hashed = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode()
    (folder / "htpasswd").write_text(f"alice:{hashed}\n")
    upstream = RecordingUpstream()
    text = CONFIG.format(upstream=upstream.address)
    from tests.helpers import ProxyProcess

    proxy = ProxyProcess(folder, text)
    (folder / "explain.toml").write_text(text)
    yield proxy, upstream, config.load(folder / "explain.toml")
    proxy.stop()
    upstream.close()


def _answer(port: int, raw: bytes) -> int | None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return status_of(data)


@pytest.mark.parametrize("raw", TABLE, ids=[r.split(b"\r\n")[0].decode() for r in TABLE])
def test_explain_agrees_with_the_server(stack, raw):
    proxy, upstream, cfg = stack
    told = explain_bytes(cfg, raw)
    before = len(upstream.received)
    status = _answer(proxy.port, raw)
    reached = len(upstream.received) > before
    assert reached is told.forwarded, f"server {'forwarded' if reached else 'answered'} it:\n{told}"
    if not told.forwarded:
        assert status == told.status, f"the server answered {status}:\n{told}"
