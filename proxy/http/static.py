"""Static files: which file a path names, and what to answer for it.

Four steps, none touching a socket (file system calls are the point):

* ``locate(route, path)`` maps a normalised URL path (``routing.normalize_path``
  already decoded it, removed dot segments and refused NUL, backslashes and
  non-UTF-8 bytes) to a file inside the route's folder, with its precompressed
  siblings; or to a redirect, a listing, 403/404. Symlinks are resolved and
  anything whose real path leaves the folder is a 404, dotfiles are a 404
  unless allowed, and a path ending in ``/`` names a folder, never a file.
* ``describe`` turns what ``locate`` found into an ``Entry``: per variant
  (the file, its ``.br``/``.gz`` siblings) the stat facts, the response
  headers ready-made and, for a small file, its bytes.
* ``OpenFileCache`` (nginx's ``open_file_cache``) keeps entries per
  (route, path) and re-stats them once ``valid`` seconds have passed, so a
  hit costs a dict lookup and a clock comparison.
* ``plan(variant, ...)`` takes the request's conditional and Range headers
  and decides status, headers and body from those facts (RFC 9110 sections
  13 and 14). For a cached small file the body is the bytes themselves; for
  a large one the server opens the file and checks with ``Variant.matches``
  that the entry still describes what it opened.
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
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple
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
SMALL_FILE = 64 * 1024  # files up to this size are kept in memory by the cache (and written with their head)


def content_type(name: str) -> bytes:
    kind, encoding = _TYPES.guess_type(name, strict=False)
    if encoding is not None:
        kind = _COMPRESSED_TYPES.get(encoding, "application/octet-stream")
    if kind is None:
        return b"application/octet-stream"
    if kind.startswith("text/") or kind in _TEXTUAL:
        kind += "; charset=utf-8"
    return kind.encode()


# --- which file a path names ------------------------------------------------

Identity = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


def _identity(info: os.stat_result) -> Identity:
    """What tells one version of a file from another: a change to any of these is a new file
    (ctime too, so a rewrite that restores the mtime is still seen)."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


@dataclass(frozen=True, slots=True)
class OnDisk:
    """One file as found: its real path, the Content-Encoding it stands for, its stat facts."""

    path: str
    encoding: bytes | None
    identity: Identity


@dataclass(frozen=True, slots=True)
class Located:
    """A regular file to serve: the file first, then its precompressed siblings in ENCODINGS order."""

    files: tuple[OnDisk, ...]


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
        coding, _, params = item.partition(b";")
        coding = coding.strip()
        q = 1.0
        if params:
            params = params.strip()
            if params.startswith(b"q="):
                try:
                    q = float(params[2:])
                except ValueError:
                    q = 0.0
        if coding:
            weights[coding] = q
    star = weights.pop(b"*", None)
    if star is not None:
        for _, coding in ENCODINGS:
            weights.setdefault(coding, star)
    return weights


