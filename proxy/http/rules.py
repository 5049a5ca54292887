"""The proxy's strictness above the HTTP/1.1 parsers, applied the same way to both engines.

Strategy: an engine (codec.py) turns the bytes of one message head into its
parts: the request line or status line, and the header fields as
``(lower-case name, value without OWS)`` pairs in wire order, duplicates
kept. What each engine refuses by itself becomes a ClientError (400) or an
UpstreamError (502); everything else is decided here, from those parts, in
one fixed order, so that the answer never depends on which engine parsed:

1. limits (codec.py, from the bytes received: 414, 431, 502 for a response
   head over 64 KiB), before any parsing;
2. the request line: version (505), method (400 malformed, 501 unknown,
   405 TRACE and CONNECT). When an engine refuses a head, ``refused_line``
   applies the same checks to the raw line, so that the status is the same
   as if it had parsed;
3. syntax (400 / 502): what either engine refuses while parsing.
   ``check_lax_syntax`` refuses for the engine that does not (h11) what
   llhttp refuses by itself, so neither engine's leniency survives;
4. meaning (``check_request``, ``check_response``), for both engines.

What each engine refuses by itself, and how this module makes them equal
(llhttp as bundled with httptools 0.9: strict by default, and httptools sets
no lenient flag; codec.py sets two, named below):

| input                                         | llhttp    | h11       | here, for both                    |
|-----------------------------------------------|-----------|-----------|-----------------------------------|
| bare LF as a line end, bare CR in a head      | refuses   | accepts   | 400/502 (lax syntax, RFC 9112 2.2)|
| obs-fold (a line starting with SP or HTAB)    | refuses   | unfolds   | 400/502 (lax syntax, 9112 5.2)    |
| control bytes 0x01-0x1f, 0x7f in a value      | refuses   | accepts   | 400/502 (lax syntax, 9110 5.5)    |
| control bytes in a reason phrase              | accepts   | accepts   | 502 (check_response)              |
| two Content-Length fields, even identical     | refuses   | merges    | 400/502 (lax syntax; 9110 8.6 MAY)|
| Content-Length "5, 5"                         | refuses   | merges    | 400/502 (lax syntax)              |
| Content-Length >= 2**64, or over 20 digits   | >= 2**64  | > 20 dig. | 400/502 (content_length)          |
| Content-Length with Transfer-Encoding         | refuses   | accepts   | 400/502 (lax syntax, 9112 6.1)    |
| Transfer-Encoding not ending in one "chunked" | refuses   | refuses*  | 400 (transfer_coding_status)      |
| Transfer-Encoding "gzip, chunked", ",chunked" | accepts   | refuses*  | 501/502 (nginx: only "chunked")   |
| an empty Transfer-Encoding field              | refuses   | refuses*  | 400 (transfer_coding_status)      |
| a method llhttp does not know (FOO, PRI)      | refuses   | accepts   | 501 (refused_line; 9110 9.1)      |
| lower-case or odd method (get, G=T)           | refuses   | token ok  | 400 (refused_line)                |
| HTTP/1.2, HTTP/3.0 (any one-digit version)    | lenient** | accepts   | 1.x as 1.1, else 505 (9110 2.5)   |
| "GET /" (HTTP/0.9, no version)                | accepts   | refuses   | 400 (check_request_line)          |
| two spaces between method and target          | accepts   | refuses   | 400 (check_request_line)          |
| target bytes >= 0x80 or control bytes         | refuses   | refuses   | 400 (both, nothing to add)        |
| a target that is no URL ("example.com:80")    | refuses   | accepts   | 400 (split_target, before 4xx/5xx)|
| Host missing (HTTP/1.1) or given twice        | accepts   | refuses   | 400 (check_request, early)        |
| Connection: close, HTTP/1.0 keep-alive        | closes*** | closes    | keep_alive computed here          |
| a 101 without Upgrade or Connection: upgrade  | refuses   | accepts   | 502 (check_response; 9110 15.2.2) |
| whitespace in a chunk line (RFC 9112 BWS)     | (no body) | some      | 400/502 (chunk_size)              |

``*`` h11 refuses every Transfer-Encoding but one "chunked" (hint 501) at
the field, before reading the rest; the h11 engine then parses the head
again with those fields renamed to learn what else is wrong, and the
statuses come from ``transfer_coding_status``.
``**`` ``lenient_version``: llhttp alone accepts only 0.9, 1.0, 1.1 and 2.0
and would refuse HTTP/1.2, which RFC 9110 2.5 says to process as 1.1.
``***`` ``lenient_keep_alive``: llhttp would refuse any byte after a
Connection: close message; whether a connection is kept is decided here.

Bodies never reach llhttp: codec.py frames them (Content-Length, or chunked
through ``ChunkedBody``, whose lines are checked with ``chunk_size`` and
``check_trailer_line`` below); h11 decodes them again in the h11 engine, as
the reference. h11 accepts any chunk extension, a bare CR inside one and
more than 16 hex digits, and waits forever for a CRLF after a bare LF: each
is a 400 here, at once.
"""

