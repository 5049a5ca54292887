"""The client side of a connection, sans-IO: bytes in, checked requests out.

Strategy: h11 parses, and this module adds what h11 leaves to its user. From
h11's own docs and source: it does not enforce its size limit when a whole
head arrives in one read, does not count headers, accepts a request that has
both Content-Length and Transfer-Encoding (Transfer-Encoding wins), accepts
bare LF line endings, unfolds obs-fold lines, and lets control bytes other
than NUL, CR and LF through in header values. Each of those is a request
smuggling or header-injection vector once a second parser (the app server's)
reads the same bytes, so each is refused here with the status RFC 9112
gives, before anything is forwarded.

The raw bytes of the current head are kept until h11 produces the Request
event, so checks that need the wire form (bare LF, obs-fold, the request
line's length) can see it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import h11

from ..config import Limits
from ..errors import ClientError
from .headers import FRAMING, connection_tokens
from .routing import normalize_path

# Methods an edge proxy answers itself rather than forwards: TRACE reflects
# the request (cookies included) back to a script; CONNECT asks for a tunnel.
REFUSED_METHODS = frozenset({b"TRACE", b"CONNECT"})
_ALLOW_FORWARDED = ((b"allow", b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),)

# nginx's method alphabet. RFC 9110 section 9.1 makes methods case-sensitive tokens;
# a lower-case or digit-bearing one is nobody's method, and Gunicorn refuses it too.
_METHOD_RE = re.compile(rb"[A-Z_-]+")

# Control bytes h11's field-value regex lets through ([^\x00\s] admits them).
_CTL_RE = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")

# RFC 3986 host: reg-name, IPv4, or an IP literal in brackets; optional port.
_HOST_RE = re.compile(
    rb"^(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*(?::[0-9]{0,5})?$"
    rb"|^\[[0-9A-Fa-f:.]+\](?::[0-9]{0,5})?$"
)


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request head that passed every check; what the rest of the proxy works from."""

    method: bytes
    target: bytes  # origin-form, as forwarded upstream
    path: str  # decoded and normalised, for routing and static files
    query: bytes
    host: bytes  # the effective host: Host, or the authority of an absolute-form target
    http_version: bytes
    headers: list[tuple[bytes, bytes]]  # lower-case names, underscored names removed
    has_body: bool  # Content-Length or Transfer-Encoding present
    content_length: int | None
    expect_continue: bool
    keep_alive: bool

    def get(self, name: bytes) -> bytes | None:
        """The first value of a header, or None."""
        for n, v in self.headers:
            if n == name:
                return v
        return None

    @property
    def request_line(self) -> str:
        return f"{self.method.decode()} {self.target.decode('ascii', 'replace')} HTTP/{self.http_version.decode()}"


def _valid_host(value: bytes) -> bool:
    # An empty label ("a..b") is not a host name (RFC 1034 section 3.5); nginx refuses it
    # too, so an app that maps hosts to folders or tenants never sees one.
    return bool(_HOST_RE.match(value)) and b".." not in value


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


