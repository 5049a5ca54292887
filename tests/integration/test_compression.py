"""Responses compressed on the fly through the real proxy: proxied JSON from Gunicorn, the demo app's
stream arriving chunk by chunk, a 10 MiB stream in flat memory, static files.

Bodies are read with http.client, which neither decodes nor buffers a chunk: ``read1`` returns what
one chunk brought, and the test decodes it as a browser would, as it arrives.
"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import time
from pathlib import Path

import pytest

from tests.apps.basic import json_pieces, json_records, zeros_gzipped
from tests.edge import worker_pid
from tests.helpers import GunicornProcess, ProxyProcess, decoder, proxy_config, raw_request, stop_all

CODINGS = ("gzip", "br", "zstd")
MiB = 1024 * 1024


def fetch(port: int, target: str, coding: str | None = None, method: str = "GET", headers=None):
    """(response, decoded body, [(arrival time, decoded bytes) per read]) of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        sent = {**({"Accept-Encoding": coding} if coding else {}), **(headers or {})}
        connection.request(method, target, headers=sent)
        response = connection.getresponse()
        encoded = response.getheader("Content-Encoding")
        decode = decoder(encoded) if encoded else bytes
        pieces = []
        while True:
            data = response.read1(65536)
            if not data:
                break
            pieces.append((time.time(), decode(data)))
        return response, b"".join(piece for _, piece in pieces), pieces
    finally:
        connection.close()


@pytest.fixture(scope="module")
def upstream():
    gunicorn = GunicornProcess("tests.apps.basic:app", workers=1, worker_class="gthread")
    yield gunicorn
    gunicorn.stop()


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    proxy = ProxyProcess(tmp_path_factory.mktemp("compress"),
                         proxy_config(upstream=upstream.address, route="compress = true"))
    yield proxy
    proxy.stop()


# --- proxied answers ----------------------------------------------------------------

@pytest.mark.parametrize("coding", CODINGS)
def test_a_proxied_json_answer_is_compressed_as_the_client_asks(proxy, coding):
    response, body, _ = fetch(proxy.port, "/json?size=20000", coding)
    assert response.status == 200
    assert body == json_records(20000)
    assert response.getheader("Content-Encoding") == coding
    assert response.getheader("Transfer-Encoding") == "chunked" and response.getheader("Content-Length") is None
    assert response.getheader("Vary") == "Cookie, Accept-Encoding"  # merged with the app's
    assert response.getheader("ETag") == 'W/"v1"'  # other bytes than the app's: weak


def test_a_browser_gets_the_servers_first_choice(proxy):
    response, body, _ = fetch(proxy.port, "/json?size=20000", "gzip, deflate, br, zstd")
    assert response.getheader("Content-Encoding") == "zstd" and body == json_records(20000)


@pytest.mark.parametrize("accept", [None, "identity", "gzip;q=0", "compress"])
def test_identity_when_the_client_takes_no_coding(proxy, accept):
    response, body, _ = fetch(proxy.port, "/json?size=20000", accept)
    assert response.getheader("Content-Encoding") is None
    assert response.getheader("Content-Length") == str(len(body)) and body == json_records(20000)
    assert response.getheader("ETag") == '"v1"'
    assert response.getheader("Vary") == "Cookie, Accept-Encoding"  # another client may get it compressed


def test_what_is_never_compressed(proxy):
    small, body, _ = fetch(proxy.port, "/json?size=500", "gzip")  # below min_length
    assert small.getheader("Content-Encoding") is None and body == json_records(500)
    octets, _, _ = fetch(proxy.port, "/big?size=100000", "gzip")  # application/octet-stream
    assert octets.getheader("Content-Encoding") is None and octets.getheader("Content-Length") == "100000"
    ranged, _, _ = fetch(proxy.port, "/json?size=20000", "gzip", headers={"Range": "bytes=0-9"})
    assert ranged.getheader("Content-Encoding") is None
    untouched, _, _ = fetch(proxy.port, "/json?size=20000", "gzip", headers={"Cache-Control": "no-transform"})
    assert untouched.getheader("Content-Encoding") is None


def test_an_http_1_0_client_gets_the_body_ended_by_the_close(proxy):
    raw = raw_request(proxy.port, b"GET /json?size=20000 HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n", timeout=10)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head and b"transfer-encoding" not in head and b"content-length" not in head
    assert gzip.decompress(body) == json_records(20000)


def test_head_gets_the_head_a_get_would(proxy):
    response, body, _ = fetch(proxy.port, "/json?size=20000", "br", method="HEAD")
    assert (response.status, body) == (200, b"")
    assert response.getheader("Content-Encoding") == "br" and response.getheader("Content-Length") is None
    assert response.getheader("ETag") == 'W/"v1"'


