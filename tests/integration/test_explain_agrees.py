"""``proxy explain`` against the running server: a table of requests, each sent for real and explained."""

from __future__ import annotations

import base64
import gzip
import re
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
prefix = "/zip/"
static = "www/zip"
autoindex = true
compress = true
error_pages = {{ 404 = "www/zip/page.html", 412 = "www/zip/page.html" }}
response_headers = {{ set = {{ "X-Frame-Options" = "DENY" }} }}
[[sites.routes]]
prefix = "/zip-local/"
upstream = "app"
compress = true
allow = ["10.0.0.0/8"]
error_pages = {{ 403 = "www/zip/page.html" }}
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
compress = true

[[sites.routes]]
prefix = "/cached/"
upstream = "app"
cache = "c"

[[sites]]
names = ["other.test", "*.other.test"]
[[sites.routes]]
prefix = "/"
redirect = "/elsewhere{{uri}}"

[caches.c]
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
    # A route that compresses: the coding explain names is the one the server sends.
    b"GET /zip/page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",
    b"GET /zip/page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip;q=0.5, br, zstd\r\n\r\n",
    b"GET /zip/page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: zstd;q=0.1, br;q=0.9\r\n\r\n",
    b"GET /zip/page.html HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /zip/page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip;q=0, identity\r\n\r\n",
    b"HEAD /zip/page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: br\r\n\r\n",
    b"GET /zip/page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nRange: bytes=0-9\r\n\r\n",
    b"GET /zip/page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nCache-Control: no-transform\r\n\r\n",
    b"GET /zip/page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n"
    b"If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n\r\n",
    b"GET /zip/app.js HTTP/1.1\r\nHost: t\r\nAccept-Encoding: br, gzip\r\n\r\n",  # the .gz sibling wins
    b"GET /zip/app.js HTTP/1.1\r\nHost: t\r\nAccept-Encoding: br\r\n\r\n",  # made on the fly
    b"GET /zip/tiny.txt HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",  # below min_length
    b"GET /zip/photo.png HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",  # a type not listed
    b"GET /zip/big.txt HTTP/1.1\r\nHost: t\r\nAccept-Encoding: zstd\r\n\r\n",  # compressed as it is sent
    b"HEAD /zip/big.txt HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",
    b"GET /zip/many/ HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",  # a listing of 2 KiB and more
    b"GET /zip/missing HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",  # its error page, compressed
    b"GET /zip/missing HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /zip/page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nIf-Match: \"x\"\r\n\r\n",  # 412: its page
    b"GET /zip/many HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",  # the slash added: a small page
    # a refusal by a compressing route's policy: its error page, compressed as the route says
    b"GET /zip-local/x HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",
    b"GET /zip-local/x HTTP/1.1\r\nHost: t\r\nAccept-Encoding: br;q=0.5, zstd\r\n\r\n",
    b"GET /zip-local/x HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /zip-local/x HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n",
    # A route with a cache: the recording upstream's answers say nothing about caching, so none is stored.
    b"GET /cached/x HTTP/1.1\r\nHost: t\r\n\r\n",
    b"HEAD /cached/x HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"a\"\r\n\r\n",
    b"POST /cached/x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
    b"GET /cached/x HTTP/1.1\r\nHost: t\r\nAuthorization: Basic eDp5\r\n\r\n",
    b"GET /_proxy/cache?key=x HTTP/1.1\r\nHost: t\r\n\r\n",
    b"DELETE /_proxy/cache HTTP/1.1\r\nHost: t\r\n\r\n",
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
    # basic auth on a compressing route: a small 401 page, then the file compressed
    f"GET /private/zip/page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n{BAD}\r\n\r\n".encode(),
    f"GET /private/zip/page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n{GOOD}\r\n\r\n".encode(),
]

TEXT = b"".join(b"line %d of a text file that compresses well\n" % i for i in range(30000))  # 1.3 MB


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agree")
    (folder / "www" / "only").mkdir(parents=True)
    (folder / "www" / "index.html").write_text("<p>index</p>")
    (folder / "www" / "file.txt").write_text("a file\n")
    (folder / "www" / "only" / "a.txt").write_text("a\n")
    zipped = folder / "www" / "zip"
    (zipped / "many").mkdir(parents=True)
    (zipped / "page.html").write_bytes(TEXT[:5000])
    (zipped / "big.txt").write_bytes(TEXT)  # too large to keep compressed
    (zipped / "app.js").write_bytes(b"console.log('app.js');\n" * 100)
    (zipped / "app.js.gz").write_bytes(gzip.compress(b"console.log('app.js');\n" * 100))
    (zipped / "tiny.txt").write_bytes(b"small")
    (zipped / "photo.png").write_bytes(TEXT[:5000])
    for i in range(40):
        (zipped / "many" / f"a-file-with-a-long-name-{i:02d}.txt").write_bytes(b"x")
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


def _answer(port: int, raw: bytes) -> tuple[int | None, str | None]:
    """The status of the server's answer and its Content-Encoding."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    coding = re.search(rb"\r\ncontent-encoding: *([^\r]*)\r\n", data.partition(b"\r\n\r\n")[0] + b"\r\n", re.I)
    return status_of(data), coding[1].decode() if coding else None


@pytest.mark.parametrize("raw", TABLE, ids=[r.split(b"\r\n")[0].decode() for r in TABLE])
def test_explain_agrees_with_the_server(stack, raw):
    proxy, upstream, cfg = stack
    told = explain_bytes(cfg, raw)
    before = len(upstream.received)
    status, coding = _answer(proxy.port, raw)
    reached = len(upstream.received) > before
    assert reached is told.forwarded, f"server {'forwarded' if reached else 'answered'} it:\n{told}"
    if not told.forwarded:
        assert status == told.status, f"the server answered {status}:\n{told}"
        assert coding == told.encoding, f"the server answered with Content-Encoding {coding}:\n{told}"
