"""static.py without sockets: which file a path names (locate) and what to answer for it (plan)."""

from __future__ import annotations

import os
import re
import time
import zlib
from pathlib import Path

import pytest

from proxy.config import Compress, Route
from proxy.errors import ClientError
from proxy.http import encoding, static
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

class SamplePath(type(Path())):
    cached = False  # True: plans are made from a Variant holding the file's bytes, as the cache's do


@pytest.fixture(params=["opened", "cached"])
def text_file(request, tmp_path):
    """The alphabet on disk, planned for with and without its bytes in the Variant."""
    path = SamplePath(tmp_path / "alphabet.txt")
    path.write_bytes(ALPHABET)
    os.utime(path, (MTIME, MTIME))
    path.cached = request.param == "cached"
    return path


def variant_of(path: Path, *, cached: bool | None = None, cache_control: str = "public, max-age=60"
               ) -> static.Variant:
    cached = getattr(path, "cached", False) if cached is None else cached  # a plain Path: opened
    route = Route(prefix="/", static=path.parent.resolve(), cache_control=cache_control)
    entry = static.lookup(route, "/" + path.name, body_budget=1 << 20 if cached else 0)
    return entry.variants[0]


def plan_for(path: Path, *headers: tuple[bytes, bytes], method: bytes = b"GET") -> static.Plan:
    return static.plan(variant_of(path), method, list(headers))


def body_of(result: static.Plan, path: Path) -> bytes:
    """The body the parts describe; where the plan carries the body itself, it must be the same."""
    data = path.read_bytes()
    out = b""
    for part in result.parts:
        out += part if type(part) is bytes else data[part[0]:part[0] + part[1]]
    if getattr(path, "cached", False):
        assert result.body == out
    else:
        assert result.body is None
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
    assert header(result, b"vary") is None  # no sibling: the answer does not depend on Accept-Encoding


def test_head_needs_no_file(text_file):
    result = plan_for(text_file, method=b"HEAD")
    assert (result.status, result.body, header(result, b"content-length")) == (200, b"", b"26")


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
    assert result.headers == ((b"content-range", b"bytes */26"),)
    assert (result.parts, result.body) == ((), b"")


@pytest.mark.parametrize("spec", [b"bytes=5-2", b"lines=0-1", b"bytes=x", b"bytes = 0-4", b"bytes =0-4",
                                  b"bytes=0 - 4"])
def test_invalid_range_is_ignored(text_file, spec):
    result = plan_for(text_file, (b"range", spec))
    assert result.status == 200
    assert body_of(result, text_file) == ALPHABET


def test_range_is_ignored_on_head(text_file):
    assert plan_for(text_file, (b"range", b"bytes=0-1"), method=b"HEAD").status == 200


# --- plan: preconditions, in RFC 9110 13.2.2 order ------------------------------------

def tag_of(path: Path) -> bytes:
    return variant_of(path).etag


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
    (text_file.parent / "alphabet.txt.gz").write_bytes(b"gz")  # a sibling, so the answer has Vary
    result = plan_for(text_file, (b"if-none-match", value.replace(b"TAG", tag_of(text_file))))
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
    assert result.body == b""  # nothing to read, so nothing to open


def test_304_and_412_need_no_file(text_file):
    assert plan_for(text_file, (b"if-none-match", b"*")).body == b""
    assert plan_for(text_file, (b"if-match", b'"other"')).body == b""


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


def find(root: Path, url: str, query: bytes = b"", **kw):
    return static.locate(route(root, **kw), normalize_path(url.encode()), query)


def path_of(root: Path, url: str, **kw) -> str:
    found = find(root, url, **kw)
    assert type(found) is static.Located, found
    return found.files[0].path


def refused(root: Path, url: str, **kw) -> ClientError:
    with pytest.raises(ClientError) as info:
        find(root, url, **kw)
    assert info.value.keep_alive  # the request was read whole: the connection may stay open
    return info.value


def test_a_file(site):
    found = find(site, "/static/hello.txt")
    info = os.stat(site / "hello.txt")
    assert found == static.Located((static.OnDisk(str(site / "hello.txt"), None, (
        info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)),))