def check_head(event: h11.Request, raw_head: bytes, limits: Limits) -> RequestHead:
    """Everything h11 accepted but we do not; returns the head the proxy works from."""
    # RFC 9110 section 2.5: a higher minor version (HTTP/1.2) is processed as the highest
    # one implemented, 1.1; only another major version is unsupported.
    if event.http_version[:2] != b"1.":
        raise ClientError("unsupported HTTP version", 505)
    if not _METHOD_RE.fullmatch(event.method):
        raise ClientError("invalid method")
    line_end = raw_head.find(b"\n")
    if line_end > limits.max_request_line:
        raise ClientError("request line too long", 414)
    if len(raw_head) > limits.max_header_bytes:
        raise ClientError("request head too large", 431)
    if len(event.headers) > limits.max_headers:
        raise ClientError("too many header fields", 431)
    if raw_head.count(b"\n") != raw_head.count(b"\r\n"):
        raise ClientError("bare LF in request head")
    if b"\n " in raw_head or b"\n\t" in raw_head:
        raise ClientError("obsolete line folding in request head")
    if event.method in REFUSED_METHODS:
        raise ClientError(f"method {event.method.decode()} not allowed", 405, _ALLOW_FORWARDED)

    headers: list[tuple[bytes, bytes]] = []
    host = b""
    content_length = None
    chunked = False
    expect_continue = False
    for name, value in event.headers:
        if _CTL_RE.search(value):
            raise ClientError("control character in header value")
        if b"_" in name:
            continue  # Gunicorn maps _ and - to the same variable: a spoofing vector.
        if name == b"host":
            host = value
        elif name == b"content-length":
            content_length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise ClientError("unsupported expectation", 417)
            expect_continue = True
        headers.append((name, value))

    if chunked and content_length is not None:
        raise ClientError("both Content-Length and Transfer-Encoding")
    if chunked and event.http_version == b"1.0":
        # RFC 9112 section 6.1: the framing of such a message is faulty.
        raise ClientError("Transfer-Encoding in an HTTP/1.0 request")
    if content_length is not None and content_length > limits.max_body_bytes:
        raise ClientError("request body too large", 413)
    named = connection_tokens(headers)
    if named & FRAMING:
        raise ClientError("Connection names a framing header")
    if event.http_version > b"1.1" and not any(name == b"host" for name, _ in event.headers):
        raise ClientError("missing Host")  # RFC 9112 section 3.2; h11 checks this for 1.1 only
    if host and not _valid_host(host):
        raise ClientError("invalid Host header")

    target, raw_path, query, host = split_target(event.target, host)
    if target == b"*" and event.method != b"OPTIONS":
        raise ClientError("asterisk-form target is for OPTIONS only")
    path = "*" if target == b"*" else normalize_path(raw_path)
    keep_alive = b"close" not in named and (event.http_version >= b"1.1" or b"keep-alive" in named)
    return RequestHead(
        method=event.method,
        target=target,
        path=path,
        query=query,
        host=host,
        http_version=event.http_version,
        headers=headers,
        has_body=chunked or content_length is not None,
        content_length=content_length,
        expect_continue=expect_continue,
        keep_alive=keep_alive,
    )


def transfer_coding_status(raw_head: bytes) -> int:
    """The status for a Transfer-Encoding that h11 refused (it implements exactly "chunked").

    RFC 9112 section 6.3 rule 4: when chunked is not the final coding of a request its
    length cannot be determined -> MUST 400 and close; section 6.1: chunked applied twice
    is invalid too -> 400. What remains ("gzip, chunked", an empty list element) is a
    coding the proxy does not implement -> 501, as section 6.1 advises (nginx too).
    """
    head = raw_head.lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0]
    codings: list[bytes] = []
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.lower() == b"transfer-encoding":
            codings += [c.strip(b" \t").lower() for c in value.split(b",") if c.strip(b" \t")]
    if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        return 400
    return 501


