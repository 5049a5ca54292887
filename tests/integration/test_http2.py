"""HTTP/2 to clients against the real proxy: every request gets over a stream what it gets over HTTP/1.1.

One proxy per event loop, with a TLS listener (ALPN h2 and http/1.1) and a plain one with h2c on, in front
of a real Gunicorn; a table of requests goes both ways (HTTP/1.1 with http.client, HTTP/2 with the h2 test
client) and the status, the headers that matter and the body must be the same. Then what only HTTP/2 has:
pseudo-headers, connection-specific fields, streaming, trailers, the access log and the status page by
protocol, and the tools nobody here wrote: curl --http2 and nghttp.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

from tests.edge import https_port, write_cert
from tests.h2client import H2Client
from tests.apps.basic import json_records
from tests.helpers import EVENT_LOOPS, ProxyProcess, RecordingUpstream, decoder, free_port, wait_until

BIG = os.urandom(300 * 1024 + 7)
TEXT = b"".join(b"line %d of a text file that compresses well\n" % i for i in range(30000))  # 1.3 MB
SCRIPT = b"console.log('hello from app.js');\n" * 20
TRAILERS = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n")


class StepUpstream:
    """An upstream that sends a chunked response in two parts, the second only once ``proceed`` is set:
    the client can only see the first part if the proxy relays it before the response ends."""

    def __init__(self) -> None:
        self.proceed = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(20)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"6\r\nfirst\n\r\n")
                self.proceed.wait(20)
                conn.sendall(b"7\r\nsecond\n\r\n0\r\n\r\n")
                self.proceed.clear()

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(scope="module", params=EVENT_LOOPS)
def site(request, tmp_path_factory, ca, test_app_gunicorn, ws_gunicorn):
    folder = tmp_path_factory.mktemp("h2")
    write_cert(ca.issue_cert("localhost", "127.0.0.1"), folder, "site")
    static = folder / "static"
    static.mkdir()
    (static / "hello.txt").write_bytes(b"hello\n")
    (static / "big.bin").write_bytes(BIG)
    (static / "app.js").write_bytes(SCRIPT)
    (static / "app.js.gz").write_bytes(gzip.compress(SCRIPT))
    (static / "page.html").write_bytes(TEXT[:40000])  # compressed once, kept with the file
    (static / "big.txt").write_bytes(TEXT)  # compressed as it is sent
    (static / "sub").mkdir()
    (static / "sub" / "index.html").write_bytes(b"<p>sub</p>\n")
    (static / ".env").write_bytes(b"secret")
    public = folder / "public"
    public.mkdir()
    (public / "robots.txt").write_bytes(b"User-agent: *\n")
    trailers = RecordingUpstream(lambda raw: TRAILERS)
    step = StepUpstream()
    proxy = ProxyProcess(folder, f"""
        [server]
        listen = ["127.0.0.1:0"]
        event_loop = "{request.param}"
        h2c = true
        [limits]
        max_header_bytes = "8k"
        max_body_bytes = "64k"
        body_buffer_bytes = "8k"
        [tls]
        listen = ["127.0.0.1:0"]
        certificate = "site.pem"
        key = "site.key"
        [status]
        [upstreams.app]
        servers = ["{test_app_gunicorn.address}"]
        [upstreams.slow]
        servers = ["{test_app_gunicorn.address}"]
        read_timeout = 0.5
        tries = 1
        [upstreams.down]
        servers = ["127.0.0.1:{free_port()}"]
        [upstreams.trailers]
        servers = ["{trailers.address}"]
        [upstreams.step]
        servers = ["{step.address}"]
        [upstreams.ws]
        servers = ["{ws_gunicorn.address}"]
        [[routes]]
        prefix = "/static/"
        static = "static"
        cache_control = "public, max-age=60"
        [[routes]]
        prefix = "/slow"
        upstream = "slow"
        [[routes]]
        prefix = "/down/"
        upstream = "down"
        [[routes]]
        prefix = "/trailers"
        upstream = "trailers"
        [[routes]]
        prefix = "/step"
        upstream = "step"
        [[routes]]
        prefix = "/ws/"
        upstream = "ws"
        [[routes]]
        prefix = "/zip/"
        static = "static"
        compress = true
        [[routes]]
        prefix = "/json"
        upstream = "app"
        compress = true
        [[routes]]
        prefix = "/"
        static = "public"
        upstream = "app"
    """)
    proxy.tls_port = https_port(proxy)
    proxy.step = step
    yield proxy
    proxy.stop()
    trailers.close()
    step.close()


def insecure_context(alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    return context


def over_http11(port: int, method: str, path: str, headers=(), body: bytes | None = None):
    """(status, headers, body) over HTTP/1.1 on the TLS listener: only the headers given, and Host."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=insecure_context(["http/1.1"]), timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", f"localhost:{port}")
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        return response.status, [(k.lower().encode(), v.encode("latin-1")) for k, v in response.getheaders()], data
    finally:
        conn.close()