from __future__ import annotations

import re

from ..config import Limits
from ..errors import ClientError, UpstreamError
from .codec import RequestHead, ResponseHead
from .headers import FRAMING, connection_tokens
from .routing import normalize_path

# --- the request line --------------------------------------------------------------

# Methods an edge proxy answers itself rather than forwards: TRACE reflects
# the request (cookies included) back to a script; CONNECT asks for a tunnel.
REFUSED_METHODS = frozenset({b"TRACE", b"CONNECT"})
ALLOW_FORWARDED = ((b"allow", b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),)

# nginx's method alphabet. RFC 9110 section 9.1 makes methods case-sensitive tokens;
# a lower-case or digit-bearing one is nobody's method, and Gunicorn refuses it too.
_METHOD_RE = re.compile(rb"[A-Z_-]+")

# The methods llhttp knows (its METHODS_HTTP1 table, without the RTSP and HTTP/2
# ones). llhttp refuses any other at the first byte; the h11 engine must too.
# tests/unit/test_codec.py checks this list against the installed llhttp.
KNOWN_METHODS = frozenset({
    b"DELETE", b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH", b"LINK", b"UNLINK",
    b"COPY", b"LOCK", b"MKCOL", b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH", b"UNLOCK", b"BIND", b"REBIND",
    b"UNBIND", b"ACL", b"REPORT", b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE",
    b"UNSUBSCRIBE", b"MKCALENDAR", b"PURGE", b"QUERY", b"SOURCE",
})

_VERSION_RE = re.compile(rb"HTTP/([0-9])\.([0-9])")


def check_request_line(method: bytes, version: bytes) -> None:
    """The request line's refusals, in order; ``version`` as b"1.1"."""
    # RFC 9110 section 2.5: a higher minor version (HTTP/1.2) is processed as the highest
    # one implemented, 1.1; only another major version is unsupported.
    if version[:2] != b"1.":
        raise ClientError("unsupported HTTP version", 505)
    if method not in KNOWN_METHODS:
        if not _METHOD_RE.fullmatch(method):
            raise ClientError("invalid method")
        # RFC 9110 section 9.1: an unrecognised method SHOULD get 501.
        raise ClientError(f"method {method.decode()} not implemented", 501)
    if method in REFUSED_METHODS:
        raise ClientError(f"method {method.decode()} not allowed", 405, ALLOW_FORWARDED)


def refused_line(line: bytes, reason: str) -> ClientError:
    """The error for a head an engine refused: the request line's own status when it
    has one (as if the engine had parsed it), else 400 with the engine's reason.

    Only a line of the request line's shape (method, target, version, with spaces
    between) has a status of its own: "GARBAGE" is no request line at all."""
    parts = line.split(b" ")
    if len(parts) >= 3:
        version = _VERSION_RE.fullmatch(parts[-1])
        try:
            check_request_line(parts[0], version[1] + b"." + version[2] if version else b"1.1")
        except ClientError as exc:
            return exc
    return ClientError(f"malformed request: {reason}")


