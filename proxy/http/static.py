"""Static files: which file a path names, and what to answer for it.

Two steps, both without sockets:

* ``locate(route, path)`` maps a normalised URL path to a file inside the
  route's folder (or a redirect, a listing, 403/404). ``routing.normalize_path``
  already decoded the path, removed its dot segments and refused NUL,
  backslashes and non-UTF-8 bytes; here symlinks are resolved and anything
  whose real path leaves the folder is a 404, dotfiles are a 404 unless
  allowed, and a path ending in ``/`` names a folder, never a file.
* ``plan(stat, ...)`` takes the ``os.fstat`` of the opened file and the
  request's conditional and Range headers and decides status, headers and
  which byte ranges make up the body (RFC 9110 sections 13 and 14).

The I/O layer opens the file between the two, so the answer describes the
file actually being sent.
"""

from __future__ import annotations

import calendar
import email.utils
import html
import mimetypes
import os
import re
import stat as stat_module
import time
from dataclasses import dataclass
from urllib.parse import quote

from ..config import Route
from ..errors import ClientError

_TYPES = mimetypes.MimeTypes(filenames=())  # the stdlib table only: same answer on every machine
for _ext, _type in {
    ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
    ".webp": "image/webp", ".avif": "image/avif", ".svg": "image/svg+xml", ".ico": "image/x-icon",
    ".woff": "font/woff", ".woff2": "font/woff2", ".wasm": "application/wasm", ".md": "text/markdown",
    ".webmanifest": "application/manifest+json", ".zst": "application/zstd",
}.items():
    _TYPES.add_type(_type, _ext)

_TEXTUAL = ("application/json", "application/manifest+json", "image/svg+xml", "application/xml")

# A compressed file asked for by its own name (app.js.gz, x.tar.gz) is sent as what it is:
# "text/javascript" with no Content-Encoding would make a browser run gzip bytes. mimetypes
# reports such a suffix as an encoding of the inner type; this maps the encoding to a type.
_COMPRESSED_TYPES = {
    "gzip": "application/gzip", "br": "application/x-brotli", "zstd": "application/zstd",
    "bzip2": "application/x-bzip2", "xz": "application/x-xz", "compress": "application/x-compress",
}

# Precompressed siblings in order of preference, and the Content-Encoding each means.
ENCODINGS = ((".br", b"br"), (".gz", b"gzip"))

MAX_RANGES = 16  # more parts than this in one Range header: the whole file is sent instead


def content_type(name: str) -> bytes:
    kind, encoding = _TYPES.guess_type(name, strict=False)
    if encoding is not None:
        kind = _COMPRESSED_TYPES.get(encoding, "application/octet-stream")
    if kind is None:
        return b"application/octet-stream"
    if kind.startswith("text/") or kind in _TEXTUAL:
        kind += "; charset=utf-8"
    return kind.encode()


@dataclass(frozen=True, slots=True)
class Located:
    """A regular file to serve: the variant on disk and how to describe it."""

    path: str
    content_type: bytes
    encoding: bytes | None  # Content-Encoding of a precompressed sibling
    vary: bool  # a sibling exists, so the answer depends on Accept-Encoding


@dataclass(frozen=True, slots=True)
class Redirect:
    location: bytes


@dataclass(frozen=True, slots=True)
class Listing:
    folder: str
    url_path: str


