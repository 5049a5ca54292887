"""HTTP/1.1 on the wire, sans-IO: bytes in, checked events out; messages in, bytes out. Both sides.

Strategy: one framer, two engines. The framer (``RequestParser``,
``ResponseParser``) is ours and is the same for both engines: it buffers what
``feed`` gets, skips the empty lines RFC 9112 section 2.2 allows before a
request, finds where each head ends (the first empty line, ``\\n\\r?\\n``
as h11 finds it), enforces the size limits on the bytes received (so both
engines answer 414/431 at the same byte), and frames bodies from the head's
Content-Length or Transfer-Encoding, chunked bodies through ``ChunkedBody``.
An engine parses exactly one complete head at a time:

* ``llhttp`` (httptools, C): callbacks that append the URL and the fields to
  lists; the hot path. It never sees a body.
* ``h11`` (pure Python): the reference. It parses the head and decodes the
  body again from the same bytes; its Data is what this engine returns, and
  it must end the message exactly where the framer does.

What each engine refuses by itself, what each accepts that the other does
not, and how rules.py makes them equal is the table at the top of rules.py.
tests/unit/test_codec_differential.py feeds both the same bytes, split at
random, and requires the same events or the same refusal.

Events: ``RequestHead`` / ``ResponseHead`` / ``Informational``, ``Data``,
``EndOfMessage``, and the sentinels ``NEED_DATA`` (feed more), ``PAUSED``
(the message ended: answer it, then ``start_next_cycle``) and ``CLOSED``
(the client closed cleanly between requests). Refusals raise ClientError
(the status to answer) or UpstreamError (502); a parser that raised keeps
raising the same error.

The writer at the end is ours too, shared by both engines, so the two cannot
differ on the wire.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import h11
import httptools

from ..config import Limits
from ..errors import ClientError, UpstreamError

# --- events ---------------------------------------------------------------------------
# Immutable values, as NamedTuples rather than frozen dataclasses: one of each is made per
# request or per body chunk, and a frozen dataclass of RequestHead's 13 fields costs about
# 20,000 CPU instructions to build (object.__setattr__ per field), a NamedTuple about 5,000
# (measured with callgrind; docs/performance.md).


class RequestHead(NamedTuple):
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
    upgrade: bytes | None = None  # the Upgrade value when Connection names upgrade (HTTP/1.1)
    named: frozenset[bytes] = frozenset()  # the lower-case tokens of Connection: hop-by-hop for this message

    def get(self, name: bytes) -> bytes | None:
        """The first value of a header, or None."""
        for n, v in self.headers:
            if n == name:
                return v
        return None

    @property
    def request_line(self) -> str:
        return f"{self.method.decode()} {self.target.decode('ascii', 'replace')} HTTP/{self.http_version.decode()}"


class ResponseHead(NamedTuple):
    """An upstream's final response head, checked (rules.check_response)."""

    status: int
    reason: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]  # lower-case names, wire order; no Content-Length on a 204
    content_length: int | None  # also for HEAD and 304, where it frames nothing
    chunked: bool  # the body that follows is chunked
    keep_alive: bool
    named: frozenset[bytes] = frozenset()  # the lower-case tokens of Connection

    def get(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


class Informational(NamedTuple):
    """A 1xx response: 100 Continue, 103 Early Hints, or the 101 of an accepted upgrade."""

    status: int
    headers: list[tuple[bytes, bytes]]


class Data(NamedTuple):
    data: bytes


@dataclass(frozen=True, slots=True)
class RefusedHead:
    """What the access log keeps of a request refused once its head was read (nginx logs the request
    line, referer and user agent of a 400 or 413 too): the line as sent, and the fields split plainly."""

    method: bytes
    request_line: str
    fields: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def of(cls, head: bytes, line_end: int) -> "RefusedHead":
        line = head[:line_end].rstrip(b"\r")
        return cls(line.partition(b" ")[0], line.decode("latin-1"), tuple(split_fields(head)))

    def get(self, name: bytes) -> bytes | None:
        for n, v in self.fields:
            if n == name:
                return v
        return None


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


EndOfMessage = _Sentinel("EndOfMessage")  # trailers were checked and dropped: bodies are re-framed
NEED_DATA = _Sentinel("NEED_DATA")
PAUSED = _Sentinel("PAUSED")
CLOSED = _Sentinel("CLOSED")

# rules.py builds the heads above, so it is imported once they exist.
from . import rules  # noqa: E402

# Largest response head accepted from an upstream (nginx: "upstream sent too big header", 502),
# whether it arrives in one read or many.
MAX_RESPONSE_HEAD = 64 * 1024

_HEAD_END = re.compile(rb"\n\r?\n")

# --- chunked bodies -----------------------------------------------------------------


class ChunkedBody:
    """Follows a chunked body (RFC 9112 section 7.1) through the bytes given to ``read``.

    Returns the chunk data; refuses, with ``error`` (ClientError, UpstreamError),
    any line that is not exactly the grammar (rules.chunk_size), chunk data not
    followed by CRLF, a trailer field that fails rules.check_trailer_line, a
    line or trailer section over ``line_limit`` (431 for a client), and, when
    ``limit`` is set, a size that would take the body past it (413) as soon
    as the size line arrives, before its data.
    """

    __slots__ = ("_state", "_left", "received", "_limit", "_line_limit", "_error", "_trailer")

    _SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)

    def __init__(self, limit: int | None, line_limit: int, error: type) -> None:
        self._state = self._SIZE
        self._left = 0
        self.received = 0
        self._limit = limit
        self._line_limit = line_limit
        self._error = error
        self._trailer = 0

    def __repr__(self) -> str:
        return f"<ChunkedBody state={self._state} left={self._left} received={self.received}>"

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def _too_long(self, what: str):
        return self._error(f"{what} too long", 431) if self._error is ClientError else self._error(f"{what} too long")

    def read(self, buf: bytes | bytearray, pos: int = 0) -> tuple[list[bytes], int]:
        """Consume ``buf`` from ``pos``: (chunk data, where consumption stopped)."""
        pieces = []
        end = len(buf)
        error = self._error
        while pos < end:
            state = self._state
            if state == self._DATA:
                n = min(self._left, end - pos)
                pieces.append(bytes(buf[pos:pos + n]))
                pos += n
                self._left -= n
                self.received += n
                if not self._left:
                    self._state = self._DATA_END
            elif state == self._DATA_END:
                if buf[pos] != 13 or (end - pos > 1 and buf[pos + 1] != 10):
                    raise error("chunk data not followed by CRLF")
                if end - pos < 2:
                    break
                pos += 2
                self._state = self._SIZE
            elif state == self._DONE:
                break
            else:
                newline = buf.find(b"\n", pos)
                if newline < 0:
                    if end - pos + self._trailer > self._line_limit:
                        raise self._too_long("chunk size line" if state == self._SIZE else "trailer section")
                    break
                line = bytes(buf[pos:newline + 1])
                pos = newline + 1
                if state == self._SIZE:
                    if len(line) > self._line_limit:
                        raise self._too_long("chunk size line")
                    size, width = rules.chunk_size(line, error)
                    if self._limit is not None and self.received + size > self._limit:
                        # nginx answers as soon as a declared chunk would cross client_max_body_size,
                        # so a client cannot hold the connection with a chunk it never sends.
                        raise ClientError("request body too large", 413)
                    if width > 16:
                        # llhttp and nginx overflow at 2**64, h11 stops at 20 digits: 16 are
                        # what every one of them reads the same way.
                        raise error("chunk size longer than 16 hex digits")
                    self._left = size
                    self._state = self._DATA if size else self._TRAILER
                else:
                    self._trailer += len(line)
                    if self._trailer > self._line_limit:
                        raise self._too_long("trailer section")
                    if line == b"\r\n":
                        self._state = self._DONE
                    else:
                        rules.check_trailer_line(line, error)
        return pieces, pos