def over_http2(port: int, method: str, path: str, headers=(), body: bytes | None = None):
    with H2Client(port) as client:
        extra = [(n.lower(), v) for n, v in headers]
        if body is not None:
            extra.append(("content-length", str(len(body))))
        response = client.request(method, path, extra, body)
        assert response.trailers == []  # dropped, as over HTTP/1.1
        return response.status, response.headers, bytes(response.body)


# Headers whose values must agree; the rest are per response (Date, X-Request-ID, Server-Timing) or per
# protocol (Connection, Transfer-Encoding, Keep-Alive exist only in HTTP/1.1).
MATTER = (b"content-type", b"content-length", b"content-range", b"content-encoding", b"etag", b"last-modified",
          b"location", b"allow", b"retry-after", b"cache-control", b"vary", b"accept-ranges", b"via", b"server")


def comparable(status: int, headers, body: bytes, compare_body):
    values = {name: [v for n, v in headers if n == name] for name in MATTER}
    boundary = re.search(rb"boundary=(\S+)", b"".join(values[b"content-type"]))
    if boundary:  # a multipart/byteranges boundary is random per response
        body = body.replace(boundary[1], b"BOUNDARY")
        values[b"content-type"] = [v.replace(boundary[1], b"BOUNDARY") for v in values[b"content-type"]]
    if compare_body == "json":
        seen = json.loads(body)
        seen.pop("pid", None)
        seen["headers"].pop("x-request-id", None)
        body = seen
    elif compare_body is False:
        values.pop(b"content-length")
        body = None
    return status, values, body


# (id, method, path, headers, body, how to compare the body: True, "json" for the echo app, False: not)
CASES = [
    ("static", "GET", "/static/hello.txt", [], None, True),
    ("static-head", "HEAD", "/static/hello.txt", [], None, True),
    ("static-large", "GET", "/static/big.bin", [], None, True),
    ("range", "GET", "/static/big.bin", [("Range", "bytes=10-99")], None, True),
    ("ranges", "GET", "/static/big.bin", [("Range", "bytes=0-9,100-109")], None, True),
    ("range-416", "GET", "/static/big.bin", [("Range", "bytes=99999999-")], None, True),
    ("not-modified", "GET", "/static/hello.txt", [("If-None-Match", "*")], None, True),
    ("ims-304", "GET", "/static/hello.txt", [("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT")], None, True),
    ("precompressed", "GET", "/static/app.js", [("Accept-Encoding", "gzip")], None, True),
    ("identity", "GET", "/static/app.js", [], None, True),
    ("folder-redirect", "GET", "/static/sub", [], None, True),
    ("folder-index", "GET", "/static/sub/", [], None, True),
    ("missing", "GET", "/static/nope.txt", [], None, True),
    ("dotfile", "GET", "/static/.env", [], None, True),
    ("traversal", "GET", "/static/%2e%2e/%2e%2e/etc/passwd", [], None, True),
    ("static-405", "POST", "/static/hello.txt", [], b"x", True),
    ("try-files-file", "GET", "/robots.txt", [], None, True),
    ("forward", "GET", "/echo?a=1", [("X-Custom", "1"), ("X-Forwarded-For", "6.6.6.6")], None, "json"),
    ("forward-head", "HEAD", "/echo", [], None, True),
    ("forward-post", "POST", "/echo", [("Content-Type", "application/octet-stream")], os.urandom(3000), "json"),
    ("forward-post-spooled", "POST", "/echo", [], os.urandom(40000), "json"),
    ("forward-empty-post", "POST", "/echo", [], b"", "json"),
    ("body-too-large", "POST", "/echo", [], os.urandom(70000), True),
    ("streamed", "GET", "/stream?n=5", [], None, True),
    ("big-proxied", "GET", "/big?size=200000", [], None, True),
    ("app-404", "GET", "/nothing-here", [], None, True),
    ("app-503", "GET", "/status?code=503", [], None, True),
    ("upstream-down-502", "GET", "/down/x", [], None, True),
    ("upstream-slow-504", "GET", "/slow?s=2", [], None, True),
    ("trailers-dropped", "GET", "/trailers", [], None, True),
    ("head-too-large-431", "GET", "/echo", [("X-Big", "v" * 9000)], None, True),
    ("trace-405", "TRACE", "/echo", [], None, True),
    ("unknown-method-501", "FOO", "/echo", [], None, True),
    ("expect-417", "GET", "/echo", [("Expect", "magic")], None, True),
    ("options-star", "OPTIONS", "*", [], None, True),
    ("status-page", "GET", "/_proxy/status", [], None, False),
    ("metrics-page", "GET", "/_proxy/metrics", [], None, False),
    ("websocket-route-plain-get", "GET", "/ws/echo", [], None, True),
]