# --- limits ------------------------------------------------------------------------


def check_incomplete_head(buf: bytes | bytearray, limits: Limits) -> None:
    """A request head still without its empty line: 414/431 as soon as it is certain."""
    if len(buf) > limits.max_request_line and buf.find(b"\n", 0, limits.max_request_line + 1) < 0:
        raise ClientError("request line too long", 414)
    if len(buf) > limits.max_header_bytes:
        raise ClientError("request head too large", 431)


def check_head_size(size: int, line_end: int, limits: Limits) -> None:
    """A complete request head of ``size`` bytes whose first LF is at ``line_end``."""
    if line_end > limits.max_request_line:
        raise ClientError("request line too long", 414)
    if size > limits.max_header_bytes:
        raise ClientError("request head too large", 431)


# --- syntax llhttp refuses by itself -----------------------------------------------

# Field values: HTAB, SP, VCHAR and obs-text (RFC 9110 section 5.5); llhttp's HEADER_CHARS.
_CTL_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS_RE = re.compile(rb"[0-9]+")


def check_lax_syntax(raw_head: bytes, fields: list[tuple[bytes, bytes]], error: type) -> None:
    """What llhttp refuses while parsing a head and h11 accepts: raised as ``error`` (400/502).

    ``raw_head`` ends with the empty line. RFC 9112 section 2.2 lets a recipient
    accept a bare LF, and 5.2 lets it unfold obs-fold; neither is taken:
    "X: a\\nInjected: b" from a client or an app that echoes input into a header
    must not become a second field for the next parser.
    """
    if raw_head.count(b"\n") != raw_head.count(b"\r\n") or raw_head.count(b"\r") != raw_head.count(b"\r\n"):
        raise error("bare LF or CR in the head")
    if b"\n " in raw_head or b"\n\t" in raw_head:
        raise error("obsolete line folding in the head")
    check_fields(fields, error)


def check_fields(fields: list[tuple[bytes, bytes]], error: type) -> None:
    """What llhttp refuses in the fields of a head, as ``error``: control bytes in a value, a Content-Length
    that is not digits or comes twice, Content-Length with Transfer-Encoding. An HTTP/2 request's fields
    (http/http2.py) go through the same checks, since they are forwarded as HTTP/1.1."""
    lengths = 0
    codings = []
    for name, value in fields:
        if _CTL_RE.search(value):
            raise error("control character in a header value")
        if name == b"content-length":
            lengths += 1
            if not _DIGITS_RE.fullmatch(value):
                raise error("invalid Content-Length")
        elif name == b"transfer-encoding":
            codings.append(value)
    # RFC 9110 section 8.6 lets a recipient merge identical lengths or refuse them;
    # llhttp refuses, and so a second length is refused whatever its value.
    if lengths > 1:
        raise error("more than one Content-Length")
    if codings and lengths:
        raise error("both Content-Length and Transfer-Encoding")  # RFC 9112 section 6.1
    if codings and error is ClientError and transfer_coding_status(codings) == 400:
        raise error("Transfer-Encoding whose final coding is not one chunked")


def transfer_coding_status(values: list[bytes]) -> int:
    """The status for a request's Transfer-Encoding other than one plain "chunked".

    RFC 9112 section 6.3 rule 4: when chunked is not the final coding of a request its
    length cannot be determined -> MUST 400 and close; section 6.1: chunked applied twice
    is invalid too -> 400. What remains ("gzip, chunked", an empty list element) is a
    coding the proxy does not implement -> 501, as section 6.1 advises (nginx too).
    An empty element after the final chunked ("chunked,") is refused as llhttp does:
    something follows chunked.
    """
    if not all(value.strip(b" \t") for value in values):
        return 400  # an empty field: llhttp refuses it while parsing
    codings = [c.strip(b" \t").lower() for value in values for c in value.split(b",")]
    while codings and not codings[0]:
        codings.pop(0)
    if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        return 400
    return 501


