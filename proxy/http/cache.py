"""The response cache's rules (RFC 9111 for a shared cache, RFC 5861's stale directives), sans-IO.

Strategy: the storage (server/cachestore.py) keeps bytes and the shell
(server/caching.py) moves them; every question with an RFC answer is a
function here, and each takes the time as an argument (seconds since the
epoch), so tests drive hours of a cache's life without sleeping.

* What a request asks of the cache: ``use`` (decide.py calls it for a route
  with ``cache = "NAME"``): look it up, skip it (BYPASS), or, for an unsafe
  method, invalidate what it changes (RFC 9111 section 4.4). The key is the
  route's ``[caches.NAME] key`` template (``KeyTemplate``).
* May a response be stored: ``storable`` returns a ``Stored`` (the facts the
  later questions need) or the reason it may not (RFC 9111 section 3).
* Is a stored response fresh: ``current_age`` and ``freshness`` (4.2), and
  may a stale one be served: while it is revalidated (``stale-while-revalidate``
  or ``use_stale = ["updating"]``), or when the upstream fails
  (``stale_on_error``: ``stale-if-error`` or ``use_stale``). ``no-cache``,
  ``must-revalidate``, ``proxy-revalidate`` and ``s-maxage`` forbid both
  (4.2.4).
* Which stored response a request selects: ``vary_names`` and ``variant``
  (4.1: one entry per combination of the request headers Vary lists).
* How to revalidate: ``validators`` (If-None-Match / If-Modified-Since,
  4.3.1), and ``refreshed`` folds a 304 into the stored response (4.3.4).
* The client's own conditional request answered from the cache:
  ``not_modified`` (4.3.2).

What is not done, on purpose: heuristic freshness (4.2.2 allows guessing a
lifetime from Last-Modified; nginx does not, and an app that says nothing
about caching should not find its answers cached: ``default_ttl`` says so
explicitly), storing partial content (206) or answering Range requests from
the cache (they are forwarded), and storing responses with Set-Cookie (one
user's cookie must never reach another; nginx refuses them too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from .static import parse_http_date

# RFC 9110 section 15.1: statuses that are heuristically cacheable; with 302 and 307 these are the final
# statuses this cache understands well enough to store (RFC 9111 section 3: "understood by the cache").
HEURISTIC = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
UNDERSTOOD = HEURISTIC | {302, 307}
# default_ttl applies to these, as nginx's proxy_cache_valid with a time alone does.
DEFAULT_TTL_STATUSES = frozenset({200, 301, 302})
# RFC 9110 section 9.2.1: safe methods. Any other (unknown ones included) invalidates (RFC 9111 4.4).
SAFE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
LOOKUP_METHODS = frozenset({b"GET", b"HEAD"})
# RFC 9111 section 1.2.2: a delta-seconds too large is taken as 2^31.
MAX_DELTA = 2**31
# The conditional and range fields of a client's request: not sent upstream when the cache fills or
# revalidates an entry (it needs a whole 200), and answered from the entry instead (not_modified).
CONDITIONAL = frozenset({b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since",
                         b"if-range"})
# Fields not kept with a stored response: Age is computed when it is served (RFC 9111 5.1), and the
# app's Server-Timing timed the request that made the answer, not the ones a stored copy answers.
NOT_STORED = frozenset({b"age", b"server-timing"})
# RFC 9111 section 3.2 (and 9110 15.4.5): fields a 304 does not update; they describe the stored body.
NOT_UPDATED = frozenset({b"content-length", b"content-encoding", b"content-range", b"transfer-encoding"})
# RFC 9110 section 15.4.5: what a 304 made from a stored 200 carries.
NOT_MODIFIED_FIELDS = frozenset({b"cache-control", b"content-location", b"etag", b"expires", b"vary",
                                 b"last-modified", b"via"})
# use_stale conditions (nginx's proxy_cache_use_stale), and the failure each upstream status names.
STALE_CONDITIONS = ("error", "timeout", "updating", "http_500", "http_502", "http_503", "http_504")
STATUS_CONDITIONS = {500: "http_500", 502: "http_502", 503: "http_503", 504: "http_504"}

# X-Cache-Status values (nginx's $upstream_cache_status).
HIT, MISS, EXPIRED, STALE, UPDATING, REVALIDATED, BYPASS = (
    "HIT", "MISS", "EXPIRED", "STALE", "UPDATING", "REVALIDATED", "BYPASS")
STATUSES = (HIT, MISS, EXPIRED, STALE, UPDATING, REVALIDATED, BYPASS)

Headers = "list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]"


# --- Cache-Control -----------------------------------------------------------------------------

_DIRECTIVE_RE = re.compile(rb'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?\s*(?:,|$)')


def directives(headers, name: bytes = b"cache-control") -> dict[bytes, bytes | None]:
    """The directives of every ``name`` field line: lower-case names, unquoted values (None: no value).
    The first occurrence of a directive counts (RFC 9111 section 4.2.1)."""
    out: dict[bytes, bytes | None] = {}
    for field, value in headers:
        if field != name:
            continue
        for match in _DIRECTIVE_RE.finditer(value):
            key = match[1].lower()
            raw = match[2]
            if raw is not None and raw.startswith(b'"'):
                raw = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
            out.setdefault(key, raw)
    return out


def delta_seconds(value: bytes | None) -> int | None:
    """RFC 9111 section 1.2.2: digits only; None when absent or malformed."""
    if not value or not value.isdigit():
        return None
    return min(int(value), MAX_DELTA)


def _field(headers, name: bytes) -> bytes | None:
    for field, value in headers:
        if field == name:
            return value
    return None


# --- what a request asks of the cache ----------------------------------------------------------

_VARIABLE_RE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
_SIMPLE = {
    "scheme": lambda head, scheme: scheme,
    "host": lambda head, scheme: head.host,
    "request_uri": lambda head, scheme: head.target,
    "uri": lambda head, scheme: head.path.encode(),
    "args": lambda head, scheme: head.query,
}


def _header_part(name: bytes):
    def part(head, scheme: bytes) -> bytes:
        return b",".join(value for field, value in head.headers if field == name)
    return part


def _cookie_part(name: bytes):
    def part(head, scheme: bytes) -> bytes:
        return cookie(head.headers, name) or b""
    return part


def cookie(headers, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in the request's Cookie fields (RFC 6265 section 5.4)."""
    for field, value in headers:
        if field == b"cookie":
            for pair in value.split(b";"):
                key, eq, found = pair.strip().partition(b"=")
                if eq and key == name:
                    return found
    return None