# --- engines ----------------------------------------------------------------------


def split_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, value without OWS) of each field line of a head an engine accepted."""
    out = []
    for line in head.split(b"\n")[1:]:
        line = line.rstrip(b"\r")
        if line:
            name, _, value = line.partition(b":")
            out.append((name.lower(), value.strip(b" \t")))
    return out


class _H11Body:
    """h11 decoding a body from the bytes the framer says belong to it."""

    __slots__ = ("conn", "error")

    def __init__(self, conn: h11.Connection, error: type) -> None:
        self.conn = conn
        self.error = error

    def feed(self, raw: bytes, last: bool, eof: bool = False) -> bytes:
        """The data h11 finds in ``raw``; ``last``: the framer says the message ends with it."""
        conn = self.conn
        if raw:
            conn.receive_data(raw)
        if eof:
            conn.receive_data(b"")
        out = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self.error(f"malformed body: {exc}") from None
            kind = type(event)
            if kind is h11.Data:
                out.append(event.data)
                continue
            if kind is h11.EndOfMessage:
                if not last:
                    raise self.error("h11 ended the body before its framing did")
            elif last:
                raise self.error("h11 did not end the body where its framing did")
            return b"".join(out)


# h11's own size limit: off, the framer enforces ours on the bytes it hands over.
_UNLIMITED = 1 << 62

# Field names h11 refuses unless the value is one "chunked"; renamed to parse the rest of a head.
_TRANSFER_ENCODING_NAME = re.compile(rb"(?im)^transfer-encoding(?=[ \t]*:)")


class H11Engine:
    """h11, the pure-Python reference: heads and bodies, checked by rules.py for what h11 allows."""

    name = "h11"
    __slots__ = ()

    def request(self, head: bytes, line_end: int, limits: Limits) -> tuple[RequestHead, _H11Body]:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_UNLIMITED)
        try:
            event = self._parse(conn, head)
        except h11.RemoteProtocolError as exc:
            line = head[:line_end].rstrip(b"\r")
            if exc.error_status_hint != 501:
                raise rules.refused_line(line, str(exc)) from None
            # A Transfer-Encoding other than one "chunked": h11 stopped at that field. The
            # status comes from the whole head, as for llhttp, so parse it without those
            # fields; rules.check_request then refuses it with 400 or 501.
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_UNLIMITED)
            try:
                event = self._parse(conn, _TRANSFER_ENCODING_NAME.sub(b"x-unread-transfer-encoding", head))
            except h11.RemoteProtocolError as again:
                raise rules.refused_line(line, str(again)) from None
        fields = split_fields(head)
        rules.check_request_line(event.method, event.http_version)
        rules.check_lax_syntax(head, fields, ClientError)
        result = rules.check_request(event.method, event.target, event.http_version, fields, limits)
        return result, _H11Body(conn, ClientError)

    def response(self, head: bytes, method: bytes, upgrade: bool) -> tuple[ResponseHead, _H11Body]:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_UNLIMITED)
        headers = [(b"host", b"upstream")]
        if upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"protocol")]
        conn.send(h11.Request(method=method, target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())
        try:
            event = self._parse(conn, head)
        except h11.RemoteProtocolError as exc:
            raise UpstreamError(f"invalid response: {exc}") from None
        fields = split_fields(head)
        rules.check_lax_syntax(head, fields, UpstreamError)
        result = rules.check_response(event.status_code, bytes(event.reason), event.http_version, fields,
                                      method, upgrade)
        return result, _H11Body(conn, UpstreamError)

    @staticmethod
    def _parse(conn: h11.Connection, head: bytes):
        conn.receive_data(head)
        event = conn.next_event()
        if event is h11.NEED_DATA:  # cannot happen: the framer hands over whole heads
            raise h11.RemoteProtocolError("incomplete head", 400)
        return event


class _Found:
    """llhttp's callbacks for one head: append, nothing else. ``start`` is the request
    target (on_url) or the reason phrase (on_status)."""

    __slots__ = ("start", "fields", "done", "complete")

    def __init__(self) -> None:
        self.start = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.done = False
        self.complete = False  # llhttp ended the message: no body follows the head

    def on_url(self, part: bytes) -> None:
        self.start += part

    on_status = on_url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.lower(), value.rstrip(b" \t")))  # llhttp keeps trailing OWS

    def on_headers_complete(self) -> None:
        self.done = True

    def on_message_complete(self) -> None:
        self.complete = True


def _llhttp(parser):
    # lenient_version: RFC 9110 2.5 processes HTTP/1.2 as 1.1, which llhttp alone refuses;
    # rules.py checks the version. lenient_keep_alive: llhttp would refuse what follows a
    # Connection: close message; the framer decides what is read next.
    parser.set_dangerous_leniencies(lenient_version=True, lenient_keep_alive=True)
    return parser


class LlhttpEngine:
    """llhttp through httptools: strict by itself; rules.py adds only what it leaves open.

    One per connection: a request parser whose message ended with its head (a GET)
    parses the next head too; after a body or an upgrade a new one starts clean.
    """

    name = "llhttp"
    __slots__ = ("_parser", "_found")

    def __init__(self) -> None:
        self._parser = None
        self._found = _Found()

    def request(self, head: bytes, line_end: int, limits: Limits) -> tuple[RequestHead, None]:
        found = self._found
        found.start = b""
        found.fields = []
        found.done = found.complete = False
        parser = self._parser or _llhttp(httptools.HttpRequestParser(found))
        self._parser = None
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # Connection: upgrade, or CONNECT: the head is complete, rules.py decides
        except httptools.HttpParserError as exc:
            raise rules.refused_line(head[:line_end].rstrip(b"\r"), str(exc)) from None
        if found.complete:
            self._parser = parser
        version = parser.get_http_version().encode()
        # llhttp reads "GET /" as HTTP/0.9 and takes RTSP/ and ICE/ for HTTP/; it also allows
        # several spaces between the parts. The request line is method SP target SP HTTP-version.
        if (not found.done or version == b"0.9" or not head.startswith(b"HTTP/", line_end - 9)
                or head.count(b" ", 0, line_end) != 2):
            raise rules.refused_line(head[:line_end].rstrip(b"\r"), "malformed request line")
        method = parser.get_method()
        rules.check_request_line(method, version)
        return rules.check_request(method, found.start, version, found.fields, limits), None

    def response(self, head: bytes, method: bytes, upgrade: bool) -> tuple[ResponseHead, None]:
        found = _Found()
        parser = _llhttp(httptools.HttpResponseParser(found))
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"invalid response: {exc}") from None
        if not found.done or not head.startswith(b"HTTP/"):
            raise UpstreamError("invalid response: not an HTTP/1.x status line")
        version = parser.get_http_version().encode()
        return rules.check_response(parser.get_status_code(), found.start, version, found.fields,
                                    method, upgrade), None


# [server] http_engine: the name -> the engine class; each connection gets its own engine.
ENGINES = {"llhttp": LlhttpEngine, "h11": H11Engine}
DEFAULT_ENGINE = "llhttp"  # what "auto" means


def engine(name: str):
    """A new engine, for one connection, by its [server] http_engine name ("auto" is llhttp)."""
    return ENGINES[DEFAULT_ENGINE if name == "auto" else name]()


# --- the framers ----------------------------------------------------------------------

# Framer states (strings, so that a repr reads well).
_HEAD, _LENGTH, _CHUNKED, _UNTIL_EOF, _END, _PAUSED, _CLOSED, _SWITCHED, _FAILED, _IDLE, _SWITCHING = (
    "HEAD", "LENGTH", "CHUNKED", "UNTIL_EOF", "END", "PAUSED", "CLOSED", "SWITCHED", "FAILED", "IDLE", "SWITCHING")


class _Framer:
    """What both parsers share: the buffer, EOF, and body framing."""

    __slots__ = ("_engine", "_buf", "_direct", "_scanned", "_eof", "_state", "_left", "_chunks", "_decoder",
                 "_error", "_failure")

    def __init__(self, engine, error: type) -> None:
        self._engine = engine
        self._buf = bytearray()
        # A read that is all body (Content-Length or until the close) and found the buffer empty is kept
        # as it came and handed on as it is: a 10 MiB response is then not copied twice on its way.
        self._direct: bytes | None = None
        self._scanned = 0  # where the search for the end of the head resumes
        self._eof = False
        self._left = 0
        self._chunks: ChunkedBody | None = None
        self._decoder: _H11Body | None = None
        self._error = error
        self._failure: Exception | None = None

    def _find_head(self) -> int:
        """The end of the head in the buffer (after its empty line), or -1."""
        buf = self._buf
        match = _HEAD_END.search(buf, self._scanned)
        if match is None:
            self._scanned = max(0, len(buf) - 2)
            return -1
        self._scanned = 0
        return match.end()

    def _frame(self, kind: str, length: int, limit: int | None, line_limit: int, decoder) -> None:
        """Read the body that follows a head: "none", "length", "chunked" or "eof" (until the close)."""
        self._decoder = decoder
        if kind == "chunked":
            self._chunks = ChunkedBody(limit, line_limit, self._error)
            self._state = _CHUNKED
        elif kind == "length" and length:
            self._left = length
            self._state = _LENGTH
        elif kind == "eof":
            self._state = _UNTIL_EOF
        else:
            self._state = _END
            if decoder is not None:
                decoder.feed(b"", True)

    def _body_part(self, raw: bytes, last: bool, data: bytes = b"", eof: bool = False) -> bytes:
        """The data of ``raw`` as this engine decodes it (h11 again; llhttp: the framer's)."""
        if self._decoder is not None:
            return self._decoder.feed(raw, last, eof)
        return data

    def _take(self, data: bytes) -> None:
        """What ``feed`` does with bytes: keep a body's read as it is (see ``_direct``), or buffer."""
        if self._direct is None:
            if not self._buf and (self._state is _LENGTH or self._state is _UNTIL_EOF):
                self._direct = data
                return
        else:
            self._buf += self._direct
            self._direct = None
        self._buf += data

    def _body(self):
        """The next body event, or NEED_DATA."""
        buf = self._buf
        while True:
            state = self._state
            if state is _END:
                self._state = _PAUSED
                return EndOfMessage
            direct = self._direct
            if direct is not None:
                self._direct = None
                if state is _LENGTH:
                    if len(direct) > self._left:  # more than the body: the rest waits in the buffer
                        buf += direct[self._left:]
                        direct = direct[:self._left]
                    self._left -= len(direct)
                    last = not self._left
                else:
                    last = False
                data = self._body_part(direct, last, direct)
                if last:
                    self._state = _END
                if data:
                    return Data(data)
                continue
            if not buf:
                if not self._eof:
                    return NEED_DATA
                if state is _UNTIL_EOF:
                    self._state = _END
                    self._body_part(b"", True, eof=True)
                    continue
                raise self._error("the connection closed before the body ended")
            if state is _LENGTH:
                if self._left >= len(buf):  # the usual case: all of it is body (one copy)
                    raw = bytes(buf)
                    buf.clear()
                else:
                    raw = bytes(buf[:self._left])
                    del buf[:len(raw)]
                self._left -= len(raw)
                last = not self._left
                data = self._body_part(raw, last, raw)
            elif state is _UNTIL_EOF:
                raw = bytes(buf)
                buf.clear()
                last = False
                data = self._body_part(raw, False, raw)
            else:
                pieces, used = self._chunks.read(buf)
                if not used:
                    if self._eof:
                        raise self._error("the connection closed before the body ended")
                    return NEED_DATA
                raw = bytes(buf[:used])
                del buf[:used]
                last = self._chunks.done
                data = self._body_part(raw, last, b"".join(pieces))
            if last:
                self._state = _END
            if data:
                return Data(data)

    def next_event(self):
        state = self._state
        try:
            if state is _HEAD:
                return self._read_head()
            if state is _END:
                self._state = _PAUSED
                return EndOfMessage
            if state is _PAUSED or state is _SWITCHING:
                return PAUSED
            if state is _FAILED:
                raise self._failure
            if state is _CLOSED:
                return CLOSED
            if state is _SWITCHED:
                raise RuntimeError("the connection switched protocols; its bytes are the tunnel's")
            if state is _IDLE:
                raise RuntimeError("next_event before expect")
            return self._body()
        except (ClientError, UpstreamError) as exc:
            self._state = _FAILED
            self._failure = exc
            raise


class RequestParser(_Framer):
    """One client connection, across its requests. ``request_parser(engine, limits)`` builds one.

    ``feed(data)`` (b"" for the client's EOF), then ``next_event()`` until
    NEED_DATA. After a request's EndOfMessage: PAUSED until ``start_next_cycle()``
    (once its response went out); pipelined requests are then parsed in order,
    so an error in a later one surfaces only after the earlier ones' events.
    After a request that asked to upgrade, ``take_trailing()`` hands over what
    followed it, if the upstream switched (101).
    """

    __slots__ = ("_limits", "requests", "_head")

    def __init__(self, engine, limits: Limits) -> None:
        super().__init__(engine, ClientError)
        self._limits = limits
        self._state = _HEAD
        self.requests = 0
        self._head: RequestHead | None = None

    def __repr__(self) -> str:
        return f"<RequestParser {self._engine.name} {self._state} requests={self.requests} buffered={len(self._buf)}>"

    def feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        if not self._buf and self._state is _HEAD and data[:1] in b"\r\n":
            # RFC 9112 section 2.2: a server SHOULD ignore at least one empty line before the
            # request-line (nginx skips CR and LF there); llhttp does too, h11 does not.
            data = data.lstrip(b"\r\n")
        self._take(data)

    @property
    def head_started(self) -> bool:
        """Bytes of a next request head have arrived (an idle keep-alive connection has none)."""
        if self._state is _HEAD:
            return bool(self._buf)
        return self._state is _PAUSED and bool(self._buf.lstrip(b"\r\n"))

    def _read_head(self):
        limits = self._limits
        buf = self._buf
        end = self._find_head()
        if end < 0:
            if self._eof:
                if not buf:
                    self._state = _CLOSED
                    return CLOSED
                raise ClientError("the connection closed in the middle of a request head")
            rules.check_incomplete_head(buf, limits)
            return NEED_DATA
        line_end = buf.find(b"\n", 0, end)
        rules.check_head_size(end, line_end, limits)
        head = bytes(buf[:end])
        del buf[:end]
        self.requests += 1
        try:
            result, decoder = self._engine.request(head, line_end, limits)
        except ClientError as exc:
            exc.head = RefusedHead.of(head, line_end)  # so the access log shows what was refused
            raise
        self._head = result
        kind = "none" if not result.has_body else "chunked" if result.content_length is None else "length"
        self._frame(kind, result.content_length or 0, limits.max_body_bytes, limits.max_header_bytes, decoder)
        return result

    def start_next_cycle(self) -> None:
        """The response went out: parse what follows (pipelined requests, after empty lines)."""
        if self._state is not _PAUSED:
            raise RuntimeError(f"start_next_cycle in state {self._state}")
        buf = self._buf
        if buf[:1] in (b"\r", b"\n"):
            # RFC 9112 section 2.2 again: old clients send CRLF after a POST body.
            del buf[:len(buf) - len(buf.lstrip(b"\r\n"))]
        self._state = _HEAD
        self._chunks = self._decoder = None

    def take_trailing(self) -> bytes:
        """After a request that asked to upgrade, once the upstream switched: the bytes the
        client sent after it, which belong to the tunnel. The parser is done then."""
        if self._state is not _PAUSED or self._head is None or self._head.upgrade is None:
            raise RuntimeError("take_trailing is for the end of a request that asked to upgrade")
        data = bytes(self._buf)
        self._buf.clear()
        self._state = _SWITCHED
        return data


def request_parser(engine_name: str, limits: Limits) -> RequestParser:
    return RequestParser(engine(engine_name), limits)


class ResponseParser(_Framer):
    """One upstream connection, across its responses. ``response_parser(engine)`` builds one.

    ``expect(method, upgrade)`` before each response: a HEAD response has no
    body, and 101 is accepted only when the request asked to upgrade. Then
    ``feed``/``next_event``: Informational (1xx, any number), ResponseHead,
    Data, EndOfMessage; NEED_DATA when more is needed. After a 101, PAUSED and
    ``take_trailing()``. ``reusable`` tells whether the connection may carry
    the next request; ``start_next_cycle()`` prepares for it.
    """

    __slots__ = ("_method", "_upgrade", "_head", "_until_eof", "requests")

    def __init__(self, engine) -> None:
        super().__init__(engine, UpstreamError)
        self._state = _IDLE
        self._method = b"GET"
        self._upgrade = False
        self._head: ResponseHead | None = None
        self._until_eof = False
        self.requests = 0

    def __repr__(self) -> str:
        return f"<ResponseParser {self._engine.name} {self._state} requests={self.requests}>"

    def expect(self, method: bytes, upgrade: bool = False) -> None:
        """The request about to be answered: its method, and whether it asked to switch protocols."""
        if self._state is not _IDLE:
            raise RuntimeError(f"expect in state {self._state}")
        self._method = method
        self._upgrade = upgrade
        self._state = _HEAD
        self._head = None
        self._until_eof = False
        self.requests += 1

    def feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        self._take(data)

    def _read_head(self):
        buf = self._buf
        if buf[:1] in (b"\r", b"\n"):
            raise UpstreamError("invalid response: empty line before the status line")
        if buf[:5] != b"HTTP/"[:len(buf)]:
            # Not a status line, whatever follows: refused at once rather than when a head
            # that never ends reaches MAX_RESPONSE_HEAD or read_timeout passes (nginx does too).
            raise UpstreamError("invalid response: not an HTTP/1.x status line")
        end = self._find_head()
        if end < 0:
            if len(buf) > MAX_RESPONSE_HEAD:
                raise UpstreamError(f"invalid response: head larger than {MAX_RESPONSE_HEAD} bytes")
            if self._eof:
                raise UpstreamError("upstream closed the connection before the response ended")
            return NEED_DATA
        if end > MAX_RESPONSE_HEAD:
            raise UpstreamError(f"invalid response: head larger than {MAX_RESPONSE_HEAD} bytes")
        head = bytes(buf[:end])
        del buf[:end]
        result, decoder = self._engine.response(head, self._method, self._upgrade)
        if result.status < 200:
            if result.status == 101:
                self._state = _SWITCHING
            return Informational(result.status, result.headers)
        self._head = result
        if not rules.response_has_body(result, self._method):
            kind = "none"
        else:
            kind = "chunked" if result.chunked else "eof" if result.content_length is None else "length"
            self._until_eof = kind == "eof"
        self._frame(kind, result.content_length or 0, None, MAX_RESPONSE_HEAD, decoder)
        return result

    @property
    def reusable(self) -> bool:
        """The response ended by its framing, neither side asked to close, and nothing came after it.

        Bytes beyond the declared length (nginx: "upstream sent more data than specified")
        would otherwise be read as the next client's response: response queue poisoning.
        The caller must also have sent the whole request.
        """
        return (self._state is _PAUSED and self._head is not None and self._head.keep_alive
                and not self._until_eof and not self._buf and not self._eof)

    def start_next_cycle(self) -> None:
        if self._state is not _PAUSED:
            raise RuntimeError(f"start_next_cycle in state {self._state}")
        self._state = _IDLE
        self._chunks = self._decoder = None

    def take_trailing(self) -> bytes:
        """After a 101: the bytes the upstream sent after it, the tunnel's first."""
        if self._state is not _SWITCHING:
            raise RuntimeError("take_trailing is for after a 101")
        data = bytes(self._buf)
        self._buf.clear()
        self._state = _SWITCHED
        return data



def response_parser(engine_name: str = "auto") -> ResponseParser:
    return ResponseParser(engine(engine_name))


# --- the writer -----------------------------------------------------------------------
# Names and values come from a parsed, checked head or from the proxy's own validated
# parts (config strings are checked at load), so they are written as they are.

LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


_FIELD = b": ".join  # (name, value) -> b"name: value", in C: no Python-level loop per field


def response_head(status: int, reason: bytes, headers) -> bytes:
    """``HTTP/1.1 status reason``, the fields, the empty line."""
    if not headers:
        return b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason)
    return b"HTTP/1.1 %d %s\r\n%s\r\n\r\n" % (status, reason, b"\r\n".join(map(_FIELD, headers)))