# --- requests ----------------------------------------------------------------------

# RFC 3986 host: reg-name, IPv4, or an IP literal in brackets; optional port.
_HOST_RE = re.compile(
    rb"^(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*(?::[0-9]{0,5})?$"
    rb"|^\[[0-9A-Fa-f:.]+\](?::[0-9]{0,5})?$"
)


class _Memo(dict):
    """Answers for the values clients repeat (their Host, their Connection), at most 1024 kept."""

    def __init__(self, compute) -> None:
        super().__init__()
        self.compute = compute

    def __missing__(self, key):
        if len(self) >= 1024:
            self.clear()
        value = self[key] = self.compute(key)
        return value


# An empty label ("a..b") is not a host name (RFC 1034 section 3.5); nginx refuses it
# too, so an app that maps hosts to folders or tenants never sees one.
_valid_host = _Memo(lambda value: bool(_HOST_RE.match(value)) and b".." not in value).__getitem__


def split_target(target: bytes, host: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Request target -> (origin-form target, path, query, effective host).

    RFC 9112 section 3.2: origin-form ``/p?q``; absolute-form ``http://h/p``
    (its authority replaces Host, section 3.2.2); asterisk-form ``*`` for
    OPTIONS only; authority-form is CONNECT's, which is refused earlier.
    """
    if b"#" in target:
        raise ClientError("fragment in request target")
    if target[:1] == b"/":
        origin = target
    elif target == b"*":
        return target, b"*", b"", host
    else:
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise ClientError("request target is not origin-form or an http(s) URL")
        authority, slash, tail = rest.partition(b"/")
        origin = b"/" + tail if slash else b"/"
        if not slash and b"?" in authority:  # "http://h?q": an empty path and a query (RFC 3986 3.3)
            authority, _, query = authority.partition(b"?")
            origin = b"/?" + query
        if not authority or b"@" in authority or not _valid_host(authority):
            raise ClientError("bad authority in absolute-form target")
        host = authority
    path, _, query = origin.partition(b"?")
    return origin, path, query, host


# The fields check_request looks at (one set lookup for all the others).
_SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"expect", b"connection"})
_NONE: frozenset[bytes] = frozenset()
_NAMED = _Memo(lambda value: frozenset(connection_tokens([(b"connection", value)])))


def connection_named(values: list[bytes]) -> frozenset[bytes]:
    """The lower-case tokens of the Connection field values (headers.connection_tokens)."""
    if len(values) == 1:
        return _NAMED[values[0]]  # "keep-alive", "close", "Upgrade": the same few values
    return frozenset(connection_tokens([(b"connection", value) for value in values]))


def content_length(value: bytes, error: type) -> int:
    """A Content-Length value both engines accept: llhttp refuses 2**64 and over, h11 over 20 digits."""
    if len(value) > 20 or not value.isdigit():
        raise error("invalid Content-Length")
    length = int(value)
    if length >= 2**64:
        raise error("invalid Content-Length")
    return length


def check_request(method: bytes, target: bytes, version: bytes, fields: list[tuple[bytes, bytes]],
                  limits: Limits) -> RequestHead:
    """Everything the engines leave to the proxy; returns the head the proxy works from.

    ``fields`` are (lower-case name, value) in wire order, as both engines report them.
    The 400s come first, then the other statuses in a fixed order.
    """
    hosts = 0
    host = b""
    length = None
    chunked: list[bytes] = []
    expect = None
    connection = []
    underscored = False
    for name, value in fields:
        if name in _SPECIAL:
            if name == b"host":
                hosts += 1
                host = value
            elif name == b"content-length":
                length = content_length(value, ClientError)
            elif name == b"transfer-encoding":
                chunked.append(value)
            elif name == b"expect":
                expect = value
            else:
                connection.append(value)
        if b"_" in name:
            underscored = True
    # Gunicorn maps _ and - to the same variable: a name with _ is a spoofing vector, dropped.
    headers = [field for field in fields if b"_" not in field[0]] if underscored else fields
    # RFC 9112 section 3.2 (h11 refuses these while parsing, so they come before the rest).
    if hosts > 1:
        raise ClientError("more than one Host")
    if hosts == 0 and version != b"1.0":
        raise ClientError("missing Host")
    # The target next: llhttp refuses many malformed ones while parsing.
    origin, raw_path, query, effective_host = split_target(target, host)
    if origin == b"*" and method != b"OPTIONS":
        raise ClientError("asterisk-form target is for OPTIONS only")
    path = "*" if origin == b"*" else normalize_path(raw_path)
    if len(fields) > limits.max_headers:
        raise ClientError("too many header fields", 431)
    if chunked:
        if length is not None:
            raise ClientError("both Content-Length and Transfer-Encoding")
        if len(chunked) > 1 or chunked[0].strip(b" \t").lower() != b"chunked":
            raise ClientError("unsupported Transfer-Encoding", transfer_coding_status(chunked))
        if version == b"1.0":
            raise ClientError("Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 section 6.1: faulty framing
    if length is not None and length > limits.max_body_bytes:
        raise ClientError("request body too large", 413)
    if expect is not None and expect.lower() != b"100-continue":
        raise ClientError("unsupported expectation", 417)
    named = connection_named(connection) if connection else _NONE
    if named & FRAMING:
        raise ClientError("Connection names a framing header")
    if host and not _valid_host(host):
        raise ClientError("invalid Host header")
    host = effective_host

    keep_alive = b"close" not in named and (version != b"1.0" or b"keep-alive" in named)
    upgrade = None
    if b"upgrade" in named and version != b"1.0":
        # RFC 9110 section 7.8: a request asks to switch when Connection names upgrade;
        # HTTP/1.0 upgrades are ignored. Which protocols may switch is upgrade.py's to decide.
        upgrade = b", ".join(v for n, v in headers if n == b"upgrade") or None
    return RequestHead(
        method=method,
        target=origin,
        path=path,
        query=query,
        host=host,
        http_version=version,
        headers=headers,
        has_body=bool(chunked) or length is not None,
        content_length=length,
        expect_continue=expect is not None,
        keep_alive=keep_alive,
        upgrade=upgrade,
        named=named,
    )


# --- responses ---------------------------------------------------------------------

# A reason phrase is HTAB, SP, VCHAR and obs-text (RFC 9112 section 4); both engines
# let other control bytes through, and the phrase may be passed on to the client.
_REASON_RE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def check_response(status: int, reason: bytes, version: bytes, fields: list[tuple[bytes, bytes]],
                   method: bytes, upgrade: bool) -> ResponseHead:
    """An upstream's response head as the proxy works from it, or UpstreamError (502).

    An upstream is trusted to be an HTTP server, not to be correct: whatever a second
    parser could read differently is a 502 and the connection is discarded, as nginx does.
    """
    # RFC 9110 section 15: codes outside 100..599 are invalid and a client SHOULD treat
    # them as 5xx; h11 lets 600..999 through, llhttp 000..999.
    if not 100 <= status <= 599:
        raise UpstreamError(f"invalid response: status {status}")
    if version[:2] != b"1.":
        raise UpstreamError("invalid response: not HTTP/1.x")
    if not _REASON_RE.fullmatch(reason):
        raise UpstreamError("invalid response: control character in the reason phrase")
    if status == 101 and not upgrade:
        raise UpstreamError("invalid response: 101 to a request that did not ask to switch")
    length = None
    codings = []
    headers = []
    for name, value in fields:
        if name == b"content-length":
            if length is not None:
                raise UpstreamError("invalid response: more than one Content-Length")
            length = content_length(value, UpstreamError)
            if status == 204:
                # RFC 9110 section 8.6: a server MUST NOT send Content-Length in a 204, so the
                # client must not receive it; the 204 has no content whatever it says.
                continue
        elif name == b"transfer-encoding":
            codings.append(value)
        headers.append((name, value))
    if codings and length is not None:
        raise UpstreamError("invalid response: both Content-Length and Transfer-Encoding")
    if status < 200 and (codings or length is not None):
        # RFC 9110 section 8.6 and RFC 9112 section 6.1: a 1xx carries neither field and
        # ends with its head; a server that sends them means something else.
        raise UpstreamError("invalid response: framing fields in a 1xx response")
    if codings and (len(codings) > 1 or codings[0].strip(b" \t").lower() != b"chunked"):
        # RFC 9112 6.3 would read such a body until the close; h11 and nginx refuse it.
        raise UpstreamError("invalid response: Transfer-Encoding other than chunked")
    if status == 204:
        length = None
    named = connection_named([value for name, value in fields if name == b"connection"])
    if status == 101 and (b"upgrade" not in named or not any(name == b"upgrade" for name, _ in fields)):
        # RFC 9110 section 15.2.2: a 101 MUST say which protocol follows, in Upgrade, and
        # Upgrade is hop-by-hop, so Connection names it (7.6.1); llhttp refuses it otherwise.
        raise UpstreamError("invalid response: 101 without Connection: upgrade and Upgrade")
    keep_alive = b"close" not in named and (version != b"1.0" or b"keep-alive" in named)
    # HEAD, 1xx, 204 and 304 end with their head (RFC 9112 section 6.3 rule 1). A 304 may
    # carry the Content-Length of the representation (RFC 9110 sections 8.6 and 15.4.5:
    # a server MAY send it, equal to what a 200 would have carried); it is kept for the
    # client, but it frames nothing, so ``chunked`` is False and no body is read.
    bodiless = method == b"HEAD" or status < 200 or status in (204, 304)
    return ResponseHead(
        status=status,
        reason=reason,
        http_version=version,
        headers=headers,
        content_length=length,
        chunked=bool(codings) and not bodiless,
        keep_alive=keep_alive,
        named=named,
    )


def response_has_body(head: ResponseHead, method: bytes) -> bool:
    """RFC 9112 section 6.3 rule 1: responses to HEAD, 1xx, 204 and 304 end with their head."""
    return not (method == b"HEAD" or head.status < 200 or head.status in (204, 304))


# --- chunked bodies ----------------------------------------------------------------

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
# RFC 9112 section 7.1: chunk-size [ chunk-ext ] CRLF, chunk-ext = *( BWS ";" BWS name
# [ BWS "=" BWS ( token / quoted-string ) ] ). The extension is dropped (7.1.1), but the
# line must be exactly this, or a parser that ends it elsewhere (at a bare CR or LF, as
# HTTP Garden's findings show) would read a different body. Without the BWS: llhttp
# refuses whitespace anywhere in the line and h11 before a ";", and no client sends it.
_CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]+)(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*\r\n")
_FIELD_LINE_RE = re.compile(rb"(" + _TOKEN + rb"):[\t\x20-\x7e\x80-\xff]*\r\n")
# Fields that must not travel in a trailer (RFC 9110 section 6.5.1: framing, routing and
# connection fields are evaluated before the content). A body is re-framed, so a trailer
# naming them is either a mistake or a smuggling attempt.
_TRAILER_REFUSED = FRAMING | {b"connection", b"trailer"}


def chunk_size(line: bytes, error: type) -> tuple[int, int]:
    """(the size a chunk-size line announces, its number of hex digits); ``line`` ends with
    its CRLF. ``error`` for a line that is not exactly the grammar."""
    match = _CHUNK_LINE_RE.fullmatch(line)
    if match is None:
        raise error("malformed chunk size line")
    return int(match[1], 16), len(match[1])


def check_trailer_line(line: bytes, error: type) -> None:
    """One trailer field line (CRLF included): field syntax, and no framing field."""
    match = _FIELD_LINE_RE.fullmatch(line)
    if match is None:
        raise error("malformed trailer field")
    if match[1].lower() in _TRAILER_REFUSED:
        raise error("trailer carries a framing field")