class KeyTemplate:
    """nginx's proxy_cache_key: text with variables, compiled once.

    ``$scheme``, ``$host``, ``$request_uri`` (the target as sent: path and query), ``$uri`` (the
    normalised path), ``$args`` (the query), ``$http_NAME`` (a request header, ``-`` written ``_``)
    and ``$cookie_NAME``. Unknown variables are a ValueError (config.py turns it into a message).
    """

    __slots__ = ("text", "_parts", "_default")

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list = []
        at = 0
        for match in _VARIABLE_RE.finditer(text):
            if match.start() > at:
                parts.append(text[at:match.start()].encode())
            name = match[1] or match[2]
            if name in _SIMPLE:
                parts.append(_SIMPLE[name])
            elif name.startswith("http_") and len(name) > 5:
                parts.append(_header_part(name[5:].lower().replace("_", "-").encode()))
            elif name.startswith("cookie_") and len(name) > 7:
                parts.append(_cookie_part(name[7:].encode()))
            else:
                raise ValueError(f"unknown variable ${name} (known: $scheme, $host, $request_uri, $uri, $args, "
                                 "$http_NAME, $cookie_NAME)")
            at = match.end()
        if at < len(text):
            parts.append(text[at:].encode())
        if not any(callable(p) for p in parts):
            raise ValueError("a key without a variable would give every request the same answer")
        self._parts = tuple(parts)
        # The default key, built without the loop below: the common case is the fast one.
        self._default = self._parts == (_SIMPLE["scheme"], _SIMPLE["host"], _SIMPLE["request_uri"])

    def __repr__(self) -> str:
        return f"KeyTemplate({self.text!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, KeyTemplate) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def build(self, head, scheme: bytes) -> bytes:
        if self._default:
            return scheme + head.host + head.target
        return b"".join(p if type(p) is bytes else p(head, scheme) for p in self._parts)


DEFAULT_KEY = "$scheme$host$request_uri"


def effective_uri(scheme: bytes, host: bytes, target: bytes) -> bytes:
    """The target URI (RFC 9110 section 7.1): what invalidations and PURGE name, whatever the key."""
    return scheme + b"://" + host + target