def locate(route: Route, path: str, query: bytes = b"") -> Located | Redirect | Listing:
    """The thing under ``route.static`` that ``path`` names.

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
            index = _regular_inside(root_str, os.path.join(real, route.index))
            if index is not None:
                return _with_siblings(*index, route.precompressed, root_str)
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
    return _with_siblings(real, info, route.precompressed, root_str)


def _regular_inside(root: str, path: str) -> tuple[str, os.stat_result] | None:
    """``path`` with symlinks resolved and its stat, or None unless it is a regular file inside ``root``."""
    try:
        real = os.path.realpath(path, strict=True)
        info = os.stat(real)
    except OSError:
        return None
    if real != root and not real.startswith(root + os.sep):
        return None
    return (real, info) if stat_module.S_ISREG(info.st_mode) else None


def _with_siblings(path: str, info: os.stat_result, precompressed: bool, root: str) -> Located:
    files = [OnDisk(path, None, _identity(info))]
    if precompressed:
        # A sibling is a file of its own: a symlink "app.js.gz -> /etc/passwd" must not be
        # served for app.js, so each sibling is resolved and kept inside the folder like the file.
        for suffix, coding in ENCODINGS:
            sibling = _regular_inside(root, path + suffix)
            if sibling is not None:
                files.append(OnDisk(sibling[0], coding, _identity(sibling[1])))
    return Located(tuple(files))


# --- what is known about a file ---------------------------------------------

@dataclass(frozen=True, slots=True, eq=False)
class Variant:
    """One file that can answer for a path (the file itself or a precompressed sibling):
    its stat facts, the headers of a 200 ready-made (Content-Length last), and, when small
    and cached, its bytes."""

    path: str
    encoding: bytes | None
    identity: Identity
    content_type: bytes
    etag: bytes
    last_modified: bytes
    validators: tuple[tuple[bytes, bytes], ...]  # what a 304 repeats (RFC 9110 15.4.5)
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None  # the whole file when it was read into the cache
    whole: tuple  # the Plans of a plain GET and HEAD, made once: most requests have no conditionals

    @property
    def size(self) -> int:
        return self.identity[2]

    @property
    def mtime(self) -> int:
        """Last-Modified in whole seconds, which is what date conditionals compare."""
        return self.identity[3] // 1_000_000_000

    def matches(self, info: os.stat_result) -> bool:
        """True when ``info`` (the fstat of an opened file) is the file this variant describes."""
        return _identity(info) == self.identity

    def restated(self, info: os.stat_result) -> "Variant":
        """The same variant describing the file ``info`` was taken from (its bytes not kept)."""
        return _variant(OnDisk(self.path, self.encoding, _identity(info)), self.content_type, self.validators[2:],
                        None)


def _variant(found: OnDisk, kind: bytes, route_headers: tuple, body: bytes | None) -> Variant:
    """``route_headers``: Cache-Control and Vary, which a 304 repeats after ETag and Last-Modified."""
    size, mtime_ns = found.identity[2], found.identity[3]
    tag = b'"%x-%x"' % (mtime_ns, size)  # a strong validator from mtime and size, as nginx makes it
    modified = http_date(mtime_ns // 1_000_000_000)
    validators = ((b"etag", tag), (b"last-modified", modified), *route_headers)
    headers = [(b"content-type", kind), *validators, (b"accept-ranges", b"bytes")]
    if found.encoding:
        headers.append((b"content-encoding", found.encoding))
    headers.append((b"content-length", b"%d" % size))
    headers = tuple(headers)
    parts = ((0, size),) if size else ()
    whole = (Plan(200, headers, parts, size, body), Plan(200, headers, parts, size, b""))
    return Variant(found.path, found.encoding, found.identity, kind, tag, modified, validators, headers, body,
                   whole)


@dataclass(frozen=True, slots=True, eq=False)
class Entry:
    """What a path resolved to: its variants, the file itself first."""

    located: Located
    variants: tuple[Variant, ...]
    cached_bytes: int  # file bytes held in the variants

    def choose(self, accept_encoding: bytes | None) -> Variant:
        """The variant for a request's Accept-Encoding: the client's q-values decide (RFC 9110
        12.5.3); on a tie, the order of ENCODINGS. The plain file loses only to a coding weighted
        at least as high as identity."""
        variants = self.variants
        if len(variants) == 1:
            return variants[0]
        weights = encoding_weights(accept_encoding)
        best, best_q = variants[0], 0.0
        for variant in variants[1:]:
            q = weights.get(variant.encoding, 0.0)
            if q > best_q:
                best, best_q = variant, q
        if best_q > 0 and best_q >= weights.get(b"identity", best_q):
            return best
        return variants[0]


def describe(route: Route, located: Located, body_budget: int = 0) -> Entry:
    """An Entry for what ``locate`` found. The bytes of the small variants are read when
    together they fit ``body_budget`` (0: never; an empty file needs no read)."""
    kind = content_type(located.files[0].path)
    route_headers = ((b"cache-control", route.cache_control.encode()),) if route.cache_control else ()
    if len(located.files) > 1:  # a sibling exists, so the answer depends on Accept-Encoding
        route_headers += ((b"vary", b"Accept-Encoding"),)
    small = sum(f.identity[2] for f in located.files if f.identity[2] <= SMALL_FILE)
    read = small <= body_budget
    variants = []
    for found in located.files:
        size = found.identity[2]
        body = b"" if size == 0 else _read(found) if read and size <= SMALL_FILE else None
        variants.append(_variant(found, kind, route_headers, body))
    return Entry(located, tuple(variants), sum(len(v.body) for v in variants if v.body))


def _read(found: OnDisk) -> bytes | None:
    """The file's bytes, or None when it is no longer the file ``locate`` saw."""
    try:
        fd = os.open(found.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if _identity(os.fstat(fd)) != found.identity:
            return None
        data = os.read(fd, found.identity[2])
    finally:
        os.close(fd)
    return data if len(data) == found.identity[2] else None


def lookup(route: Route, path: str, query: bytes = b"", body_budget: int = 0) -> Entry | Redirect | Listing:
    """``locate`` and ``describe`` without a cache (``proxy explain``, and the cache when off)."""
    found = locate(route, path, query)
    return describe(route, found, body_budget) if type(found) is Located else found


class OpenFileCache:
    """nginx's open_file_cache: what a path resolved to, its headers and small files' bytes.

    ``locate`` costs a realpath (one lstat per path component), a stat per
    variant and the sibling checks; ``describe`` formats dates and reads
    files. Most requests ask for the same few files, so an entry is kept per
    (route, path) and trusted for ``valid`` seconds; then the path is located
    again (every symlink, dotfile and folder check anew) and the entry, with
    its bytes, is kept when every variant has the same identity, or rebuilt.
    So a changed file is served fresh at most ``valid`` seconds later.
    ``valid = 0`` turns the cache off: every request looks up afresh.

    Bounded by ``max_entries`` and by ``max_bytes`` of file bytes held; the
    least recently used entries go first. Only files are kept (redirects
    carry the query, listings change, errors are cheap). The clock is passed
    in, so tests need no sleeping.
    """

    def __init__(self, valid: float = 1.0, max_entries: int = 10000, max_bytes: int = 64 * 1024**2) -> None:
        self.valid = valid
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.cached_bytes = 0
        self._entries: OrderedDict[tuple[str, str], tuple[Entry, float]] = OrderedDict()

    def __repr__(self) -> str:
        return (f"<OpenFileCache {len(self._entries)}/{self.max_entries} entries "
                f"{self.cached_bytes}/{self.max_bytes} bytes valid={self.valid:g}s>")

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, route: Route, path: str, query: bytes, now: float) -> Entry | Redirect | Listing:
        """The Entry for ``path`` (or a Redirect, a Listing; ClientError as ``locate``)."""
        key = (route.where, path)
        cached = self._entries.get(key)
        if cached is not None:
            if now < cached[1]:
                self._entries.move_to_end(key)
                return cached[0]
            return self._revalidate(key, route, path, query, now, cached[0])
        if self.valid <= 0:
            return lookup(route, path, query)
        found = locate(route, path, query)
        if type(found) is not Located:
            return found
        return self._store(key, describe(route, found, self.max_bytes), now)

    def forget(self, route: Route, path: str) -> None:
        cached = self._entries.pop((route.where, path), None)
        if cached is not None:
            self.cached_bytes -= cached[0].cached_bytes

    def _revalidate(self, key, route: Route, path: str, query: bytes, now: float, entry: Entry):
        try:
            found = locate(route, path, query)
        except ClientError:
            self.forget(route, path)
            raise
        if type(found) is not Located:
            self.forget(route, path)
            return found
        if found == entry.located:  # the same files, unchanged: keep the entry and its bytes
            self._entries[key] = (entry, now + self.valid)
            self._entries.move_to_end(key)
            return entry
        self.forget(route, path)
        return self._store(key, describe(route, found, self.max_bytes), now)

    def _store(self, key, entry: Entry, now: float) -> Entry:
        self._entries[key] = (entry, now + self.valid)
        self.cached_bytes += entry.cached_bytes
        while len(self._entries) > self.max_entries or self.cached_bytes > self.max_bytes:
            _, (old, _) = self._entries.popitem(last=False)
            self.cached_bytes -= old.cached_bytes
        return entry