def test_the_access_log_counts_the_bytes_sent(proxy):
    response, body, _ = fetch(proxy.port, "/json?size=50001", "gzip")
    assert body == json_records(50001)
    line = proxy.wait_for_line(r'"GET /json\?size=50001 HTTP/1.1" 200 (\d+)', stream="stdout")
    assert 0 < int(line[1]) < len(body) // 4  # the compressed size, as nginx's $body_bytes_sent


# --- streams ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo app on Gunicorn's threaded workers (as `make up` runs it) behind a compressing route."""
    app = GunicornProcess("demo_app.wsgi:app", "--threads", "4", workers=1, worker_class="gthread")
    proxy = ProxyProcess(tmp_path_factory.mktemp("demo"),
                         proxy_config(upstream=app.address, prefix="/api/", route="compress = true"))
    yield proxy
    stop_all([proxy, app])


@pytest.mark.parametrize("coding", CODINGS)
def test_the_demo_stream_arrives_chunk_by_chunk(demo, coding):
    """Each line of /api/stream says when the app produced it; each must have been decoded by the
    client before the app produced the next: the encoder held nothing back."""
    response, body, pieces = fetch(demo.port, "/api/stream?chunks=3&interval=1", coding)
    assert response.getheader("Content-Encoding") == coding
    arrivals = []  # (arrival time, line)
    pending = b""
    for arrived, data in pieces:
        pending += data
        while b"\n" in pending:
            line, _, pending = pending.partition(b"\n")
            arrivals.append((arrived, line.decode()))
    assert [line.split(" from ")[0] for _, line in arrivals] == ["chunk 1 of 3", "chunk 2 of 3", "chunk 3 of 3"]
    produced = [float(line.rsplit(" at ", 1)[1]) for _, line in arrivals]
    for i in range(len(arrivals) - 1):
        assert arrivals[i][0] < produced[i + 1], f"line {i + 1} arrived after line {i + 2} was produced"


def _memory_kib(pid: int, field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)[1])


def _peak_growth(pid: int, send):
    """(KiB the worker's peak RSS rose above its RSS while ``send()`` ran, what it returned)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _memory_kib(pid, "VmRSS")
    result = send()
    return _memory_kib(pid, "VmHWM") - before, result


def _compressed_body(proxy: ProxyProcess, target: str, coding: str) -> bytes:
    response, body, _ = fetch(proxy.port, target, coding)
    assert response.status == 200 and response.getheader("Content-Encoding") == coding
    return body


@pytest.mark.parametrize("coding", CODINGS)
def test_a_10_mib_streamed_json_compresses_in_flat_memory(proxy, coding):
    pid = worker_pid(proxy)
    fetch(proxy.port, f"/json-stream?size={MiB}", coding)  # the encoder's first allocations, once
    small, small_body = _peak_growth(pid, lambda: _compressed_body(proxy, f"/json-stream?size={MiB}", coding))
    large, large_body = _peak_growth(pid, lambda: _compressed_body(proxy, f"/json-stream?size={10 * MiB}", coding))
    assert large_body == b"".join(json_pieces(10 * MiB)) and small_body == b"".join(json_pieces(MiB))
    # Ten times the body, about the same memory: the encoder holds its window, never the body. The slack
    # is the allocator's (freed pieces of a long stream are not always given back at once).
    figures = f"peak RSS rose {large} KiB for 10 MiB, {small} KiB for 1 MiB"
    assert large < small + 4096, figures
    assert large < 8 * 1024, figures


def test_a_body_the_app_compressed_passes_byte_for_byte_and_is_never_decoded(proxy):
    """64 MiB of zeros as 64 KiB of gzip from the app: the client gets the app's bytes (no second coding,
    though it prefers br), and the worker's memory does not grow by what they would decode to."""

    def send():
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        try:
            connection.request("GET", "/gzipped?mib=64", headers={"Accept-Encoding": "br, gzip;q=0.5"})
            response = connection.getresponse()
            return response, response.read()  # read as it came, not decoded
        finally:
            connection.close()

    grew, (response, body) = _peak_growth(worker_pid(proxy), send)
    assert response.status == 200 and response.getheader("Content-Encoding") == "gzip"
    assert body == zeros_gzipped(64) and response.getheader("Content-Length") == str(len(body))
    assert grew < 16 * 1024, f"peak RSS rose {grew} KiB"


# --- static files -------------------------------------------------------------------------

TEXT = b"".join(b"line %d of a text file that compresses well\n" % i for i in range(60000))  # 2.6 MB
SCRIPT = b"console.log('hello from app.js');\n" * 100