@pytest.mark.parametrize("name, method, path, headers, body, compare_body", CASES, ids=[c[0] for c in CASES])
def test_a_stream_gets_what_the_same_request_gets_over_http11(site, name, method, path, headers, body,
                                                              compare_body):
    one = comparable(*over_http11(site.tls_port, method, path, headers, body), compare_body)
    two = comparable(*over_http2(site.tls_port, method, path, headers, body), compare_body)
    assert two == one


# Compressing routes: a proxied JSON answer with its length, one streamed without, a static file compressed
# once and one compressed as it is sent; each coding, and identity. The stream is longer than the client's
# window (its identity body waits for WINDOW_UPDATEs).
ZIPPED = [("/json?size=50000", json_records(50000)), ("/json-stream?size=300000", None),
          ("/zip/page.html", TEXT[:40000]), ("/zip/big.txt", TEXT)]


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("path, expected", ZIPPED, ids=[p for p, _ in ZIPPED])
def test_a_stream_is_compressed_as_it_asks_and_decodes_to_what_http11_gets(site, path, expected, coding):
    status, plain_headers, plain = over_http11(site.tls_port, "GET", path)
    assert status == 200 and not [v for n, v in plain_headers if n == b"content-encoding"]
    assert expected is None or plain == expected
    asked = [("Accept-Encoding", coding)]
    for status, headers, body in (over_http2(site.tls_port, "GET", path, asked),
                                  over_http11(site.tls_port, "GET", path, asked)):
        fields = dict(headers)
        assert status == 200 and fields[b"content-encoding"] == coding.encode()
        assert fields[b"vary"].lower().count(b"accept-encoding") == 1
        assert len(body) < len(plain) // 4 and decoder(coding)(body) == plain
        if b"content-length" in fields:
            assert int(fields[b"content-length"]) == len(body)
        if b"etag" in fields:
            assert fields[b"etag"].startswith(b'W/"')
    head = comparable(*over_http2(site.tls_port, "HEAD", path, asked), False)
    assert head == comparable(*over_http11(site.tls_port, "HEAD", path, asked), False)
    assert head[1][b"content-encoding"] == [coding.encode()] and head[2] is None


@pytest.mark.parametrize("path, expected", ZIPPED, ids=[p for p, _ in ZIPPED])
@pytest.mark.parametrize("accept", [None, "identity", "gzip;q=0"])
def test_a_stream_that_takes_no_coding_gets_identity_on_a_compressing_route(site, path, expected, accept):
    asked = [("Accept-Encoding", accept)] if accept else []
    status, headers, body = over_http2(site.tls_port, "GET", path, asked)
    fields = dict(headers)
    assert status == 200 and b"content-encoding" not in fields and b"accept-encoding" in fields[b"vary"].lower()
    assert body == (expected if expected is not None else over_http11(site.tls_port, "GET", path)[2])


def test_a_stream_that_waited_for_its_window_is_not_cancelled_later(site):
    """A stream that waited for WINDOW_UPDATE and then sent on was left among the stalled ones with no stall
    time, and the next deadline check cancelled it (RST_STREAM CANCEL after 131,041 bytes, one in 10-60)."""
    full = over_http11(site.tls_port, "GET", "/json-stream?size=300000")[2]
    for _ in range(40):
        with H2Client(site.tls_port) as client:
            response = client.request("GET", "/json-stream?size=300000", [("accept-encoding", "identity")])
        assert (response.reset, bytes(response.body) == full) == (None, True)