def test_a_folder_with_its_index(site):
    assert path_of(site, "/static/sub/") == str(site / "sub" / "index.html")


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
    assert path_of(site, "/static/config", dotfiles=True) == str(site / ".env")


def test_dotfiles_can_be_allowed(site):
    assert path_of(site, "/static/.env", dotfiles=True) == str(site / ".env")


@pytest.mark.parametrize("url", ["/static/escape.txt", "/static/escape-dir/file.txt", "/static/escape-dir/",
                                 "/static/missing.txt", "/static/pipe"])
def test_symlinks_out_of_the_folder_missing_and_special_files_are_404(site, url):
    assert refused(site, url).status == 404


def test_a_symlink_inside_the_folder_is_served_as_its_target(site):
    assert path_of(site, "/static/link.txt") == str(site / "hello.txt")


def test_an_index_that_leaves_the_folder_is_no_index(site):
    assert refused(site, "/static/leaky/").status == 403


def test_a_precompressed_sibling_that_leaves_the_folder_is_not_used(site):
    found = find(site, "/static/lib.js")
    assert [f.path for f in found.files] == [str(site / "lib.js")]


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
    assert path_of(site, url) == str(site / file)


# --- precompressed variants ---------------------------------------------------------

def choose(root: Path, url: str, accept: bytes | None, **kw) -> static.Variant:
    return static.lookup(route(root, **kw), url).choose(accept)


