"""HTTP/2 requests and responses as the rest of the proxy sees them, sans-IO (RFC 9113).

Strategy: the ``h2`` library (python-hyper's HTTP/2 state machine, h11's
sibling) turns frames into events and HPACK blocks into ``(name, value)``
lists; server/h2conn.py moves the bytes. This module is what the proxy adds
between the two, with no I/O:

* ``request_head`` turns a stream's header list into the same
  ``codec.RequestHead`` an HTTP/1.1 head becomes, so ``Decider.decide``,
  static files and forwarding cannot tell the protocols apart. The
  pseudo-header fields are checked first (RFC 9113 section 8.3.1), then the
  fields themselves (8.2: lower-case names, no connection-specific fields,
  no surrounding whitespace), then the ``[limits]`` head limits, measured as
  the same request would measure as HTTP/1.1, and last the same rules an
  HTTP/1.1 head goes through (rules.py: ``check_fields``,
  ``check_request_line``, ``check_request``), since the request is forwarded
  as HTTP/1.1. A refusal is a ClientError with the status HTTP/1.1 would
  get; the server answers it on the stream and the connection goes on.
* ``response_fields`` is the header list of a response: ``:status``, the
  fields, and ``content-length`` when the length is known (RFC 9113 8.1:
  the end of the stream ends the body, so there is no chunked).
* ``Budget`` is a token bucket, the defence against floods of frames that
  cost the server work and the client nothing: resets of streams in
  progress (rapid reset, CVE-2023-44487), PING and SETTINGS (each must be
  acknowledged), PRIORITY and empty DATA frames (CVE-2019-9512...9518).

What the ``h2`` library already refuses with a connection error (GOAWAY),
before any of this runs: a bad preface, frames too long, a header block over
the decoder's size limit (the HPACK bomb), more than 64 CONTINUATION frames
in one header block (the 2024 CONTINUATION flood), a DATA total that
contradicts Content-Length, more streams than SETTINGS_MAX_CONCURRENT_STREAMS.
"""

from __future__ import annotations

import re

from ..config import Limits
from ..errors import ClientError
from . import rules
from .codec import RefusedHead, RequestHead

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 section 3.4: what a client sends first
VERSION = b"2.0"  # RequestHead.http_version: the access log reads "HTTP/2.0"

# RFC 9113 section 8.2.2: fields that describe a connection; a request carrying one is malformed.
# TE is the exception, and only with the value "trailers".
CONNECTION_SPECIFIC = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding",
                                 b"upgrade"})
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
# RFC 9113 section 8.2.1: a name is a token and has no upper-case letter.
_NAME_RE = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+")
# The target as an HTTP/1.1 request line could carry it: visible ASCII (llhttp refuses the rest).
_PATH_RE = re.compile(rb"[\x21-\x7e]+")
_SCHEMES = frozenset({b"http", b"https"})


def _refused_head(method: bytes, path: bytes, fields) -> RefusedHead:
    """What the access log shows of a refused request (codec.py keeps the same for HTTP/1.1), with
    :authority as the Host an HTTP/1.1 request would have sent (the route's error page is chosen by it)."""
    line = f"{method.decode('latin-1') or '-'} {path.decode('latin-1') or '-'} HTTP/2.0"
    regular = tuple(field for field in fields if field[0][:1] != b":")
    authority = next((value for name, value in fields if name == b":authority"), None)
    if authority is not None and not any(name == b"host" for name, _ in regular):
        regular = ((b"host", authority), *regular)
    return RefusedHead(method, line, regular)