def test_many_compressed_streams_at_once_each_decode_to_their_answer(site):
    """Streams compressed by different encoders, interleaved on one connection (and flow control)."""
    with H2Client(site.tls_port) as client:
        ids = {client.start("GET", path, [("accept-encoding", coding)]): (path, expected, coding)
               for path, expected in ZIPPED if expected is not None for coding in ("gzip", "br", "zstd")}
        for stream_id, (path, expected, coding) in ids.items():
            response = client.response(stream_id)
            assert response.status == 200 and response.header(b"content-encoding") == coding.encode(), path
            assert decoder(coding)(bytes(response.body)) == expected, path


def test_the_app_sees_an_https_request_forwarded_as_http11(site):
    with H2Client(site.tls_port) as client:
        response = client.request("GET", "/echo", [("user-agent", "h2-test")])
    seen = json.loads(response.body)
    assert seen["headers"]["x-forwarded-proto"] == "https"
    assert seen["headers"]["host"] == f"localhost:{site.tls_port}"
    assert seen["headers"]["via"] == "1.1 twotier"


def test_alpn_prefers_h2_and_keeps_http11(site):
    for offered, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (["h2"], "h2")):
        with socket.create_connection(("127.0.0.1", site.tls_port), timeout=5) as raw:
            with insecure_context(offered).wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.selected_alpn_protocol() == chosen


def test_h2c_with_prior_knowledge_on_the_plain_listener(site):
    with H2Client(site.port, tls=False) as client:
        response = client.request("GET", "/static/hello.txt")
        assert (response.status, bytes(response.body)) == (200, b"hello\n")
        seen = json.loads(client.request("GET", "/echo").body)
    assert seen["headers"]["x-forwarded-proto"] == "http"
    # HTTP/1.1 on the same listener is untouched, and Upgrade: h2c is still ignored.
    status, _, body = over_plain(site.port, b"GET /static/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, "
                                            b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
    assert (status, body) == (200, b"hello\n")


def over_plain(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])
        while len(body) < length:
            body += sock.recv(65536)
        return int(head.split(b" ")[1]), head, body


def test_many_streams_on_one_connection_each_get_their_answer(site):
    with H2Client(site.tls_port) as client:
        ids = {client.start("GET", f"/echo?n={i}"): i for i in range(40)}
        ids[client.start("GET", "/static/big.bin")] = "big"
        for stream_id, n in ids.items():
            response = client.response(stream_id)
            assert response.status == 200
            if n == "big":
                assert bytes(response.body) == BIG
            else:
                assert json.loads(response.body)["query"] == f"n={n}"


def test_a_streamed_response_is_relayed_before_it_ends(site):
    with H2Client(site.tls_port) as client:
        stream_id = client.start("GET", "/step")
        client.wait(lambda: bytes(client.responses[stream_id].body) == b"first\n")
        assert not client.responses[stream_id].ended
        site.step.proceed.set()
        response = client.response(stream_id)
    assert bytes(response.body) == b"first\nsecond\n"
    assert response.header(b"content-length") is None


@pytest.mark.parametrize("extra, why", [
    ([("connection", "keep-alive")], "connection-specific"),
    ([("transfer-encoding", "chunked")], "connection-specific"),
    ([("upgrade", "websocket")], "connection-specific"),
    ([("X-Upper", "1")], "upper-case name"),
    ([("host", "other.test")], "Host differs from :authority"),
])
def test_malformed_requests_get_400_and_the_connection_goes_on(site, extra, why):
    with H2Client(site.tls_port) as client:
        refused = client.request("GET", "/echo", extra)
        assert refused.status == 400, why
        assert client.request("GET", "/static/hello.txt").status == 200


def test_missing_pseudo_headers_get_400(site):
    with H2Client(site.tls_port) as client:
        refused = client.response(client.start(pseudo=[(b":method", b"GET"), (b":authority", b"localhost")]))
        assert refused.status == 400
        assert client.request("GET", "/static/hello.txt").status == 200