# --- conditional requests and ranges ---------------------------------------

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


def _date_of(value: bytes, variant: Variant) -> int | None:
    # Clients mostly send back the Last-Modified they were given: that needs no parsing.
    return variant.mtime if value == variant.last_modified else parse_http_date(value)


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


class Plan(NamedTuple):
    """What to send for a file: status, headers, and the body.

    ``parts`` are bytes (multipart boundaries) or ``(offset, length)`` of the file.
    ``body`` is the whole body when no file needs opening for it: the cached bytes
    of a small file, or b"" when there is no body (HEAD, 304, 412, 416); None when
    the server must open the file and send ``parts``.
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    parts: tuple
    content_length: int
    body: bytes | None = None


_CONDITIONAL = frozenset((b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"range",
                          b"if-range"))


def plan(variant: Variant, method: bytes, request_headers: list[tuple[bytes, bytes]]) -> Plan:
    """Decide the answer from the variant's facts (RFC 9110 13.2.2 for the order of preconditions)."""
    given = {name: value for name, value in request_headers if name in _CONDITIONAL}
    if not given and method != b"HEAD":
        return variant.whole[0]  # a plain GET (or a method the route does not serve): the whole file
    size = variant.size
    tag = variant.etag
    if given:
        if b"if-match" in given:
            if not _strong_match(_etags(given[b"if-match"]), tag):
                return Plan(412, (), (), 0, b"")
        elif b"if-unmodified-since" in given:
            since = _date_of(given[b"if-unmodified-since"], variant)
            if since is not None and variant.mtime > since:
                return Plan(412, (), (), 0, b"")
        if b"if-none-match" in given:
            if _weak_match(_etags(given[b"if-none-match"]), tag):
                if method in (b"GET", b"HEAD"):
                    return Plan(304, variant.validators, (), 0, b"")
                return Plan(412, (), (), 0, b"")
        elif b"if-modified-since" in given and method in (b"GET", b"HEAD"):
            since = _date_of(given[b"if-modified-since"], variant)
            if since is not None and variant.mtime <= since:
                return Plan(304, variant.validators, (), 0, b"")
        if b"range" in given and method == b"GET" and _if_range_holds(given.get(b"if-range"), variant):
            ranges = parse_range(given[b"range"], size)
            if ranges is not None and (len(ranges) == 1 or not _coalesce_unsafe(ranges, size)):
                return _partial(variant, ranges)
    return variant.whole[1] if method == b"HEAD" else variant.whole[0]