class CacheUse(NamedTuple):  # made per request: a NamedTuple, as decide.py's actions
    """What the cache does with one forwarded request (``Forward.cache``).

    ``mode``: "lookup" (answer from the cache when it can, fill it otherwise), "bypass" (forward
    without looking; ``why`` says why) or "invalidate" (an unsafe method: a non-error answer
    invalidates ``uri``). ``revalidate``: the client asked for a validated answer and the cache
    honours it (``client_no_cache = "revalidate"``); ``no_store``: its answer is not stored.
    """

    cache: str
    mode: str
    key: bytes
    uri: bytes
    why: str
    revalidate: bool = False
    no_store: bool = False


def use(head, scheme: bytes, settings) -> CacheUse:
    """What the cache ``settings`` (a config.Cache) does with ``head``; see CacheUse."""
    uri = effective_uri(scheme, head.host, head.target)
    method = head.method
    name = settings.name
    if method not in LOOKUP_METHODS:
        if method in SAFE:
            return CacheUse(name, "bypass", b"", uri, f"{method.decode()} is neither stored nor invalidates")
        return CacheUse(name, "invalidate", b"", uri,
                        f"{method.decode()} is unsafe: a 2xx or 3xx answer invalidates {uri.decode('latin-1')} "
                        "(RFC 9111 4.4)")
    key = settings.template.build(head, scheme)
    headers = head.headers
    if _field(headers, b"authorization") is not None:
        # RFC 9111 3.5: an answer to an authorized request is another user's unless it says otherwise.
        return CacheUse(name, "bypass", key, uri, "Authorization: answered by the upstream (RFC 9111 3.5)")
    if _field(headers, b"range") is not None:
        return CacheUse(name, "bypass", key, uri, "Range requests are forwarded, not answered from the cache")
    revalidate = no_store = False
    if settings.client_no_cache == "revalidate":
        asked = directives(headers)
        if not asked and b"no-cache" in directives(headers, b"pragma"):
            asked = {b"no-cache": None}  # RFC 9111 5.4: Pragma: no-cache when there is no Cache-Control
        revalidate = b"no-cache" in asked or asked.get(b"max-age") == b"0"
        no_store = b"no-store" in asked
    why = "looked up first" + (": the client asked for a validated answer (no-cache)" if revalidate else "")
    return CacheUse(name, "lookup", key, uri, why, revalidate, no_store)


# --- what may be stored ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Stored:
    """The facts of a stored response that the rules need (its body is the storage's business).

    Times are seconds since the epoch. ``headers`` are the response's as a client receives them,
    without Age (computed when served) and Server-Timing (NOT_STORED). ``lifetime``: freshness lifetime (RFC 9111 4.2.1);
    ``revalidate``: no-cache, validate before every use; ``strict``: must-revalidate,
    proxy-revalidate, s-maxage or no-cache, never served stale (4.2.4).
    """

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    request_time: float
    response_time: float
    date: float
    age: int
    lifetime: float
    revalidate: bool = False
    strict: bool = False
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    etag: bytes | None = None
    last_modified: bytes | None = None
    vary: tuple[bytes, ...] = ()


def storable(status: int, reason: bytes, request_headers, response_headers, *, request_time: float,
             response_time: float, default_ttl: float = 0.0) -> Stored | str:
    """The Stored facts of an upstream's answer to a GET, or why it may not be stored (RFC 9111 3)."""
    if status not in UNDERSTOOD:
        return f"status {status} is not stored"
    cc = directives(response_headers)
    if b"no-store" in cc:
        return "Cache-Control: no-store"
    if b"private" in cc:
        return "Cache-Control: private (a shared cache must not store it)"
    if _field(response_headers, b"set-cookie") is not None:
        return "Set-Cookie (one user's cookie must not reach another)"
    if _field(request_headers, b"authorization") is not None and not (
            b"public" in cc or b"must-revalidate" in cc or b"s-maxage" in cc):
        return "an answer to an authorized request, without public, must-revalidate or s-maxage (RFC 9111 3.5)"
    names = vary_names(response_headers)
    if names is None:
        return "Vary: * (no later request can be known to match)"
    date_value = _date(response_headers, response_time)
    lifetime = _lifetime(cc, response_headers, date_value, status, default_ttl)
    etag = _field(response_headers, b"etag")
    last_modified = _field(response_headers, b"last-modified")
    no_cache = b"no-cache" in cc
    if lifetime is None:
        if not (no_cache and (etag or last_modified)):
            return "no freshness information (Cache-Control max-age or s-maxage, or Expires; or default_ttl)"
        lifetime = 0.0
    if lifetime <= 0 and not (etag or last_modified):
        return "stale on arrival, with no validator to revalidate it with"
    age = delta_seconds(_field(response_headers, b"age")) or 0
    return Stored(
        status=status, reason=reason,
        headers=tuple((n, v) for n, v in response_headers if n not in NOT_STORED),
        request_time=request_time, response_time=response_time, date=date_value, age=age,
        lifetime=float(lifetime), revalidate=no_cache,
        strict=no_cache or b"must-revalidate" in cc or b"proxy-revalidate" in cc or b"s-maxage" in cc,
        stale_while_revalidate=float(delta_seconds(cc.get(b"stale-while-revalidate")) or 0),
        stale_if_error=float(delta_seconds(cc.get(b"stale-if-error")) or 0),
        etag=etag, last_modified=last_modified, vary=names)