def request_head(fields, limits: Limits, end_stream: bool) -> RequestHead:
    """The RequestHead of an HTTP/2 request whose header block is ``fields``; ClientError when it is refused.

    ``end_stream``: the HEADERS frame ended the stream, so no body follows. A body may follow without a
    Content-Length in HTTP/2 (the stream's end ends it), so ``has_body`` comes from here.
    """
    method = scheme = authority = path = None
    host = None
    regular: list[tuple[bytes, bytes]] = []
    size = 0
    try:
        for name, value in fields:
            if name[:1] == b":":
                # RFC 9113 8.3: only the defined pseudo-fields, each once, all before the regular fields.
                if regular:
                    raise ClientError(f"pseudo-header {name.decode('latin-1')} after a regular field")
                if name not in _PSEUDO:
                    raise ClientError(f"unknown pseudo-header {name.decode('latin-1')}")
                if name == b":method":
                    if method is not None:
                        raise ClientError("more than one :method")
                    method = value
                elif name == b":path":
                    if path is not None:
                        raise ClientError("more than one :path")
                    path = value
                elif name == b":scheme":
                    if scheme is not None:
                        raise ClientError("more than one :scheme")
                    scheme = value
                else:
                    if authority is not None:
                        raise ClientError("more than one :authority")
                    authority = value
                continue
            if not _NAME_RE.fullmatch(name):
                raise ClientError("header name with upper-case or invalid characters (RFC 9113 8.2.1)")
            if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
                raise ClientError(f"connection-specific header {name.decode()} (RFC 9113 8.2.2)")
            if value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"):
                raise ClientError("header value with leading or trailing whitespace (RFC 9113 8.2.1)")
            if name == b"host":
                if host is not None:
                    raise ClientError("more than one Host")
                host = value
            regular.append((name, value))
            size += len(name) + len(value) + 4  # "name: value\r\n", as the HTTP/1.1 head would count it
        if method == b"CONNECT":
            rules.check_request_line(method, b"1.1")  # 405, as for HTTP/1.1 (no :path in a CONNECT, RFC 9113 8.5)
        if method is None or scheme is None or path is None:
            raise ClientError("request without :method, :scheme or :path (RFC 9113 8.3.1)")
        if scheme not in _SCHEMES:
            raise ClientError("unsupported :scheme")
        if not _PATH_RE.fullmatch(path) or not (path[:1] == b"/" or (path == b"*" and method == b"OPTIONS")):
            raise ClientError("invalid :path")
        if authority is not None:
            # RFC 9113 8.3.1: :authority is the Host; a Host that names another one makes the request malformed.
            if host is not None:
                if host.lower() != authority.lower():
                    raise ClientError("Host and :authority differ")
                regular.remove((b"host", host))
                size -= len(host) + 8
            regular.insert(0, (b"host", authority))
            size += len(authority) + 8
        # The [limits] head limits, on the size the same request has as HTTP/1.1.
        line = len(method) + len(path) + 11  # "METHOD /path HTTP/1.1\r\n"
        if line > limits.max_request_line:
            raise ClientError("request line too long", 414)
        if line + size + 2 > limits.max_header_bytes:
            raise ClientError("request head too large", 431)
        rules.check_request_line(method, b"1.1")
        rules.check_fields(regular, ClientError)
        head = rules.check_request(method, path, VERSION, regular, limits)
    except ClientError as exc:
        if getattr(exc, "head", None) is None:
            exc.head = _refused_head(method or b"", path or b"", fields)
        raise
    if not end_stream and not head.has_body:
        head = head._replace(has_body=True)
    return head


_STATUS = {status: b"%d" % status for status in range(100, 600)}


def response_fields(status: int, headers: list[tuple[bytes, bytes]], length: int | None,
                    method: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
    """(the header list of a response, True when it has no body). ``headers`` are lower-case and carry no
    connection-specific field (headers.py drops them from an upstream's response).

    As for HTTP/1.1 (codec.response_framing): HEAD, 1xx, 204 and 304 have no body; HEAD and 304 may carry
    the length the representation has (RFC 9110 8.6), 1xx and 204 never do.
    """
    bodiless = method == b"HEAD" or status < 200 or status == 204 or status == 304
    fields = [(b":status", _STATUS.get(status) or b"%d" % status), *headers]
    if length is not None and status >= 200 and status != 204:
        fields.append((b"content-length", b"%d" % length))
    return fields, bodiless


class Budget:
    """A token bucket: ``burst`` at once, then ``rate`` a second. ``spend`` is False once it is exhausted."""

    __slots__ = ("burst", "rate", "tokens", "at")

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = float(burst)
        self.at = now

    def __repr__(self) -> str:
        return f"<Budget {self.tokens:.0f}/{self.burst:g} +{self.rate:g}/s>"

    def spend(self, now: float, cost: float = 1.0) -> bool:
        tokens = self.tokens + (now - self.at) * self.rate
        self.tokens = (tokens if tokens < self.burst else self.burst) - cost
        self.at = now
        return self.tokens >= 0