def request_head(method: bytes, target: bytes, headers) -> bytes:
    if not headers:
        return b"%s %s HTTP/1.1\r\n\r\n" % (method, target)
    return b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (method, target, b"\r\n".join(map(_FIELD, headers)))


def chunk(data: bytes) -> bytes:
    """One chunk; nothing for empty data (a zero-size chunk would end the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


class Framing(NamedTuple):
    """How a response to a client is delimited, and whether the connection stays open.

    ``kind``: "length" (Content-Length), "chunked", "close" (the body ends when the
    connection does) or "none" (no body at all). ``headers``: the fields that say
    so, to append to the response's own.
    """

    kind: str
    keep_alive: bool
    headers: tuple[tuple[bytes, bytes], ...]


def response_framing(http_version: bytes, method: bytes, keep_alive: bool, status: int,
                     content_length: int | None) -> Framing:
    """The framing of a response to a client (RFC 9112 section 6, RFC 9110 section 6.4.1).

    ``keep_alive``: the request's, and the proxy's own wish (False when closing or
    at keepalive_requests). HTTP/1.0 clients are answered with a close: persistence
    in 1.0 needs keep-alive extensions on both sides (RFC 9112 appendix C.2.2),
    which the proxy does not implement, as h11 did not.
    """
    keep_alive = keep_alive and http_version != b"1.0"
    if method == b"HEAD" or status < 200 or status in (204, 304):
        # RFC 9112 6.3 rule 1: these end with their head. HEAD and 304 may carry the
        # length the representation has (RFC 9110 8.6, 15.4.5); 1xx and 204 MUST NOT.
        kind = "none"
        headers = () if content_length is None or status < 200 or status == 204 else (
            (b"content-length", b"%d" % content_length),)
    elif content_length is not None:
        kind = "length"
        headers = ((b"content-length", b"%d" % content_length),)
    elif http_version != b"1.0":
        kind = "chunked"  # RFC 9112 6.1: an HTTP/1.1 recipient must understand chunked
        headers = ((b"transfer-encoding", b"chunked"),)
    else:
        # RFC 9112 6.1: no chunked to an HTTP/1.0 client; 6.3 rule 8: the close ends the body.
        kind = "close"
        keep_alive = False
        headers = ()
    if not keep_alive and status >= 200:
        headers += ((b"connection", b"close"),)
    return Framing(kind, keep_alive, headers)