def _date(headers, received: float) -> float:
    """The Date value, or the time it was received when there is none (RFC 9110 section 6.6.1)."""
    value = _field(headers, b"date")
    parsed = parse_http_date(value) if value is not None else None
    return float(parsed) if parsed is not None else received


def _lifetime(cc: dict, headers, date_value: float, status: int, default_ttl: float) -> float | None:
    """RFC 9111 section 4.2.1, in its order: s-maxage (a shared cache), max-age, Expires - Date;
    then default_ttl for the statuses it applies to. None: no freshness information at all."""
    for name in (b"s-maxage", b"max-age"):
        if name in cc:
            return float(delta_seconds(cc[name]) or 0)  # malformed: stale (4.2.1)
    expires = _field(headers, b"expires")
    if expires is not None:
        when = parse_http_date(expires)
        return max(0.0, when - date_value) if when is not None else 0.0  # an invalid date is in the past
    if default_ttl and status in DEFAULT_TTL_STATUSES:
        return default_ttl
    return None


# --- freshness and age -------------------------------------------------------------------------

def current_age(stored: Stored, now: float) -> float:
    """RFC 9111 section 4.2.3."""
    return now - born(stored)


def born(stored: Stored) -> float:
    """The instant its age counts from: ``current_age(stored, now) == now - born(stored)``. The corrected
    initial age (RFC 9111 4.2.3: the Age it came with, or how late it arrived after its Date, plus the
    time the request took) is folded in once, so a hit computes no more than a subtraction."""
    apparent_age = max(0.0, stored.response_time - stored.date)
    response_delay = stored.response_time - stored.request_time
    corrected_initial_age = max(apparent_age, stored.age + response_delay)
    return stored.response_time - corrected_initial_age


def fresh_until(stored: Stored) -> float:
    """The instant it becomes stale; never fresh with no-cache (it is validated before every use)."""
    return float("-inf") if stored.revalidate else born(stored) + stored.lifetime


FRESH, STALE_WHILE_REVALIDATE, MUST_VALIDATE = "fresh", "stale-while-revalidate", "must-validate"


def freshness(stored: Stored, now: float, *, revalidate: bool = False, use_stale: frozenset = frozenset()) -> str:
    """FRESH: serve it. STALE_WHILE_REVALIDATE: serve it and refresh it in the background (RFC 5861
    section 3, or nginx's use_stale updating). MUST_VALIDATE: ask the upstream first.
    ``revalidate``: the client asked for a validated answer (CacheUse.revalidate)."""
    age = current_age(stored, now)
    if revalidate or stored.revalidate:
        return MUST_VALIDATE
    if age < stored.lifetime:
        return FRESH
    if not stored.strict and ("updating" in use_stale or age < stored.lifetime + stored.stale_while_revalidate):
        return STALE_WHILE_REVALIDATE
    return MUST_VALIDATE


def stale_on_error(stored: Stored, now: float, condition: str, use_stale: frozenset) -> bool:
    """May ``stored`` answer instead of an upstream failure (``condition``: "error", "timeout",
    "http_500"...)? ``use_stale`` names the conditions that always may (nginx); ``stale-if-error``
    (RFC 5861 section 4) allows any of them for that long past the lifetime. Never when strict."""
    if stored.strict:
        return False
    return condition in use_stale or current_age(stored, now) < stored.lifetime + stored.stale_if_error


def age_value(born_at: float, now: float) -> bytes:
    """The Age header's value for a response ``born`` at ``born_at``: whole seconds (RFC 9111 section 5.1)."""
    return b"%d" % min(int(now - born_at), MAX_DELTA)