def test_a_body_without_content_length_is_forwarded_with_one(site):
    body = os.urandom(20000)
    with H2Client(site.tls_port) as client:
        response = client.request("POST", "/echo", [], body)
    seen = json.loads(response.body)  # the app read exactly Content-Length bytes: it had one
    assert (seen["body_length"], seen["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())


def test_a_body_over_the_limit_without_content_length_gets_413(site):
    with H2Client(site.tls_port) as client:
        stream_id = client.start("POST", "/echo", [], end=False)
        client.send_body(stream_id, os.urandom(70000), end=False)
        response = client.response(stream_id)
        assert response.status == 413
        assert client.request("GET", "/static/hello.txt").status == 200


def test_expect_100_continue_gets_a_100_first(site):
    with H2Client(site.tls_port) as client:
        stream_id = client.start("POST", "/echo", [("expect", "100-continue"), ("content-length", "5")], end=False)
        client.wait(lambda: client.responses[stream_id].informational == [100])
        client.send_body(stream_id, b"hello")
        response = client.response(stream_id)
    assert json.loads(response.body)["body_length"] == 5


def test_one_access_log_line_per_stream_with_http2(site):
    marker = os.urandom(4).hex()
    with H2Client(site.tls_port) as client:
        for stream_id in [client.start("GET", f"/static/hello.txt?{marker}={i}") for i in range(3)]:
            client.response(stream_id)
        refused = client.request("GET", f"/echo?{marker}=bad", [("connection", "close")])
        assert refused.status == 400
    lines = wait_until(lambda: [line for line in site.access_lines() if marker in line]
                       if len([line for line in site.access_lines() if marker in line]) == 4 else None)
    assert sum(f'"GET /static/hello.txt?{marker}=' in line and 'HTTP/2.0" 200 6 ' in line for line in lines) == 3
    assert any(f'"GET /echo?{marker}=bad HTTP/2.0" 400 ' in line for line in lines)


def test_status_and_metrics_count_http2(site):
    with H2Client(site.tls_port) as client:
        client.request("GET", "/static/hello.txt")
        status = json.loads(client.request("GET", "/_proxy/status").body)
        metrics = bytes(client.request("GET", "/_proxy/metrics").body).decode()
    assert status["http2"]["connections_total"] >= 1
    assert status["http2"]["streams_total"] >= 1
    assert status["connections"]["by_protocol"]["h2"] >= 1
    assert re.search(r"^proxy_http2_streams_total [1-9]", metrics, re.M)
    assert re.search(r"^proxy_http2_connections_open [1-9]", metrics, re.M)


def test_websockets_still_go_over_http11_on_the_same_tls_listener(site):
    import asyncio

    from websockets.asyncio.client import connect

    async def echo() -> str:
        async with connect(f"wss://localhost:{site.tls_port}/ws/echo", ssl=insecure_context(["http/1.1"])) as ws:
            await ws.send("over http/1.1")
            return await ws.recv()

    with H2Client(site.tls_port) as client:  # an HTTP/2 connection open on the same listener meanwhile
        assert asyncio.run(echo()) == "over http/1.1"
        assert client.request("GET", "/static/hello.txt").status == 200


@pytest.mark.skipif(not shutil.which("curl"), reason="no curl on PATH (Debian: apt-get install -y curl)")
@pytest.mark.parametrize("path, expected", [("/static/hello.txt", b"hello\n"), ("/echo?via=curl", b'"via=curl"')])
def test_curl_http2(site, path, expected):
    done = subprocess.run(["curl", "-sS", "--http2", "-k", "-D", "-", f"https://localhost:{site.tls_port}{path}"],
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"HTTP/2 200")
    assert expected in done.stdout


@pytest.mark.skipif(not shutil.which("curl"), reason="no curl on PATH (Debian: apt-get install -y curl)")
def test_curl_http2_decodes_a_compressed_answer(site):
    done = subprocess.run(["curl", "-sS", "--http2", "-k", "--compressed", "-D", "-",
                           f"https://localhost:{site.tls_port}/zip/big.txt"], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200") and re.search(rb"(?im)^content-encoding: (gzip|br|zstd)\r?$", head)
    assert body == TEXT


@pytest.mark.skipif(not shutil.which("nghttp"), reason="no nghttp on PATH (Debian: apt-get install -y nghttp2-client)")
@pytest.mark.parametrize("path", ["/static/hello.txt", "/echo?via=nghttp"])
def test_nghttp(site, path):
    done = subprocess.run(["nghttp", "-nv", f"https://localhost:{site.tls_port}{path}"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"recv \(stream_id=\d+\) :status: 200", done.stdout)
    assert re.search(r"recv DATA frame <length=\d+, flags=0x01, stream_id=\d+>\s+; END_STREAM", done.stdout)
    assert "recv GOAWAY" not in done.stdout  # nghttp closes the connection itself, the proxy had no reason to