@pytest.mark.parametrize("accept, suffix, coding", [
    (b"gzip", ".gz", b"gzip"),
    (b"GZIP", ".gz", b"gzip"),
    (b"gzip, br", ".br", b"br"),  # equal weights: the server's order (br first)
    (b"br;q=0.5, gzip", ".gz", b"gzip"),  # the client prefers gzip
    (b"br;q=0, gzip;q=0.1", ".gz", b"gzip"),
    (b"br; q=0, gzip", ".gz", b"gzip"),
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
    variant = choose(site, "/static/app.js", accept)
    assert variant.path == str(site / "app.js") + suffix
    assert variant.encoding == coding
    assert (b"vary", b"Accept-Encoding") in variant.headers  # siblings exist: the answer depends on it
    assert variant.content_type == b"text/javascript; charset=utf-8"  # the type of the original
    assert dict(variant.headers).get(b"content-encoding") == coding
    assert dict(variant.headers)[b"content-length"] == b"%d" % os.path.getsize(variant.path)


def test_only_the_siblings_that_exist_are_offered(site):
    variant = choose(site, "/static/only-gz.css", b"br, gzip;q=0.5")
    assert (variant.path, variant.encoding) == (str(site / "only-gz.css.gz"), b"gzip")


def test_no_sibling_means_no_vary(site):
    variant = choose(site, "/static/hello.txt", b"gzip")
    assert b"vary" not in dict(variant.headers)


def test_precompressed_can_be_switched_off(site):
    variant = choose(site, "/static/app.js", b"br, gzip", precompressed=False)
    assert (variant.path, variant.encoding) == (str(site / "app.js"), None)
    assert b"vary" not in dict(variant.headers)


@pytest.mark.parametrize("url, kind", [
    # A compressed file asked for by name is what it is, not what it unpacks to: a browser
    # given text/javascript and no Content-Encoding would run gzip bytes.
    ("/static/app.js.gz", b"application/gzip"),
    ("/static/app.js.br", b"application/x-brotli"),
    ("/static/only-gz.css.gz", b"application/gzip"),
])
def test_a_compressed_file_asked_for_by_name(site, url, kind):
    variant = choose(site, url, b"gzip, br")
    assert (variant.content_type, variant.encoding) == (kind, None)
    assert b"content-encoding" not in dict(variant.headers)


# --- the open-file cache --------------------------------------------------------------

@pytest.fixture
def files(site):
    return site, route(site), static.OpenFileCache(valid=1.0)


def write(path: Path, data: bytes, mtime: int = MTIME) -> None:
    """Replace a file's bytes; a different length makes a different file whatever the clock's granularity."""
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def refused_by(cache: static.OpenFileCache, where: Route, url: str, now: float) -> int:
    with pytest.raises(ClientError) as info:
        cache.lookup(where, url, b"", now)
    return info.value.status


def test_a_hit_is_the_same_entry_and_needs_no_disk(files):
    root, where, cache = files
    entry = cache.lookup(where, "/static/hello.txt", b"", 0.0)
    assert entry.variants[0].body == b"hello"
    write(root / "hello.txt", b"changed on disk")
    assert cache.lookup(where, "/static/hello.txt", b"", 0.999) is entry  # within valid: not looked at
    assert static.plan(entry.choose(None), b"GET", []).body == b"hello"
    assert repr(cache) == "<OpenFileCache 1/10000 entries 5/67108864 bytes valid=1s>"


def test_a_changed_file_is_served_fresh_once_the_interval_has_passed(files):
    root, where, cache = files
    old = cache.lookup(where, "/static/hello.txt", b"", 0.0)
    write(root / "hello.txt", b"hello, again")
    new = cache.lookup(where, "/static/hello.txt", b"", 1.0)
    assert new is not old
    variant = new.choose(None)
    assert variant.body == b"hello, again"
    assert variant.etag != old.choose(None).etag
    assert dict(variant.headers)[b"content-length"] == b"12"
    assert cache.cached_bytes == 12


def test_an_unchanged_file_keeps_its_entry_and_bytes(files):
    root, where, cache = files
    entry = cache.lookup(where, "/static/hello.txt", b"", 0.0)
    body = entry.variants[0].body
    for now in (1.0, 2.5, 100.0):  # each one past the interval: re-stat, same facts
        assert cache.lookup(where, "/static/hello.txt", b"", now) is entry
    assert entry.variants[0].body is body
    assert cache.cached_bytes == 5
    os.remove(root / "hello.txt")  # and it was looked at: a file gone is a 404 once the interval passed
    assert cache.lookup(where, "/static/hello.txt", b"", 100.5) is entry
    assert refused_by(cache, where, "/static/hello.txt", 101.0) == 404


def test_a_file_rewritten_with_the_same_size_and_mtime_is_still_seen(files):
    root, where, cache = files
    cache.lookup(where, "/static/hello.txt", b"", 0.0)
    before = os.stat(root / "hello.txt")
    (root / "hello.txt").write_bytes(b"HELLO")
    os.utime(root / "hello.txt", ns=(before.st_atime_ns, before.st_mtime_ns))  # ctime still moves
    assert cache.lookup(where, "/static/hello.txt", b"", 1.0).variants[0].body == b"HELLO"


def test_the_revalidation_repeats_every_check(files):
    root, where, cache = files
    cache.lookup(where, "/static/link.txt", b"", 0.0)
    os.remove(root / "link.txt")
    os.symlink("../secret.txt", root / "link.txt")  # now it leads out of the folder
    assert refused_by(cache, where, "/static/link.txt", 1.0) == 404
    assert len(cache) == 0 and cache.cached_bytes == 0

    cache.lookup(where, "/static/hello.txt", b"", 0.0)
    os.remove(root / "hello.txt")
    os.symlink(".env", root / "hello.txt")  # a dotfile behind a plain name
    assert refused_by(cache, where, "/static/hello.txt", 1.0) == 404

    cache.lookup(where, "/static/lib.js", b"", 0.0)
    os.remove(root / "lib.js")
    os.mkdir(root / "lib.js")  # a folder now
    assert cache.lookup(where, "/static/lib.js", b"", 1.0) == static.Redirect(b"/static/lib.js/")
    assert len(cache) == 0


@pytest.mark.parametrize("url", ["/static/escape.txt", "/static/.env", "/static/hello.txt/", "/static/missing"])
def test_what_locate_refuses_the_cache_refuses_every_time(files, url):
    _, where, cache = files
    assert refused_by(cache, where, url, 0.0) == 404
    assert refused_by(cache, where, url, 0.5) == 404
    assert len(cache) == 0  # errors are not kept


def test_zero_turns_the_cache_off(site):
    cache = static.OpenFileCache(valid=0)
    where = route(site)
    entry = cache.lookup(where, "/static/hello.txt", b"", 0.0)
    assert entry.variants[0].body is None  # not read: the server opens the file
    write(site / "hello.txt", b"changed at once")
    fresh = cache.lookup(where, "/static/hello.txt", b"", 0.0)
    assert fresh.variants[0].size == 15
    assert len(cache) == 0 and cache.cached_bytes == 0


def test_least_recently_used_entries_go_first_when_there_are_too_many(site):
    cache = static.OpenFileCache(valid=10, max_entries=2)
    where = route(site)
    hello = cache.lookup(where, "/static/hello.txt", b"", 0.0)
    cache.lookup(where, "/static/app.js", b"", 0.0)
    assert cache.lookup(where, "/static/hello.txt", b"", 1.0) is hello  # hello is now the most recent
    cache.lookup(where, "/static/lib.js", b"", 2.0)  # app.js goes
    assert len(cache) == 2
    assert cache.lookup(where, "/static/hello.txt", b"", 3.0) is hello
    assert cache.cached_bytes == len(b"hello") + len(b"lib")


def test_least_recently_used_entries_go_first_when_they_hold_too_many_bytes(site):
    for name in "abc":
        write(site / f"{name}.bin", name.encode() * 4096)
    cache = static.OpenFileCache(valid=10, max_bytes=10000)
    where = route(site)
    a = cache.lookup(where, "/static/a.bin", b"", 0.0)
    cache.lookup(where, "/static/b.bin", b"", 0.0)
    assert cache.cached_bytes == 8192
    cache.lookup(where, "/static/c.bin", b"", 0.0)  # 12288 > 10000: a goes
    assert len(cache) == 2 and cache.cached_bytes == 8192
    assert cache.lookup(where, "/static/a.bin", b"", 1.0) is not a


def test_files_that_do_not_fit_are_kept_without_their_bytes(site):
    write(site / "large.bin", b"x" * (static.SMALL_FILE + 1))
    write(site / "medium.bin", b"m" * 20000)
    cache = static.OpenFileCache(valid=10, max_bytes=10000)
    where = route(site)
    for url in ("/static/large.bin", "/static/medium.bin"):
        entry = cache.lookup(where, url, b"", 0.0)
        assert entry.variants[0].body is None
        assert static.plan(entry.variants[0], b"GET", []).body is None  # the server opens it
        assert cache.lookup(where, url, b"", 1.0) is entry
    assert (len(cache), cache.cached_bytes) == (2, 0)


def test_one_entry_serves_every_accept_encoding(files):
    root, where, cache = files
    entry = cache.lookup(where, "/static/app.js", b"", 0.0)
    bodies = {accept: static.plan(entry.choose(accept), b"GET", []).body
              for accept in (None, b"gzip", b"br, gzip", b"br;q=0")}
    assert bodies == {None: b"plain", b"gzip": b"gz", b"br, gzip": b"br", b"br;q=0": b"plain"}
    assert len(cache) == 1 and cache.cached_bytes == len(b"plain" + b"gz" + b"br")


def test_a_sibling_added_later_appears_after_the_interval(files):
    root, where, cache = files
    assert len(cache.lookup(where, "/static/hello.txt", b"", 0.0).variants) == 1
    write(root / "hello.txt.gz", b"gzipped")
    variant = cache.lookup(where, "/static/hello.txt", b"", 1.0).choose(b"gzip")
    assert (variant.encoding, variant.body) == (b"gzip", b"gzipped")
    assert dict(variant.headers)[b"vary"] == b"Accept-Encoding"


def test_ranges_and_conditionals_on_cached_bytes(files):
    root, where, cache = files
    write(root / "alphabet.txt", ALPHABET)
    variant = cache.lookup(where, "/static/alphabet.txt", b"", 0.0).choose(None)
    assert variant.body == ALPHABET
    one = static.plan(variant, b"GET", [(b"range", b"bytes=-3")])
    assert (one.status, one.body) == (206, b"xyz")
    several = static.plan(variant, b"GET", [(b"range", b"bytes=0-1,4-5")])
    assert several.status == 206 and len(several.body) == several.content_length
    assert b"\r\n\r\nab\r\n" in several.body and b"\r\n\r\nef\r\n" in several.body
    fresh = static.plan(variant, b"GET", [(b"if-none-match", variant.etag)])
    assert (fresh.status, fresh.body, fresh.headers) == (304, b"", variant.validators)
    newer = static.plan(variant, b"GET", [(b"range", b"bytes=0-0"), (b"if-range", b'"older"')])
    assert (newer.status, newer.body) == (200, ALPHABET)


def test_a_variant_tells_whether_it_describes_an_opened_file(files):
    root, where, cache = files
    write(root / "big.bin", b"b" * (static.SMALL_FILE + 1))
    variant = cache.lookup(where, "/static/big.bin", b"", 0.0).choose(None)
    with open(variant.path, "rb") as fh:
        assert variant.matches(os.fstat(fh.fileno()))
    write(root / "big.bin", b"c" * (static.SMALL_FILE + 2))
    with open(variant.path, "rb") as fh:
        info = os.fstat(fh.fileno())
    assert not variant.matches(info)
    restated = variant.restated(info)
    assert restated.matches(info)
    assert dict(restated.headers)[b"content-length"] == b"%d" % (static.SMALL_FILE + 2)
    assert restated.validators[2:] == variant.validators[2:]  # the route's Cache-Control and Vary stay
    assert restated.etag != variant.etag


# --- compressed once (a route with compress) ----------------------------------------------

TEXT = b"".join(b"line %d of a text file that compresses well\n" % i for i in range(2000))


@pytest.fixture
def compressing(tmp_path):
    write(tmp_path / "big.txt", TEXT)
    write(tmp_path / "tiny.txt", b"too small to compress")
    write(tmp_path / "photo.png", TEXT)
    return tmp_path, route(tmp_path, compress=Compress()), static.OpenFileCache(valid=1.0)


def encoded(cache, where, url, accept=b"gzip", now=0.0, request=()) -> static.Variant:
    """The variant the server would send for ``url``, as files.serve_static picks it."""
    entry = cache.lookup(where, url, b"", now)
    variant = entry.choose(accept)
    coding = static.coding_for(entry, variant, where, list(request), accept)
    return variant if coding is None else cache.encoded(where, url, entry, coding) or variant


@pytest.mark.parametrize("coding", [b"gzip", b"br", b"zstd"])
def test_a_file_is_compressed_once_and_kept_with_its_entry(compressing, coding):
    root, where, cache = compressing
    first = encoded(cache, where, "/static/big.txt", coding)
    assert first.encoding == coding and len(first.body) < len(TEXT) // 5
    assert encoding.compress(coding, where.compress.levels[coding], TEXT) == first.body
    assert encoded(cache, where, "/static/big.txt", coding, now=0.5) is first  # not compressed again
    assert cache.cached_bytes == len(first.body)  # the file itself (over 64 KiB) is not held, its coded bytes are
    plan = static.plan(first, b"GET", [])
    assert (plan.status, plan.body, plan.content_length) == (200, first.body, len(first.body))
    headers = dict(plan.headers)
    assert headers[b"content-encoding"] == coding and headers[b"vary"] == b"Accept-Encoding"
    assert headers[b"etag"] == b"W/" + tag_of(root / "big.txt") and b"accept-ranges" not in headers
    assert headers[b"content-length"] == b"%d" % len(first.body)


def test_the_compressed_variant_answers_conditionals(compressing):
    root, where, cache = compressing
    variant = encoded(cache, where, "/static/big.txt")
    weak = variant.etag
    assert static.plan(variant, b"GET", [(b"if-none-match", weak)]).status == 304
    assert static.plan(variant, b"GET", [(b"if-none-match", tag_of(root / "big.txt"))]).status == 304
    assert static.plan(variant, b"GET", [(b"if-match", weak)]).status == 412  # a weak tag never matches strongly
    assert dict(static.plan(variant, b"GET", [(b"if-none-match", weak)]).headers)[b"etag"] == weak
    head = static.plan(variant, b"HEAD", [])
    assert (head.body, head.content_length) == (b"", len(variant.body))  # HEAD: the length a GET would have


def test_the_plain_file_varies_too_and_keeps_its_strong_tag(compressing):
    root, where, cache = compressing
    plain = encoded(cache, where, "/static/big.txt", accept=b"identity")
    assert plain.encoding is None and plain.etag == tag_of(root / "big.txt")
    assert dict(plain.headers)[b"vary"] == b"Accept-Encoding"


@pytest.mark.parametrize("url, accept, asked", [
    ("/static/tiny.txt", b"gzip", ()),  # below min_length
    ("/static/photo.png", b"gzip", ()),  # a type not listed
    ("/static/big.txt", None, ()),
    ("/static/big.txt", b"gzip;q=0", ()),
    ("/static/big.txt", b"gzip", [(b"range", b"bytes=0-9")]),  # the range is of the file itself
    ("/static/big.txt", b"gzip", [(b"cache-control", b"no-transform")]),
])
def test_what_is_sent_as_it_is(compressing, url, accept, asked):
    root, where, cache = compressing
    assert encoded(cache, where, url, accept, request=asked).encoding is None
    assert cache.cached_bytes == 0 or url == "/static/tiny.txt"


def test_no_transform_on_the_route_keeps_files_as_they_are(compressing):
    root, _, cache = compressing
    where = route(root, compress=Compress(), cache_control="public, no-transform")
    entry = cache.lookup(where, "/static/big.txt", b"", 0.0)
    assert not entry.compressible and b"vary" not in dict(entry.variants[0].headers)


def test_a_precompressed_sibling_still_wins(compressing):
    root, where, cache = compressing
    write(root / "big.txt.br", b"made by the build")
    assert encoded(cache, where, "/static/big.txt", b"br, gzip").body == b"made by the build"
    # A coding the siblings lack is still made on the fly.
    assert encoded(cache, where, "/static/big.txt", b"zstd").encoding == b"zstd"


def test_a_changed_file_is_compressed_again_after_the_interval(compressing):
    root, where, cache = compressing
    old = encoded(cache, where, "/static/big.txt")
    write(root / "big.txt", TEXT + b"one more line\n")
    assert encoded(cache, where, "/static/big.txt", now=0.5) is old  # trusted for `valid` seconds
    new = encoded(cache, where, "/static/big.txt", now=1.5)
    assert new is not old and zlib.decompress(new.body, 31).endswith(b"one more line\n")
    assert cache.cached_bytes == len(new.body)  # the old entry's coded bytes left with it


def test_compressed_bytes_count_in_the_byte_budget(compressing):
    root, where, _ = compressing
    for i in range(3):
        write(root / f"t{i}.txt", TEXT + b"%d" % i)
    size = len(encoding.compress(b"gzip", 5, TEXT + b"0"))
    cache = static.OpenFileCache(valid=10, max_bytes=2 * size + size // 2)
    for i in range(3):
        assert encoded(cache, where, f"/static/t{i}.txt").encoding == b"gzip"
    assert len(cache) == 2 and cache.cached_bytes <= cache.max_bytes  # the least recently used went
    assert cache.cached_bytes == sum(entry.held for entry, _ in cache._entries.values())


def test_a_file_too_large_to_compress_at_once_is_left_to_the_stream(compressing, monkeypatch):
    root, where, cache = compressing
    monkeypatch.setattr(static, "ENCODE_ONCE", len(TEXT) - 1)
    assert encoded(cache, where, "/static/big.txt").encoding is None
    assert cache.cached_bytes == 0


def test_without_the_cache_nothing_is_kept(compressing):
    root, where, _ = compressing
    cache = static.OpenFileCache(valid=0)
    assert encoded(cache, where, "/static/big.txt").encoding == b"gzip"
    assert cache.cached_bytes == 0 and len(cache) == 0


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