# sendfile(2) would send the file's own bytes: a file compressed as it is sent must be read and written.
@pytest.fixture(scope="module", params=["sendfile = false", "sendfile = true"], ids=["read-write", "sendfile"])
def site(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("static")
    (folder / "big.txt").write_bytes(TEXT)  # larger than a file compressed at once: compressed as it is sent
    (folder / "page.html").write_bytes(TEXT[:40000])
    (folder / "app.js").write_bytes(SCRIPT)
    (folder / "app.js.gz").write_bytes(gzip.compress(SCRIPT))
    proxy = ProxyProcess(folder, proxy_config(static=str(folder), route="compress = true", server=request.param))
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("coding", CODINGS)
def test_a_static_file_is_compressed(site, coding):
    for name, data in (("page.html", TEXT[:40000]), ("big.txt", TEXT)):
        response, body, _ = fetch(site.port, f"/{name}", coding)
        assert response.status == 200 and body == data
        assert response.getheader("Content-Encoding") == coding
        assert response.getheader("ETag").startswith('W/"')
        assert response.getheader("Vary") == "Accept-Encoding"


def test_a_static_file_compressed_once_has_its_length_and_revalidates(site):
    first, body, _ = fetch(site.port, "/page.html", "br")
    again, _, _ = fetch(site.port, "/page.html", "br")
    assert first.getheader("Content-Length") == again.getheader("Content-Length") is not None
    assert first.getheader("Transfer-Encoding") is None
    fresh, body, _ = fetch(site.port, "/page.html", "br", headers={"If-None-Match": first.getheader("ETag")})
    assert (fresh.status, body) == (304, b"")
    assert fresh.getheader("ETag") == first.getheader("ETag")


def test_a_precompressed_sibling_still_wins(site):
    response, body, _ = fetch(site.port, "/app.js", "gzip, br")
    assert response.getheader("Content-Encoding") == "gzip" and body == SCRIPT
    assert response.getheader("Content-Length") == str(os.path.getsize(Path(site.config_path).parent / "app.js.gz"))


def test_a_range_of_a_static_file_is_of_the_file_itself(site):
    response, body, _ = fetch(site.port, "/big.txt", "gzip", headers={"Range": "bytes=5-9"})
    assert (response.status, body) == (206, TEXT[5:10])
    assert response.getheader("Content-Encoding") is None


# --- sites and request policy --------------------------------------------------------

PAGE = b"<!doctype html><title>not here</title>" + b"<p>a page larger than min_length</p>\n" * 60

SITES = """
[server]
listen = ["127.0.0.1:0"]
[upstreams.app]
servers = ["{upstream}"]
[rate_limits.many]
rate = "1000r/s"
burst = 1000

[[sites]]
names = ["shop.test"]
[[sites.routes]]
prefix = "/"
upstream = "app"
compress = true
rate_limit = "many"
response_headers = {{ set = {{ "X-Frame-Options" = "DENY" }} }}
[[sites.routes]]
prefix = "/local/"
upstream = "app"
compress = true
allow = ["10.0.0.0/8"]
error_pages = {{ 403 = "page.html" }}
[[sites.routes]]
prefix = "/files/"
static = "public"
compress = true
error_pages = {{ 404 = "page.html" }}
response_headers = {{ set = {{ "X-Frame-Options" = "DENY" }} }}
"""


@pytest.fixture(scope="module")
def shop(upstream, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shop")
    (folder / "public").mkdir()
    (folder / "public" / "big.txt").write_bytes(TEXT)
    (folder / "page.html").write_bytes(PAGE)
    proxy = ProxyProcess(folder, SITES.format(upstream=upstream.address))
    yield proxy
    proxy.stop()


def test_a_route_of_a_site_compresses_with_its_header_rules_and_rate_limit(shop):
    response, body, _ = fetch(shop.port, "/json?size=20000", "br", headers={"Host": "shop.test"})
    assert (response.status, body) == (200, json_records(20000))
    assert response.getheader("Content-Encoding") == "br" and response.getheader("Vary") == "Cookie, Accept-Encoding"
    assert response.getheader("X-Frame-Options") == "DENY"
    static, body, _ = fetch(shop.port, "/files/big.txt", "gzip", headers={"Host": "shop.test"})
    assert (static.status, body) == (200, TEXT) and static.getheader("Content-Encoding") == "gzip"
    assert static.getheader("X-Frame-Options") == "DENY"


@pytest.mark.parametrize("target, status", [("/local/json?size=20000", 403), ("/files/missing", 404)])
def test_a_routes_error_page_is_compressed_as_its_route_says(shop, target, status):
    response, body, _ = fetch(shop.port, target, "gzip", headers={"Host": "shop.test"})
    assert (response.status, body) == (status, PAGE)
    assert response.getheader("Content-Encoding") == "gzip" and response.getheader("Vary") == "Accept-Encoding"
    plain, body, _ = fetch(shop.port, target, headers={"Host": "shop.test"})
    assert (plain.status, body) == (status, PAGE) and plain.getheader("Content-Encoding") is None
    assert plain.getheader("Content-Length") == str(len(PAGE))