def _partial(variant: Variant, ranges: list[tuple[int, int]]) -> Plan:
    size = variant.size
    if not ranges:
        return Plan(416, ((b"content-range", b"bytes */%d" % size),), (), 0, b"")
    data = variant.body
    if len(ranges) == 1:
        start, end = ranges[0]
        length = end - start + 1
        headers = (*variant.headers[:-1], (b"content-range", b"bytes %d-%d/%d" % (start, end, size)),
                   (b"content-length", b"%d" % length))
        return Plan(206, headers, ((start, length),), length, None if data is None else data[start:end + 1])
    return _multipart(variant, ranges)


def _if_range_holds(if_range: bytes | None, variant: Variant) -> bool:
    """RFC 9110 section 13.1.5: an entity tag must match strongly, a date exactly."""
    if if_range is None:
        return True
    if if_range.startswith((b'"', b"W/")):
        return if_range == variant.etag
    return _date_of(if_range, variant) == variant.mtime


def _multipart(variant: Variant, ranges: list[tuple[int, int]]) -> Plan:
    size = variant.size
    boundary = os.urandom(12).hex().encode()
    parts: list = []
    length = 0
    for start, end in ranges:
        preamble = (b"\r\n--" + boundary + b"\r\ncontent-type: " + variant.content_type
                    + b"\r\ncontent-range: bytes %d-%d/%d\r\n\r\n" % (start, end, size))
        parts += [preamble, (start, end - start + 1)]
        length += len(preamble) + end - start + 1
    closing = b"\r\n--" + boundary + b"--\r\n"
    parts.append(closing)
    length += len(closing)
    headers = (*(h for h in variant.headers if h[0] not in (b"content-type", b"content-length")),
               (b"content-type", b"multipart/byteranges; boundary=" + boundary), (b"content-length", b"%d" % length))
    data = variant.body
    body = None if data is None else b"".join(
        part if type(part) is bytes else data[part[0]:part[0] + part[1]] for part in parts)
    return Plan(206, headers, tuple(parts), length, body)


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

