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
line's length) can see it. The checks themselves are rules.py's, shared with
codec.py, which replaces this module once the server uses it; a chunked body
is followed by codec.ChunkedBody too, for the line grammar h11 does not check.
"""

from __future__ import annotations

import h11

from ..config import Limits
from ..errors import ClientError
from . import rules
from .codec import ChunkedBody, H11Engine, RequestHead, split_fields
from .rules import split_target, transfer_coding_status

__all__ = ["ClientConnection", "RequestHead", "check_head", "split_target", "transfer_coding_status"]


def check_head(event: h11.Request, raw_head: bytes, limits: Limits) -> RequestHead:
    """Everything h11 accepted but we do not (rules.py, as for the codec's h11 engine)."""
    rules.check_head_size(len(raw_head), raw_head.find(b"\n"), limits)
    fields = split_fields(raw_head)
    rules.check_request_line(event.method, event.http_version)
    rules.check_lax_syntax(raw_head, fields, ClientError)
    return rules.check_request(event.method, event.target, event.http_version, fields, limits)


class ClientConnection:
    """One client connection: wraps ``h11.Connection(h11.SERVER)`` with our checks.

    ``receive_data`` takes bytes (b"" at EOF); ``next_event`` returns a
    RequestHead, h11.Data, h11.EndOfMessage, h11.NEED_DATA, h11.PAUSED or
    h11.ConnectionClosed, or raises ClientError with the status to answer.
    ``send`` turns h11 events into bytes.
    """

    __slots__ = ("h11", "limits", "_head", "requests", "_chunks", "_body", "_refused")

    def __init__(self, limits: Limits) -> None:
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.limits = limits
        self._head = bytearray()  # raw bytes since the current request began
        self.requests = 0
        self._chunks: ChunkedBody | None = None  # follows a chunked body beside h11
        self._body = bytearray()  # its bytes not consumed yet (a line cut by a read)
        self._refused: ClientError | None = None

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
        elif self._chunks is not None and data:
            self._follow_chunks(data)
        self.h11.receive_data(data)

    def _follow_chunks(self, data: bytes) -> None:
        """Check the chunked body's lines as they arrive: h11 accepts any chunk extension,
        a bare CR in one, and waits forever for the CRLF a bare LF never brings."""
        if self._refused is not None:
            return
        self._body += data
        try:
            _, used = self._chunks.read(self._body)
        except ClientError as exc:
            self._refused = exc
            return
        del self._body[:used]
        if self._chunks.done:
            self._chunks = None
            self._body = bytearray()

    def next_event(self):
        if self._refused is not None:
            raise self._refused
        try:
            event = self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise self._protocol_error(exc) from None
        kind = type(event)
        if kind is h11.Data or kind is h11.EndOfMessage:
            return event
        if kind is h11.Request:
            unparsed = bytes(self.h11.trailing_data[0])
            raw = bytes(self._head[: len(self._head) - len(unparsed)])
            self._head = bytearray()
            self.requests += 1
            head = check_head(event, raw.lstrip(b"\r\n"), self.limits)
            if head.has_body and head.content_length is None:
                self._chunks = ChunkedBody(self.limits.max_body_bytes, self.limits.max_header_bytes, ClientError)
                self._follow_chunks(unparsed)
                if self._refused is not None:
                    raise self._refused
            return head
        if event is h11.NEED_DATA and self.h11.their_state is h11.IDLE:
            rules.check_incomplete_head(self._head, self.limits)
        return event

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> ClientError:
        status = exc.error_status_hint
        if status == 431 and b"\n" not in self._head[: self.limits.max_request_line + 1]:
            status = 414
        elif status == 501:  # h11's hint for any Transfer-Encoding other than exactly "chunked"
            head = bytes(self._head).lstrip(b"\r\n")
            end = head.find(b"\r\n\r\n")
            try:  # the codec's h11 engine finds the status the whole head deserves
                H11Engine().request(head[:end + 4] if end >= 0 else head, head.find(b"\n"), self.limits)
            except ClientError as refused:
                return refused
        if status == 400:  # the request line's own status first, as for the codec's engines
            line = bytes(self._head).lstrip(b"\r\n").partition(b"\n")[0]
            return rules.refused_line(line.rstrip(b"\r"), str(exc))
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
