"""Static files through the real proxy: validators, 304, ranges, precompressed siblings, HEAD, 405,
traversal attempts, dot segments, a route that serves files and forwards the rest (try_files), and the
open-file cache serving a changed file fresh."""

from __future__ import annotations

import email.utils
import gzip
import os
import re
import time

import pytest
import requests

from tests.helpers import ProxyProcess, RecordingUpstream, proxy_config, raw_request, status_of, wait_until

SECRET = b"SECRET-NEXT-TO-THE-STATIC-FOLDER"
BIG = os.urandom(1024 * 1024 + 17)  # bigger than one read chunk, odd length
SCRIPT = b"console.log('hello from app.js');\n" * 20


@pytest.fixture(scope="module", params=[False, True], ids=["read-write", "sendfile"])
def site(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("static")
    (folder / "secret.txt").write_bytes(SECRET)
    static = folder / "static"
    static.mkdir()
    (static / "big.bin").write_bytes(BIG)
    (static / "hello.txt").write_bytes(b"hello\n")
    (static / "app.js").write_bytes(SCRIPT)
    (static / "app.js.gz").write_bytes(gzip.compress(SCRIPT))
    (static / "sub").mkdir()
    (static / "sub" / "index.html").write_bytes(b"<p>sub</p>\n")
    (static / ".env").write_bytes(SECRET)
    os.symlink("../secret.txt", static / "escape")
    public = folder / "public"
    public.mkdir()
    (public / "robots.txt").write_bytes(b"User-agent: *\n")
    upstream = RecordingUpstream()
    proxy = ProxyProcess(folder, f"""
        [server]
        listen = ["127.0.0.1:0"]
        sendfile = {"true" if request.param else "false"}
        [log]
        access = "off"
        [upstreams.app]
        servers = ["{upstream.address}"]
        [[routes]]
        prefix = "/static/"
        static = "static"
        cache_control = "public, max-age=3600"
        [[routes]]
        prefix = "/"
        static = "public"
        upstream = "app"
    """)
    proxy.upstream = upstream
    yield proxy
    proxy.stop()
    upstream.close()


def get(site, path, **headers):
    return requests.get(site.url + path, headers=headers, allow_redirects=False)


def test_a_file_with_its_validators(site):
    response = get(site, "/static/hello.txt", **{"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.content == b"hello\n"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["Content-Length"] == "6"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    assert re.fullmatch(r'"[0-9a-f]+-6"', response.headers["ETag"])
    assert response.headers["Last-Modified"].endswith(" GMT")


def test_a_large_file_arrives_whole(site):
    response = get(site, "/static/big.bin")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.content == BIG


def test_head_has_the_headers_and_no_body(site):
    with requests.head(site.url + "/static/big.bin") as response:
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(len(BIG))
        assert response.content == b""
    # and the connection is still in step: the next answer is the right one
    raw = raw_request(site.port, b"HEAD /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
                                 b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert raw.count(b"HTTP/1.1 200 OK") == 2 and raw.endswith(b"\r\n\r\nhello\n")


def test_conditional_requests_give_304(site):
    first = get(site, "/static/hello.txt")
    tag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    for headers in ({"If-None-Match": tag}, {"If-None-Match": "W/" + tag}, {"If-Modified-Since": modified},
                    {"If-None-Match": f'"nope", {tag}'}):
        response = get(site, "/static/hello.txt", **headers)
        assert response.status_code == 304, headers
        assert response.content == b""
        assert response.headers["ETag"] == tag
        assert response.headers["Cache-Control"] == "public, max-age=3600"
    assert get(site, "/static/hello.txt", **{"If-None-Match": '"nope"', "If-Modified-Since": modified}).status_code \
        == 200  # If-None-Match decides when present (RFC 9110 13.2.2)
    assert get(site, "/static/hello.txt", **{"If-Match": '"nope"'}).status_code == 412


def test_a_single_range(site):
    response = get(site, "/static/big.bin", Range="bytes=1000-1999")
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 1000-1999/{len(BIG)}"
    assert response.content == BIG[1000:2000]
    suffix = get(site, "/static/big.bin", Range="bytes=-10")
    assert (suffix.status_code, suffix.content) == (206, BIG[-10:])


def test_several_ranges_are_multipart(site):
    response = get(site, "/static/big.bin", Range="bytes=0-9,500000-500009")
    assert response.status_code == 206
    boundary = re.fullmatch(r"multipart/byteranges; boundary=(\w+)", response.headers["Content-Type"])[1]
    parts = response.content.split(b"--" + boundary.encode())
    assert len(parts) == 4 and parts[-1] == b"--\r\n"
    assert parts[1].endswith(b"\r\n\r\n" + BIG[0:10] + b"\r\n")
    assert parts[2].endswith(b"\r\n\r\n" + BIG[500000:500010] + b"\r\n")
    assert int(response.headers["Content-Length"]) == len(response.content)


def test_abusive_ranges_get_the_whole_file_and_impossible_ones_416(site):
    overlapping = get(site, "/static/hello.txt", Range="bytes=0-3,1-4,2-5")
    assert (overlapping.status_code, overlapping.content) == (200, b"hello\n")
    unsatisfiable = get(site, "/static/hello.txt", Range="bytes=6-")
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == "bytes */6"


def test_if_range(site):
    tag = get(site, "/static/hello.txt").headers["ETag"]
    assert get(site, "/static/hello.txt", Range="bytes=0-0", **{"If-Range": tag}).content == b"h"
    changed = get(site, "/static/hello.txt", Range="bytes=0-0", **{"If-Range": '"older"'})
    assert (changed.status_code, changed.content) == (200, b"hello\n")


def test_precompressed_sibling(site):
    response = requests.get(site.url + "/static/app.js", headers={"Accept-Encoding": "gzip"}, stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Vary"] == "Accept-Encoding"
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert gzip.decompress(response.raw.read()) == SCRIPT
    plain = get(site, "/static/app.js", **{"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in plain.headers and plain.content == SCRIPT
    assert plain.headers["Vary"] == "Accept-Encoding"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(site, method):
    response = requests.request(method, site.url + "/static/hello.txt", data=b"x")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"


def test_a_folder_redirects_to_its_slash_and_serves_its_index(site):
    response = get(site, "/static/sub?q=1")
    assert response.status_code == 301
    assert response.headers["Location"] == "/static/sub/?q=1"
    assert get(site, "/static/sub/").content == b"<p>sub</p>\n"
    raw = raw_request(site.port, b"GET //static//sub HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert re.findall(rb"(?i)\r\nlocation: ([^\r]*)\r\n", raw) == [b"/static/sub/"]  # never //host


@pytest.mark.parametrize("path, status", [
    ("/static/../../secret.txt", 400),  # a ".." that would climb above "/"
    ("/static/%2e%2e/%2e%2e/secret.txt", 400),
    ("/static/..%2f..%2fsecret.txt", 400),
    ("/../secret.txt", 400),
    ("/static/..%5csecret.txt", 400),
    ("/static/%c0%ae%c0%ae/secret.txt", 400),
    ("/static/hello.txt%00", 400),
    ("/static/%252e%252e/secret.txt", 404),
    ("/static/escape", 404),
    ("/static/.env", 404),
    ("/static/./.env", 404),
])
def test_nothing_outside_the_folder_is_served(site, path, status):
    raw = raw_request(site.port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert status_of(raw) == status
    assert SECRET not in raw


@pytest.mark.parametrize("path, body", [
    ("/static/./hello.txt", b"hello\n"),
    ("/static/sub/../hello.txt", b"hello\n"),
    ("/static/sub/%2e%2e/hello.txt", b"hello\n"),
    ("/static/sub/.", b"<p>sub</p>\n"),  # "/static/sub/": the folder's index, no redirect
    ("/static/../robots.txt", b"User-agent: *\n"),  # "/robots.txt": the "/" route's file
])
def test_dot_segments_are_removed_before_routing(site, path, body):
    raw = raw_request(site.port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert status_of(raw) == 200
    assert raw.endswith(b"\r\n\r\n" + body)


def test_the_upstream_gets_the_target_as_sent(site):
    # /static/../secret.txt is /secret.txt: no file under the "/" route, so it is forwarded,
    # with the raw target (nginx's proxy_pass without a URI does the same).
    upstream = site.upstream
    before = len(upstream.received)
    raw = raw_request(site.port, b"GET /static/%2e%2e/secret.txt?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 200 and SECRET not in raw
    assert upstream.received[before].startswith(b"GET /static/%2e%2e/secret.txt?x=1 HTTP/1.1\r\n")


@pytest.mark.parametrize("path", ["/static/hello.txt/", "/static/hello.txt//", "/static/hello.txt%2f",
                                  "/static/hello.txt/."])
def test_a_file_under_a_trailing_slash_is_404(site, path):
    raw = raw_request(site.port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert status_of(raw) == 404
    assert not raw.endswith(b"hello\n")


def test_a_compressed_file_asked_for_by_name_is_sent_as_what_it_is(site):
    response = requests.get(site.url + "/static/app.js.gz", headers={"Accept-Encoding": "gzip"}, stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/gzip"
    assert "Content-Encoding" not in response.headers
    assert gzip.decompress(response.raw.read()) == SCRIPT


def asctime(seconds: float) -> str:
    """An instant in the obsolete asctime form (RFC 9110 5.6.7): 'Sun Nov  6 08:49:37 1994'."""
    return time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(seconds))


def test_dates_in_the_obsolete_forms_are_understood(site):
    first = get(site, "/static/hello.txt")
    modified = email.utils.parsedate_to_datetime(first.headers["Last-Modified"]).timestamp()
    assert get(site, "/static/hello.txt", **{"If-Modified-Since": asctime(modified + 86400)}).status_code == 304
    assert get(site, "/static/hello.txt", **{"If-Unmodified-Since": asctime(modified - 86400)}).status_code == 412
    ranged = get(site, "/static/hello.txt", Range="bytes=0-0", **{"If-Range": asctime(modified)})
    assert (ranged.status_code, ranged.content) == (206, b"h")
    rfc850 = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(modified + 86400))
    assert get(site, "/static/hello.txt", **{"If-Modified-Since": rfc850}).status_code == 304


def test_a_range_with_spaces_the_grammar_does_not_allow_is_ignored(site):
    response = get(site, "/static/hello.txt", Range="bytes = 0-1")
    assert (response.status_code, response.content) == (200, b"hello\n")


def test_files_are_served_and_the_rest_forwarded_on_a_combined_route(site):
    upstream = site.upstream
    before = len(upstream.received)
    assert get(site, "/robots.txt").content == b"User-agent: *\n"  # from disk
    assert len(upstream.received) == before
    home = get(site, "/")  # the folder has no index.html: the app answers "/"
    assert (home.status_code, home.content) == (200, b"ok")
    assert get(site, "/api/things").content == b"ok"
    assert [raw.split(b" ", 2)[1] for raw in upstream.received[before:]] == [b"/", b"/api/things"]


# --- the open-file cache ----------------------------------------------------------

def cache_proxy(folder, valid: float) -> tuple[ProxyProcess, object]:
    static = folder / "static"
    static.mkdir()
    (static / "page.txt").write_bytes(b"first\n")
    proxy = ProxyProcess(folder, proxy_config(static="static", server=f"open_file_cache_valid = {valid}",
                                              log='access = "off"'))
    return proxy, static / "page.txt"


def test_a_changed_file_is_served_fresh_once_open_file_cache_valid_has_passed(tmp_path):
    valid = 1.0
    proxy, page = cache_proxy(tmp_path, valid)
    try:
        url = proxy.url + "/page.txt"
        loaded = time.monotonic()
        assert requests.get(url).content == b"first\n"  # now in the cache, entered no earlier than `loaded`
        page.write_bytes(b"second, and longer\n")
        right_after = requests.get(url)
        if time.monotonic() < loaded + valid - 0.05:
            # Answered within the interval of the entry: from the cache, the old bytes and their length.
            assert (right_after.content, right_after.headers["Content-Length"]) == (b"first\n", "6")
        wait_until(lambda: requests.get(url).content == b"second, and longer\n", timeout=15,
                   what="the changed file to be served")
        fresh = requests.get(url)
        assert fresh.headers["Content-Length"] == "19"
        assert requests.get(url, headers={"If-None-Match": fresh.headers["ETag"]}).status_code == 304
    finally:
        proxy.stop()


def test_within_the_interval_small_files_come_from_memory_and_large_ones_are_checked(tmp_path):
    proxy, page = cache_proxy(tmp_path, 3600)
    big = page.parent / "big.bin"
    big.write_bytes(b"a" * 100_000)  # more than 64 KiB: the cache keeps its facts, not its bytes
    try:
        assert requests.get(proxy.url + "/page.txt").content == b"first\n"
        assert requests.get(proxy.url + "/big.bin").content == b"a" * 100_000
        page.write_bytes(b"second, and longer\n")
        big.write_bytes(b"b" * 150_000)
        assert requests.get(proxy.url + "/page.txt").content == b"first\n"  # an hour has not passed
        # The opened file is not what the entry describes: it is answered for what was opened.
        response = requests.get(proxy.url + "/big.bin")
        assert (response.content, response.headers["Content-Length"]) == (b"b" * 150_000, "150000")
    finally:
        proxy.stop()


def test_with_open_file_cache_valid_0_a_changed_file_is_served_at_once(tmp_path):
    proxy, page = cache_proxy(tmp_path, 0)
    try:
        url = proxy.url + "/page.txt"
        for n in range(5):
            body = b"version %d%s\n" % (n, b"!" * n)
            page.write_bytes(body)
            assert requests.get(url).content == body
    finally:
        proxy.stop()