class ClientConnection:
    """One client connection: wraps ``h11.Connection(h11.SERVER)`` with our checks.

    ``receive_data`` takes bytes (b"" at EOF); ``next_event`` returns a
    RequestHead, h11.Data, h11.EndOfMessage, h11.NEED_DATA, h11.PAUSED or
    h11.ConnectionClosed, or raises ClientError with the status to answer.
    ``send`` turns h11 events into bytes.
    """

    __slots__ = ("h11", "limits", "_head", "body_received", "requests")

    def __init__(self, limits: Limits) -> None:
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.limits = limits
        self._head = bytearray()  # raw bytes since the current request began
        self.body_received = 0
        self.requests = 0

    def __repr__(self) -> str:
        return f"<ClientConnection {self.h11.their_state}/{self.h11.our_state} requests={self.requests}>"

    @property
    def head_started(self) -> bool:
        """Some bytes of the next request head have arrived."""
        return bool(self._head.strip(b"\r\n"))

    def receive_data(self, data: bytes) -> None:
        if self.h11.their_state is h11.IDLE and data:
            if not self._head and not self.h11.trailing_data[0]:
                # RFC 9112 section 2.2: a server SHOULD ignore at least one empty line
                # before the request-line; h11 refuses one, so it never sees them (nginx
                # skips CR and LF there too). Lines left in h11's buffer after a previous
                # request cannot be taken back out of it, so this covers new heads only.
                data = data.lstrip(b"\r\n")
                if not data:
                    return  # b"" would tell h11 the client closed
            self._head += data
        self.h11.receive_data(data)

    def next_event(self):
        try:
            event = self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise self._protocol_error(exc) from None
        kind = type(event)
        if kind is h11.Data:
            self.body_received += len(event.data)
            self._check_body_size()
            return event
        if kind is h11.Request:
            unparsed = len(self.h11.trailing_data[0])
            raw = bytes(self._head[: len(self._head) - unparsed])
            self._head = bytearray()
            self.requests += 1
            self.body_received = 0
            return check_head(event, raw.lstrip(b"\r\n"), self.limits)
        if kind is h11.EndOfMessage:
            for name, _ in event.headers:
                if name in FRAMING or name in (b"connection", b"trailer"):
                    raise ClientError("trailer carries a framing header")
            return event
        if event is h11.NEED_DATA:
            if self.h11.their_state is h11.IDLE:
                self._check_incomplete_head()
            elif self.h11.their_state is h11.SEND_BODY:
                self._check_body_size()
        return event

    def _check_body_size(self) -> None:
        """413 once the body read so far, plus what the current chunk still announces, is over the limit.

        h11 reads a chunk's size line long before the chunk's data arrives; nginx answers
        413 as soon as a declared chunk would cross client_max_body_size, so a client cannot
        hold the connection until body_timeout with a chunk it never sends. h11 keeps that
        size in a private counter of its chunked reader (h11 0.14 to 0.16); were it
        renamed, getattr gives 0 and the limit still holds as the data arrives.
        """
        announced = getattr(getattr(self.h11, "_reader", None), "_bytes_in_chunk", 0)
        if self.body_received + announced > self.limits.max_body_bytes:
            raise ClientError("request body too large", 413)

    def _check_incomplete_head(self) -> None:
        head = self._head
        limit = self.limits.max_request_line
        if len(head) > limit and b"\n" not in head[: limit + 1]:
            raise ClientError("request line too long", 414)
        if len(head) > self.limits.max_header_bytes:
            raise ClientError("request head too large", 431)

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> ClientError:
        status = exc.error_status_hint
        if status == 431 and b"\n" not in self._head[: self.limits.max_request_line + 1]:
            status = 414
        elif status == 501:  # h11's hint for any Transfer-Encoding other than exactly "chunked"
            status = transfer_coding_status(bytes(self._head))
        return ClientError(f"malformed request: {exc}", status)

    def send(self, event) -> bytes:
        return self.h11.send(event) or b""

    def send_passthrough(self, event) -> list:
        return self.h11.send_with_data_passthrough(event)

    def start_next_cycle(self) -> None:
        """After a response: keep the bytes already read as the start of the next head."""
        self.h11.start_next_cycle()
        pending, closed = self.h11.trailing_data
        if pending[:1] in (b"\r", b"\n"):
            # An empty line after a body (old clients send a CRLF after a POST body): RFC 9112
            # section 2.2 says to ignore it, h11 refuses it and cannot drop bytes it holds. At
            # IDLE/IDLE a new h11 connection is in the same state, so hand it the rest instead.
            self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
            pending = pending.lstrip(b"\r\n")
            if pending:
                self.h11.receive_data(bytes(pending))
            if closed:
                self.h11.receive_data(b"")
        self._head = bytearray(pending)

    @property
    def can_keep_alive(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE
