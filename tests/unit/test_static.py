"""static.py without sockets: which file a path names (locate) and what to answer for it (plan)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from proxy.config import Route
from proxy.errors import ClientError
from proxy.http import static
from proxy.http.routing import normalize_path

ALPHABET = b"abcdefghijklmnopqrstuvwxyz"
MTIME = 1_700_000_000  # 2023-11-14 22:13:20 GMT


# --- parse_range -------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    (b"bytes=0-4", [(0, 4)]),
    (b"bytes=-3", [(23, 25)]),  # suffix
    (b"bytes=-100", [(0, 25)]),  # suffix longer than the file: all of it
    (b"bytes=20-", [(20, 25)]),  # open-ended
    (b"bytes=20-100", [(20, 25)]),  # last-pos past the end is clamped
    (b"bytes=0-1,4-5", [(0, 1), (4, 5)]),
    (b"bytes=0-1 , 4-5,", [(0, 1), (4, 5)]),  # list syntax: OWS and empty elements (RFC 9110 5.6.1)
    (b"bytes=0-1,\t4-5", [(0, 1), (4, 5)]),
    (b"Bytes=0-0", [(0, 0)]),  # range units are case-insensitive
    (b"bytes=0-99999999999999999999999999", [(0, 25)]),
])
def test_parse_range_satisfiable(header, expected):
    assert static.parse_range(header, 26) == expected


@pytest.mark.parametrize("header, size", [
    (b"bytes=26-", 26),  # first-pos at the end
    (b"bytes=100-200", 26),
    (b"bytes=-0", 26),  # a zero-length suffix is unsatisfiable (RFC 9110 14.1.1)
    (b"bytes=0-", 0),  # nothing in an empty file is satisfiable
    (b"bytes=30-40,50-", 26),
])
def test_parse_range_unsatisfiable_is_an_empty_list(header, size):
    assert static.parse_range(header, size) == []


@pytest.mark.parametrize("header", [
    b"bytes=5-2",  # last-pos before first-pos: invalid (RFC 9110 14.1.1)
    b"bytes=a-b", b"bytes=0x1-2", b"bytes=+1-2", b"bytes=1-2-3", b"bytes=--1", b"bytes=-",
    b"bytes=", b"bytes", b"lines=0-1", b"bytes=0-1,x", b"=0-1",
    # RFC 9110 14.1.1 has no whitespace around "=" or inside a range (nginx ignores these too)
    b"bytes = 0-4", b"bytes =0-4", b" bytes=0-4", b"bytes=0 -4", b"bytes=0- 4", b"bytes=- 3",
])
def test_parse_range_invalid_is_ignored(header):
    assert static.parse_range(header, 26) is None


# --- plan: ranges --------------------------------------------------------------------

@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "alphabet.txt"
    path.write_bytes(ALPHABET)
    os.utime(path, (MTIME, MTIME))
    return path


def located(path: Path, vary: bool = False) -> static.Located:
    return static.Located(str(path), static.content_type(path.name), None, vary)


def plan_for(path: Path, *headers: tuple[bytes, bytes], method: bytes = b"GET", **kw) -> static.Plan:
    return static.plan(os.stat(path), located(path, **kw), method, list(headers), "public, max-age=60")


def body_of(result: static.Plan, path: Path) -> bytes:
    data = path.read_bytes()
    out = b""
    for part in result.parts:
        out += part if type(part) is bytes else data[part[0]:part[0] + part[1]]
    return out


def header(result: static.Plan, name: bytes) -> bytes | None:
    values = [v for n, v in result.headers if n == name]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


def test_plan_without_range_sends_the_file(text_file):
    result = plan_for(text_file)
    assert result.status == 200
    assert body_of(result, text_file) == ALPHABET
    assert header(result, b"content-length") == b"26"
    assert header(result, b"accept-ranges") == b"bytes"
    assert header(result, b"content-type") == b"text/plain; charset=utf-8"
    assert header(result, b"last-modified") == b"Tue, 14 Nov 2023 22:13:20 GMT"
    assert re.fullmatch(rb'"[0-9a-f]+-1a"', header(result, b"etag"))
    assert header(result, b"cache-control") == b"public, max-age=60"


def test_single_range_is_206_with_content_range(text_file):
    result = plan_for(text_file, (b"range", b"bytes=2-4"))
    assert result.status == 206
    assert header(result, b"content-range") == b"bytes 2-4/26"
    assert header(result, b"content-length") == b"3"
    assert body_of(result, text_file) == b"cde"
    assert result.content_length == 3


def test_several_ranges_are_multipart_byteranges(text_file):
    result = plan_for(text_file, (b"range", b"bytes=0-1,4-5"))
    assert result.status == 206
    kind = header(result, b"content-type")
    boundary = re.fullmatch(rb"multipart/byteranges; boundary=(\w+)", kind)[1]
    body = body_of(result, text_file)
    assert int(header(result, b"content-length")) == len(body) == result.content_length
    parts = body.split(b"--" + boundary)
    assert parts[-1] == b"--\r\n"
    assert b"content-range: bytes 0-1/26\r\n\r\nab\r\n" in parts[1]
    assert b"content-range: bytes 4-5/26\r\n\r\nef\r\n" in parts[2]
    assert parts[1].count(b"content-type: text/plain; charset=utf-8") == 1


@pytest.mark.parametrize("spec", [
    b"bytes=0-10,5-15",  # overlapping
    b"bytes=0-,0-",  # the same range twice
    b"bytes=0-12,13-,20-25",  # disjoint at first sight, together more than the file
    b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(17)),  # more than MAX_RANGES parts
])
def test_abusive_range_sets_get_the_whole_file(text_file, spec):
    result = plan_for(text_file, (b"range", spec))
    assert result.status == 200
    assert body_of(result, text_file) == ALPHABET


def test_sixteen_disjoint_ranges_are_still_served(text_file):
    spec = b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(0, 32, 2)[:16])
    result = plan_for(text_file, (b"range", spec))
    assert result.status == 206
    assert body_of(result, text_file).count(b"content-range") == 13  # 16 asked, 13 inside 26 bytes


def test_unsatisfiable_range_is_416_with_the_length(text_file):
    result = plan_for(text_file, (b"range", b"bytes=100-"))
    assert result.status == 416
    assert result.headers == [(b"content-range", b"bytes */26")]
    assert result.parts == ()


@pytest.mark.parametrize("spec", [b"bytes=5-2", b"lines=0-1", b"bytes=x", b"bytes = 0-4", b"bytes =0-4",
                                  b"bytes=0 - 4"])
def test_invalid_range_is_ignored(text_file, spec):
    assert plan_for(text_file, (b"range", spec)).status == 200


def test_range_is_ignored_on_head(text_file):
    assert plan_for(text_file, (b"range", b"bytes=0-1"), method=b"HEAD").status == 200


# --- plan: preconditions, in RFC 9110 13.2.2 order ------------------------------------

def tag_of(path: Path) -> bytes:
    return static.etag(os.stat(path))


LATER = b"Wed, 15 Nov 2023 00:00:00 GMT"
EARLIER = b"Mon, 13 Nov 2023 00:00:00 GMT"
EXACT = b"Tue, 14 Nov 2023 22:13:20 GMT"
# The same instants in the two obsolete forms every recipient MUST accept (RFC 9110 5.6.7).
LATER_ASCTIME, EARLIER_ASCTIME, EXACT_ASCTIME = b"Wed Nov 15 00:00:00 2023", b"Mon Nov 13 00:00:00 2023", \
    b"Tue Nov 14 22:13:20 2023"
LATER_850, EARLIER_850, EXACT_850 = b"Wednesday, 15-Nov-23 00:00:00 GMT", b"Monday, 13-Nov-23 00:00:00 GMT", \
    b"Tuesday, 14-Nov-23 22:13:20 GMT"



def test_if_match_mismatch_is_412(text_file):
    assert plan_for(text_file, (b"if-match", b'"other"')).status == 412


@pytest.mark.parametrize("value", [b"*", None, b'"other", TAG'])
def test_if_match_that_holds(text_file, value):
    tag = tag_of(text_file)
    value = tag if value is None else value.replace(b"TAG", tag)
    assert plan_for(text_file, (b"if-match", value)).status == 200


def test_if_match_compares_strongly(text_file):
    assert plan_for(text_file, (b"if-match", b"W/" + tag_of(text_file))).status == 412


def test_if_match_takes_precedence_over_if_unmodified_since(text_file):
    # Step 2 (If-Unmodified-Since) is evaluated only without If-Match.
    result = plan_for(text_file, (b"if-match", tag_of(text_file)), (b"if-unmodified-since", EARLIER))
    assert result.status == 200


@pytest.mark.parametrize("value, status", [
    (EARLIER, 412), (LATER, 200), (EXACT, 200), (b"not a date", 200),
    (EARLIER_ASCTIME, 412), (LATER_ASCTIME, 200), (EXACT_ASCTIME, 200),
    (EARLIER_850, 412), (LATER_850, 200), (EXACT_850, 200),
])
def test_if_unmodified_since(text_file, value, status):
    assert plan_for(text_file, (b"if-unmodified-since", value)).status == status


@pytest.mark.parametrize("value", [b"TAG", b"W/TAG", b'"a", TAG', b"*"])
def test_if_none_match_compares_weakly_and_gives_304(text_file, value):
    result = plan_for(text_file, (b"if-none-match", value.replace(b"TAG", tag_of(text_file))), vary=True)
    assert result.status == 304
    assert result.parts == ()
    names = {n for n, _ in result.headers}
    assert {b"etag", b"last-modified", b"cache-control", b"vary"} <= names  # RFC 9110 15.4.5
    assert b"content-length" not in names


def test_if_none_match_on_an_unsafe_method_is_412(text_file):
    assert plan_for(text_file, (b"if-none-match", b"*"), method=b"DELETE").status == 412


def test_if_match_is_checked_before_if_none_match(text_file):
    result = plan_for(text_file, (b"if-match", b'"other"'), (b"if-none-match", tag_of(text_file)))
    assert result.status == 412


def test_if_none_match_makes_if_modified_since_ignored(text_file):
    # Step 4 is evaluated only without If-None-Match: a mismatching tag wins over a fresh date.
    result = plan_for(text_file, (b"if-none-match", b'"other"'), (b"if-modified-since", LATER))
    assert result.status == 200


@pytest.mark.parametrize("value, status", [
    (LATER, 304), (EXACT, 304), (EARLIER, 200), (b"yesterday", 200),
    (LATER_ASCTIME, 304), (EXACT_ASCTIME, 304), (EARLIER_ASCTIME, 200),
    (LATER_850, 304), (EXACT_850, 304), (EARLIER_850, 200),
])
def test_if_modified_since(text_file, value, status):
    assert plan_for(text_file, (b"if-modified-since", value)).status == status
    assert plan_for(text_file, (b"if-modified-since", value), method=b"HEAD").status == status


def test_if_modified_since_is_for_get_and_head_only(text_file):
    assert plan_for(text_file, (b"if-modified-since", LATER), method=b"POST").status == 200


def test_if_none_match_mismatch_still_serves_ranges(text_file):
    result = plan_for(text_file, (b"if-none-match", b'"other"'), (b"range", b"bytes=0-0"))
    assert result.status == 206


@pytest.mark.parametrize("if_range, status", [
    (b"TAG", 206),  # the tag matches: the range is served
    (b'"other"', 200),  # it changed: the whole file
    (b"W/TAG", 200),  # If-Range needs a strong match (RFC 9110 13.1.5)
    (EXACT, 206),  # the date is exactly Last-Modified
    (EXACT_ASCTIME, 206),  # in whichever form it is written
    (EXACT_850, 206),
    (EARLIER, 200),
    (LATER, 200),
    (LATER_ASCTIME, 200),
    (b"Tue, 14 Nov 2023 22:13:20 +0000", 200),  # not an HTTP-date: no match
])
def test_if_range(text_file, if_range, status):
    value = if_range.replace(b"TAG", tag_of(text_file))
    result = plan_for(text_file, (b"range", b"bytes=0-4"), (b"if-range", value))
    assert result.status == status


def test_empty_file_is_200_with_no_parts(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    result = plan_for(path)
    assert (result.status, result.parts, header(result, b"content-length")) == (200, (), b"0")


# --- HTTP dates -----------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    b"Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
    b"Sunday, 06-Nov-94 08:49:37 GMT",  # rfc850-date
    b"Sun Nov  6 08:49:37 1994",  # asctime-date, the day padded with a space
    b"Sun Nov 06 08:49:37 1994",  # ... or written with two digits
])
def test_the_three_date_forms(value):
    assert static.parse_http_date(value, this_year=2026) == 784111777


@pytest.mark.parametrize("value, this_year, year", [
    (b"Monday, 01-Jan-24 00:00:00 GMT", 2026, 2024),
    (b"Thursday, 01-Jan-70 00:00:00 GMT", 2026, 2070),  # 44 years ahead: still this century
    (b"Friday, 01-Jan-99 00:00:00 GMT", 2026, 1999),  # 73 years ahead: the most recent past 99
    (b"Friday, 01-Jan-99 00:00:00 GMT", 2060, 2099),
])
def test_a_two_digit_year_is_placed_within_fifty_years(value, this_year, year):
    seconds = static.parse_http_date(value, this_year=this_year)
    assert time.gmtime(seconds).tm_year == year


@pytest.mark.parametrize("value", [
    b"", b"yesterday", b"Sun, 06 Nov 1994 08:49:37", b"Sun, 06 Nov 1994 08:49:37 +0000", b"Sun, 6 Nov 1994 08:49:37 GMT",
    b"sun, 06 nov 1994 08:49:37 GMT",  # the names are case-sensitive
    b"Sun, 30 Feb 1994 08:49:37 GMT", b"Sun, 06 Nov 1994 24:00:00 GMT", b"Sun, 06 Nov 1994 08:60:00 GMT",
    b"Sun,  06 Nov 1994 08:49:37 GMT", b"Sun, 06 Nov 1994 08:49:37 GMT ", b"Sun Nov  6 08:49:37 94",
    b"Sun, 06-Nov-94 08:49:37 GMT",  # rfc850 needs the full day name
])
def test_what_is_not_a_date(value):
    assert static.parse_http_date(value, this_year=2026) is None


# --- locate ----------------------------------------------------------------------

@pytest.fixture
def site(tmp_path):
    """A static folder with the shapes locate must handle, and a secret next to it."""
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "file.txt").write_text("outside")
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_text("hello")
    (root / "app.js").write_text("plain")
    (root / "app.js.gz").write_bytes(b"gz")
    (root / "app.js.br").write_bytes(b"br")
    (root / "only-gz.css").write_text("css")
    (root / "only-gz.css.gz").write_bytes(b"gz")
    (root / ".env").write_text("dot")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("git")
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_text("index")
    (root / "caf\u00e9").mkdir()
    (root / "empty").mkdir()
    (root / "empty" / "a.txt").write_text("a")
    (root / "leaky").mkdir()
    os.symlink("../../secret.txt", root / "leaky" / "index.html")
    os.symlink("hello.txt", root / "link.txt")
    os.symlink("../secret.txt", root / "escape.txt")
    os.symlink("../outside", root / "escape-dir")
    (root / "lib.js").write_text("lib")
    os.symlink("../secret.txt", root / "lib.js.gz")
    os.mkfifo(root / "pipe")
    return root


def route(root: Path, prefix: str = "/static/", **kw) -> Route:
    return Route(prefix=prefix, static=root.resolve(), **kw)


def find(root: Path, url: str, accept: bytes | None = None, query: bytes = b"", **kw):
    return static.locate(route(root, **kw), normalize_path(url.encode()), accept, query)


def refused(root: Path, url: str, **kw) -> ClientError:
    with pytest.raises(ClientError) as info:
        find(root, url, **kw)
    assert info.value.keep_alive  # the request was read whole: the connection may stay open
    return info.value


def test_a_file(site):
    found = find(site, "/static/hello.txt")
    assert found == static.Located(str(site / "hello.txt"), b"text/plain; charset=utf-8", None, False)


def test_a_folder_with_its_index(site):
    assert find(site, "/static/sub/").path == str(site / "sub" / "index.html")


def test_a_folder_without_trailing_slash_is_redirected_with_its_query(site):
    assert find(site, "/static/sub") == static.Redirect(b"/static/sub/")
    assert find(site, "/static/sub", query=b"a=1&b=2") == static.Redirect(b"/static/sub/?a=1&b=2")


def test_redirect_location_is_percent_encoded(site):
    assert find(site, "/static/caf%C3%A9") == static.Redirect(b"/static/caf%C3%A9/")


def test_redirect_never_becomes_protocol_relative(site):
    # A route at "/" and a request for //sub: "//sub/" would send the browser to host "sub".
    found = find(site, "//sub", prefix="/")
    assert found == static.Redirect(b"/sub/")
    assert not found.location.startswith(b"//")


def test_a_folder_without_index_is_403(site):
    assert refused(site, "/static/empty/").status == 403
    assert refused(site, "/static/sub/", index="").status == 403


def test_a_folder_without_index_goes_to_the_upstream_when_there_is_one(site):
    assert refused(site, "/static/empty/", upstream="app").status == 404  # 404: the caller forwards it


def test_autoindex_lists_the_folder(site):
    assert find(site, "/static/empty/", autoindex=True) == static.Listing(str(site / "empty"), "/static/empty/")


@pytest.mark.parametrize("url", ["/static/.env", "/static/.git/config", "/static/.git/", "/static/%2eenv",
                                 "/static/sub/../.env", "/static/./.env"])
def test_dotfiles_are_404(site, url):
    assert refused(site, url).status == 404


def test_a_symlink_to_a_dotfile_is_404(site):
    (site / "config").symlink_to(site / ".env")
    assert refused(site, "/static/config").status == 404
    assert find(site, "/static/config", dotfiles=True).path == str(site / ".env")


def test_dotfiles_can_be_allowed(site):
    assert find(site, "/static/.env", dotfiles=True).path == str(site / ".env")


@pytest.mark.parametrize("url", ["/static/escape.txt", "/static/escape-dir/file.txt", "/static/escape-dir/",
                                 "/static/missing.txt", "/static/pipe"])
def test_symlinks_out_of_the_folder_missing_and_special_files_are_404(site, url):
    assert refused(site, url).status == 404


def test_a_symlink_inside_the_folder_is_served_as_its_target(site):
    assert find(site, "/static/link.txt").path == str(site / "hello.txt")


def test_an_index_that_leaves_the_folder_is_no_index(site):
    assert refused(site, "/static/leaky/").status == 403


def test_a_precompressed_sibling_that_leaves_the_folder_is_not_used(site):
    found = find(site, "/static/lib.js", b"gzip")
    assert (found.path, found.encoding) == (str(site / "lib.js"), None)


def test_the_root_itself_has_no_index_here(site):
    assert refused(site, "/static/").status == 403


@pytest.mark.parametrize("url", ["/static/hello.txt/", "/static/hello.txt//", "/static/hello.txt%2f",
                                 "/static/hello.txt/.", "/static/link.txt/", "/static/sub/index.html/"])
def test_a_path_ending_in_a_slash_names_a_folder_never_a_file(site, url):
    # RFC 3986 3.3; nginx answers these 404 (open(2) says ENOTDIR).
    assert refused(site, url).status == 404


@pytest.mark.parametrize("url, file", [
    ("/static/./hello.txt", "hello.txt"),
    ("/static/sub/../hello.txt", "hello.txt"),
    ("/static/sub/%2e%2e/hello.txt", "hello.txt"),
    ("/static/empty/..%2fhello.txt", "hello.txt"),
    ("/static/sub/.", "sub/index.html"),  # a final dot segment keeps the slash: the folder's index
    ("/static/sub/x/..", "sub/index.html"),
])
def test_dot_segments_are_removed_before_the_file_is_looked_up(site, url, file):
    assert find(site, url).path == str(site / file)


# --- precompressed variants ---------------------------------------------------------

@pytest.mark.parametrize("accept, suffix, coding", [
    (b"gzip", ".gz", b"gzip"),
    (b"GZIP", ".gz", b"gzip"),
    (b"gzip, br", ".br", b"br"),  # equal weights: the server's order (br first)
    (b"br;q=0.5, gzip", ".gz", b"gzip"),  # the client prefers gzip
    (b"br;q=0, gzip;q=0.1", ".gz", b"gzip"),
    (b"*", ".br", b"br"),
    (b"br;q=0, *", ".gz", b"gzip"),
    (b"gzip;q=0", "", None),  # q=0 means not acceptable
    (b"gzip;q=abc", "", None),  # a q-value that is no number: not acceptable either
    (b"*;q=0", "", None),
    (b"identity;q=1, gzip;q=0.5", "", None),  # the plain file is preferred
    (b"deflate", "", None),
    (b"", "", None),
    (None, "", None),
])
def test_precompressed_choice_follows_q_values(site, accept, suffix, coding):
    found = find(site, "/static/app.js", accept)
    assert found.path == str(site / "app.js") + suffix
    assert found.encoding == coding
    assert found.vary  # siblings exist: the answer depends on Accept-Encoding
    assert found.content_type == b"text/javascript; charset=utf-8"  # the type of the original


def test_only_the_siblings_that_exist_are_offered(site):
    found = find(site, "/static/only-gz.css", b"br, gzip;q=0.5")
    assert (found.path, found.encoding) == (str(site / "only-gz.css.gz"), b"gzip")


def test_no_sibling_means_no_vary(site):
    assert find(site, "/static/hello.txt", b"gzip").vary is False


def test_precompressed_can_be_switched_off(site):
    found = find(site, "/static/app.js", b"br, gzip", precompressed=False)
    assert (found.path, found.encoding, found.vary) == (str(site / "app.js"), None, False)


@pytest.mark.parametrize("url, kind", [
    # A compressed file asked for by name is what it is, not what it unpacks to: a browser
    # given text/javascript and no Content-Encoding would run gzip bytes.
    ("/static/app.js.gz", b"application/gzip"),
    ("/static/app.js.br", b"application/x-brotli"),
    ("/static/only-gz.css.gz", b"application/gzip"),
])
def test_a_compressed_file_asked_for_by_name(site, url, kind):
    found = find(site, url, b"gzip, br")
    assert (found.content_type, found.encoding) == (kind, None)


# --- the rest ------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind", [
    ("a.txt", b"text/plain; charset=utf-8"),
    ("a.html", b"text/html; charset=utf-8"),
    ("a.js", b"text/javascript; charset=utf-8"),
    ("a.json", b"application/json; charset=utf-8"),
    ("a.svg", b"image/svg+xml; charset=utf-8"),
    ("a.png", b"image/png"),
    ("a.woff2", b"font/woff2"),
    ("a.unknown-extension", b"application/octet-stream"),
    ("app.js.gz", b"application/gzip"),  # a compressed file is what it is, not what it unpacks to
    ("notes.txt.gz", b"application/gzip"),
    ("x.tar.gz", b"application/gzip"),
    ("x.tgz", b"application/gzip"),
    ("app.js.br", b"application/x-brotli"),
    ("x.tar.zst", b"application/zstd"),
    ("x.tar.xz", b"application/x-xz"),
    ("x.tar", b"application/x-tar"),
    ("noextension", b"application/octet-stream"),
])
def test_content_type(name, kind):
    assert static.content_type(name) == kind


def test_listing_escapes_names_and_hides_dotfiles(tmp_path):
    (tmp_path / "<img src=x onerror=alert(1)>.txt").write_text("x")
    (tmp_path / ".secret").write_text("x")
    (tmp_path / "folder").mkdir()
    page = static.listing_page(str(tmp_path), "/files/<b>/", dotfiles=False).decode()
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in page
    assert 'href="%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt"' in page
    assert ".secret" not in page
    assert 'href="folder/"' in page
    assert "Index of /files/&lt;b&gt;/" in page
    assert ".secret" in static.listing_page(str(tmp_path), "/", dotfiles=True).decode()