# --- variants ----------------------------------------------------------------------------------

def vary_names(headers) -> tuple[bytes, ...] | None:
    """The request fields a response varies on, lower-case and sorted; None for ``Vary: *``."""
    names: set[bytes] = set()
    for field, value in headers:
        if field == b"vary":
            for name in value.split(b","):
                name = name.strip().lower()
                if name == b"*":
                    return None
                if name:
                    names.add(name)
    return tuple(sorted(names))


_OWS_COMMA = re.compile(rb"[ \t]*,[ \t]*")


def variant(names: tuple[bytes, ...], request_headers) -> bytes:
    """The values of the ``names`` fields in a request, normalised (RFC 9111 section 4.1: field lines
    combined, whitespace around commas removed); an absent field differs from an empty one."""
    out = []
    for name in names:
        values = [value for field, value in request_headers if field == name]
        out.append(b"\x01" if not values else _OWS_COMMA.sub(b",", b",".join(values).strip(b" \t")))
    return b"\x00".join(out)


# --- validation --------------------------------------------------------------------------------

def validators(stored: Stored) -> list[tuple[bytes, bytes]]:
    """The conditional fields that revalidate ``stored`` (RFC 9111 section 4.3.1)."""
    out = []
    if stored.etag is not None:
        out.append((b"if-none-match", stored.etag))
    if stored.last_modified is not None:
        out.append((b"if-modified-since", stored.last_modified))
    return out


def refreshed(stored: Stored, response_headers, *, request_time: float, response_time: float,
              default_ttl: float = 0.0) -> Stored | str:
    """``stored`` updated by a 304 (RFC 9111 section 4.3.4): the 304's fields replace the stored ones of
    the same name (framing excepted) and the freshness starts again; or why it may no longer be stored."""
    etag = _field(response_headers, b"etag")
    if etag is not None and stored.etag is not None and not _weak_equal(etag, stored.etag):
        return "the 304 is for another representation (its ETag differs)"
    updated = {name for name, _ in response_headers if name not in NOT_UPDATED}
    headers = [(n, v) for n, v in stored.headers if n not in updated]
    headers += [(n, v) for n, v in response_headers if n in updated and n != b"age"]
    age = _field(response_headers, b"age")
    with_age = headers + [(b"age", age)] if age is not None else headers
    return storable(stored.status, stored.reason, (), with_age, request_time=request_time,
                    response_time=response_time, default_ttl=default_ttl)


def _weak_equal(a: bytes, b: bytes) -> bool:
    return a.removeprefix(b"W/") == b.removeprefix(b"W/")


def not_modified(stored: Stored, request_headers) -> bool:
    """Does the client's own conditional GET or HEAD make a 304 of ``stored`` (RFC 9110 13.1.2, 13.1.3;
    If-Modified-Since counts only without If-None-Match)? Only a stored 200 has a representation to compare."""
    if stored.status != 200:
        return False
    if_none_match = _field(request_headers, b"if-none-match")
    if if_none_match is not None:
        tags = [t.strip() for t in if_none_match.split(b",")]
        return b"*" in tags or (stored.etag is not None and any(_weak_equal(t, stored.etag) for t in tags if t))
    since = _field(request_headers, b"if-modified-since")
    if since is None or stored.last_modified is None:
        return False
    since_time = parse_http_date(since)
    modified = parse_http_date(stored.last_modified)
    return since_time is not None and modified is not None and modified <= since_time


def not_modified_headers(stored: Stored) -> list[tuple[bytes, bytes]]:
    """The stored fields a 304 carries (RFC 9110 section 15.4.5)."""
    return [(n, v) for n, v in stored.headers if n in NOT_MODIFIED_FIELDS]


# --- invalidation ------------------------------------------------------------------------------

def invalidates(method: bytes, status: int) -> bool:
    """RFC 9111 section 4.4: a non-error answer to an unsafe method invalidates."""
    return method not in SAFE and 200 <= status < 400


def invalidated_uris(uri: bytes, scheme: bytes, host: bytes, response_headers) -> list[bytes]:
    """The target URI, and those Location and Content-Location name on the same origin (RFC 9111 4.4)."""
    out = [uri]
    origin = scheme + b"://" + host
    for name in (b"location", b"content-location"):
        value = _field(response_headers, name)
        if value is None:
            continue
        if value.startswith(b"/") and not value.startswith(b"//"):
            value = origin + value
        if value.startswith(origin + b"/") and value not in out:
            out.append(value)
    return out