def encoding_weights(header: bytes | None) -> dict[bytes, float]:
    """Coding -> q-value of an Accept-Encoding header, RFC 9110 section 12.5.3.

    ``*`` gives its weight to the precompressed codings the header does not name.
    """
    weights: dict[bytes, float] = {}
    for item in (header or b"").lower().split(b","):
        coding, _, params = item.strip().partition(b";")
        q = 1.0
        params = params.strip()
        if params.startswith(b"q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if coding.strip():
            weights[coding.strip()] = q
    star = weights.pop(b"*", None)
    if star is not None:
        for _, coding in ENCODINGS:
            weights.setdefault(coding, star)
    return weights


def locate(route: Route, path: str, accept_encoding: bytes | None = None, query: bytes = b""):
    """The thing under ``route.static`` that ``path`` names: Located, Redirect or Listing.

    Raises ClientError(404) when there is nothing to serve, 403 for a folder
    without index or listing.
    """
    root = route.static
    assert root is not None
    relative = path[len(route.prefix):].lstrip("/") if path.startswith(route.prefix) else ""
    segments = [s for s in relative.split("/") if s]
    if not route.dotfiles and any(s.startswith(".") for s in segments):
        raise ClientError("dotfile", 404, keep_alive=True)
    candidate = os.path.join(root, *segments) if segments else str(root)
    try:
        real = os.path.realpath(candidate, strict=True)
        info = os.stat(real)
    except OSError:
        raise ClientError("no such file", 404, keep_alive=True) from None
    root_str = str(root)
    if real != root_str and not real.startswith(root_str + os.sep):
        raise ClientError("path leaves the static folder", 404, keep_alive=True)
    if not route.dotfiles and real != root_str and "/." in real[len(root_str):]:
        # A symlink without a dot in its name may still lead to one (config -> .env).
        raise ClientError("dotfile", 404, keep_alive=True)

    if stat_module.S_ISDIR(info.st_mode):
        if not path.endswith("/"):
            # normalize_path merged slashes, so this is "/x/", never "//host/".
            location = quote(path + "/").encode()
            return Redirect(location + (b"?" + query if query else b""))
        if route.index:
            # The index may itself be a symlink: resolve it and keep it inside the folder too.
            index = _inside(root_str, os.path.join(real, route.index))
            if index is not None and os.path.isfile(index):
                return _variant(index, accept_encoding, route.precompressed, root_str)
        if route.autoindex:
            return Listing(real, path)
        # With an upstream behind the route (nginx "try_files $uri @app") a folder with
        # nothing to serve is the app's to answer: 404 makes the caller forward it, where
        # 403 kept the app's own "/" out of reach whenever the folder had no index.html.
        raise ClientError("folder has no index", 404 if route.upstream else 403, keep_alive=True)
    if not stat_module.S_ISREG(info.st_mode):
        raise ClientError("not a regular file", 404, keep_alive=True)
    if path.endswith("/"):
        # RFC 3986 3.3: "hello.txt/" names something inside hello.txt, which has nothing inside
        # (open(2) says ENOTDIR; nginx 404).
        raise ClientError("a path ending in / names a folder", 404, keep_alive=True)
    return _variant(real, accept_encoding, route.precompressed, root_str)


def _inside(root: str, path: str) -> str | None:
    """``path`` with symlinks resolved, or None when it does not exist or resolves outside ``root``."""
    try:
        real = os.path.realpath(path, strict=True)
    except OSError:
        return None
    return real if real == root or real.startswith(root + os.sep) else None


class LocateCache:
    """nginx's open_file_cache in miniature: what a path resolved to, kept ``valid`` seconds.

    ``locate`` costs a realpath (one lstat per path component), a stat and a
    stat per precompressed sibling; most requests ask for the same few files.
    Only files are kept (redirects carry the query, listings change, errors
    are cheap), and the caller forgets an entry whose file no longer opens.
    The clock is passed in, so tests need no sleeping.
    """

    def __init__(self, valid: float = 1.0, size: int = 4096) -> None:
        self.valid = valid
        self.size = size
        self._entries: dict[tuple, tuple[Located, float]] = {}

    def __repr__(self) -> str:
        return f"<LocateCache {len(self._entries)}/{self.size} valid={self.valid}s>"

    def locate(self, route: Route, path: str, accept_encoding: bytes | None, query: bytes, now: float):
        key = (route.prefix, path, accept_encoding)
        entry = self._entries.get(key)
        if entry is not None and entry[1] > now:
            return entry[0]
        found = locate(route, path, accept_encoding, query)
        if type(found) is Located:
            if len(self._entries) >= self.size:
                self._entries.clear()  # a flood of distinct paths: start afresh rather than track age
            self._entries[key] = (found, now + self.valid)
        return found

    def forget(self, route: Route, path: str, accept_encoding: bytes | None) -> None:
        self._entries.pop((route.prefix, path, accept_encoding), None)


def _variant(path: str, accept_encoding: bytes | None, precompressed: bool, root: str) -> Located:
    kind = content_type(path)
    if not precompressed:
        return Located(path, kind, None, False)
    # A sibling is a file of its own: a symlink "app.js.gz -> /etc/passwd" must not be
    # served for app.js, so each sibling is resolved and kept inside the folder like the file.
    siblings = []
    for suffix, coding in ENCODINGS:
        sibling = _inside(root, path + suffix)
        if sibling is not None and os.path.isfile(sibling):
            siblings.append((sibling, coding))
    if not siblings:
        return Located(path, kind, None, False)
    # The client's q-values decide (RFC 9110 12.5.3); on a tie, the order of ENCODINGS.
    # The plain file loses only to a coding weighted at least as high as identity.
    weights = encoding_weights(accept_encoding)
    sibling, coding = max(siblings, key=lambda pair: weights.get(pair[1], 0.0))
    best = weights.get(coding, 0.0)
    if best > 0 and best >= weights.get(b"identity", best):
        return Located(sibling, kind, coding, True)
    return Located(path, kind, None, True)


# --- conditional requests and ranges ---------------------------------------

def etag(info: os.stat_result) -> bytes:
    """Strong validator from mtime and size, as nginx makes it."""
    return b'"%x-%x"' % (info.st_mtime_ns, info.st_size)


def http_date(timestamp: float) -> bytes:
    return email.utils.formatdate(timestamp, usegmt=True).encode()


_MONTHS = {m.encode(): i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_DAY = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = rb"(?P<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = rb"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)"
# RFC 9110 section 5.6.7: IMF-fixdate, and the two obsolete forms a recipient MUST accept too.
# The names are case-sensitive there; the weekday is not checked against the date (nginx neither).
_DATE_FORMATS = (
    re.compile(_DAY + rb", (?P<day>\d\d) " + _MONTH + rb" (?P<year>\d{4}) " + _TIME + rb" GMT"),
    re.compile(rb"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, (?P<day>\d\d)-" + _MONTH + rb"-(?P<year>\d\d) "
               + _TIME + rb" GMT"),
    re.compile(_DAY + rb" " + _MONTH + rb" (?P<day>[ \d]\d) " + _TIME + rb" (?P<year>\d{4})"),
)


def parse_http_date(value: bytes, this_year: int | None = None) -> int | None:
    """An HTTP-date in any of its three forms -> seconds since the epoch; None when it is not one.

    ``this_year`` places an rfc850-date's two-digit year: one more than 50 years ahead
    is the most recent past year with those digits (RFC 9110 5.6.7).
    """
    for form in _DATE_FORMATS:
        match = form.fullmatch(value)
        if match is not None:
            break
    else:
        return None
    year = int(match["year"])
    if year < 100:
        this_year = this_year or time.gmtime().tm_year
        year += this_year - this_year % 100
        if year > this_year + 50:
            year -= 100
    fields = (year, _MONTHS[match["month"]], int(match["day"]),
              int(match["hour"]), int(match["minute"]), min(int(match["second"]), 59))  # 60: a leap second
    if not (1 <= fields[2] <= calendar.monthrange(year, fields[1])[1] and fields[3] < 24 and fields[4] < 60):
        return None
    return calendar.timegm(fields)


def _etags(value: bytes) -> list[bytes]:
    return [t.strip() for t in value.split(b",") if t.strip()]


def _weak_match(tags: list[bytes], current: bytes) -> bool:
    return any(t == b"*" or t.removeprefix(b"W/") == current for t in tags)


def _strong_match(tags: list[bytes], current: bytes) -> bool:
    return any(t == b"*" or t == current for t in tags)


_OWS = b" \t"


def parse_range(header: bytes, size: int) -> list[tuple[int, int]] | None:
    """``Range`` -> satisfiable (start, end-inclusive) pairs; None when the header is
    not a valid bytes range (then it is ignored, RFC 9110 section 14.2). An empty
    list means nothing is satisfiable (416).

    The grammar (RFC 9110 14.1.1) allows whitespace only around the commas of the
    list: ``bytes = 0-4`` or ``bytes=0 - 4`` is not a range (nginx ignores it too).
    """
    unit, sep, spec = header.partition(b"=")
    if not sep or unit.lower() != b"bytes":
        return None
    ranges: list[tuple[int, int]] = []
    items = [i.strip(_OWS) for i in spec.split(b",")]
    if not any(items):
        return None
    for item in items:
        if not item:
            continue
        first, dash, last = item.partition(b"-")
        if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
            return None
        if not first:
            if not last:
                return None
            suffix = int(last)
            if suffix > 0 and size > 0:
                ranges.append((max(size - suffix, 0), size - 1))
            continue
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None
        if start < size:
            ranges.append((start, min(end, size - 1)))
    return ranges


def _coalesce_unsafe(ranges: list[tuple[int, int]], size: int) -> bool:
    """True when several ranges overlap or add up to more than the file: the
    multipart answer would be a way to amplify (CVE-2011-3192), so send it whole."""
    if len(ranges) > MAX_RANGES:
        return True
    if sum(e - s + 1 for s, e in ranges) > size:
        return True
    ordered = sorted(ranges)
    return any(b[0] <= a[1] for a, b in zip(ordered, ordered[1:]))


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send for a file: status, headers, and the body as parts.

    A part is either bytes (multipart boundaries) or ``(offset, length)`` of the file.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    parts: tuple
    content_length: int


def plan(
    info: os.stat_result,
    located: Located,
    method: bytes,
    request_headers: list[tuple[bytes, bytes]],
    cache_control: str = "",
) -> Plan:
    """Decide the answer for an opened file (RFC 9110 13.2.2 for the order of preconditions)."""
    size = info.st_size
    tag = etag(info)
    modified = http_date(info.st_mtime)
    given = {}
    for name, value in request_headers:
        if name in (b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since",
                    b"range", b"if-range"):
            given[name] = value

    validators = [(b"etag", tag), (b"last-modified", modified)]
    if cache_control:
        validators.append((b"cache-control", cache_control.encode()))
    if located.vary:
        validators.append((b"vary", b"Accept-Encoding"))

    if b"if-match" in given:
        if not _strong_match(_etags(given[b"if-match"]), tag):
            return Plan(412, [], (), 0)
    elif b"if-unmodified-since" in given:
        since = parse_http_date(given[b"if-unmodified-since"])
        if since is not None and int(info.st_mtime) > since:
            return Plan(412, [], (), 0)
    if b"if-none-match" in given:
        if _weak_match(_etags(given[b"if-none-match"]), tag):
            if method in (b"GET", b"HEAD"):
                return Plan(304, validators, (), 0)
            return Plan(412, [], (), 0)
    elif b"if-modified-since" in given and method in (b"GET", b"HEAD"):
        since = parse_http_date(given[b"if-modified-since"])
        if since is not None and int(info.st_mtime) <= since:
            return Plan(304, validators, (), 0)

    headers = [(b"content-type", located.content_type), *validators, (b"accept-ranges", b"bytes")]
    if located.encoding:
        headers.append((b"content-encoding", located.encoding))

    ranges = None
    if b"range" in given and method == b"GET" and _if_range_holds(given.get(b"if-range"), tag, modified, int(info.st_mtime)):
        ranges = parse_range(given[b"range"], size)
    if ranges is None or (len(ranges) > 1 and _coalesce_unsafe(ranges, size)):
        headers.append((b"content-length", b"%d" % size))
        return Plan(200, headers, ((0, size),) if size else (), size)
    if not ranges:
        return Plan(416, [(b"content-range", b"bytes */%d" % size)], (), 0)
    if len(ranges) == 1:
        start, end = ranges[0]
        headers += [(b"content-range", b"bytes %d-%d/%d" % (start, end, size)),
                    (b"content-length", b"%d" % (end - start + 1))]
        return Plan(206, headers, ((start, end - start + 1),), end - start + 1)
    return _multipart(headers, ranges, size, located.content_type)


def _if_range_holds(if_range: bytes | None, tag: bytes, modified: bytes, mtime: int) -> bool:
    """RFC 9110 section 13.1.5: an entity tag must match strongly, a date exactly (in any of its forms)."""
    if if_range is None:
        return True
    if if_range.startswith((b'"', b"W/")):
        return if_range == tag
    return if_range == modified or parse_http_date(if_range) == mtime


def _multipart(headers, ranges, size, kind) -> Plan:
    boundary = os.urandom(12).hex().encode()
    parts: list = []
    length = 0
    for start, end in ranges:
        preamble = (b"\r\n--" + boundary + b"\r\ncontent-type: " + kind
                    + b"\r\ncontent-range: bytes %d-%d/%d\r\n\r\n" % (start, end, size))
        parts += [preamble, (start, end - start + 1)]
        length += len(preamble) + end - start + 1
    closing = b"\r\n--" + boundary + b"--\r\n"
    parts.append(closing)
    length += len(closing)
    headers = [(n, v) for n, v in headers if n != b"content-type"]
    headers += [(b"content-type", b"multipart/byteranges; boundary=" + boundary),
                (b"content-length", b"%d" % length)]
    return Plan(206, headers, tuple(parts), length)


def listing_page(folder: str, url_path: str, dotfiles: bool) -> bytes:
    """An HTML list of a folder's entries (autoindex)."""
    rows = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith(".") and not dotfiles:
                continue
            try:
                is_dir = entry.is_dir()
                info = entry.stat()
            except OSError:
                continue
            name = entry.name + ("/" if is_dir else "")
            size = "-" if is_dir else str(info.st_size)
            when = email.utils.formatdate(info.st_mtime, usegmt=True)
            rows.append(f'<tr><td><a href="{quote(name)}">{html.escape(name)}</a></td>'
                        f"<td>{size}</td><td>{when}</td></tr>")
    title = html.escape(url_path)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>Index of {title}</title></head>"
            f"<body><h1>Index of {title}</h1><table>"
            f'<tr><td><a href="../">../</a></td><td></td><td></td></tr>{"".join(rows)}</table></body></html>')
    return page.encode()

