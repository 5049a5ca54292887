"""Responses compressed on the fly: whether a response is, with which coding, and the encoders. Sans-IO.

Strategy: compression is a transformation of the body on its way to the
client, decided once per response from three things: the request (its
``Accept-Encoding``, its method, a ``Range``), the route's ``compress``
settings (``config.Compress``) and the response's own head (status,
``Content-Type``, ``Content-Encoding``, ``Cache-Control``, length).
``begin`` makes that decision for a body that follows in pieces and returns
the rewritten head and an ``Encoder``; ``complete`` does the same for a body
that is all there. The server calls them where the framing of an answer is
chosen (server/client.py), so every producer of an answer (a forwarded
response, a static file, anything that answers through the same
``start_response``/``write``/``finish``/``respond`` seam) is compressed the
same way, and none compresses by itself.

The rules, in order (each a reason to leave the body as it is):

* nothing to compress: 1xx, 204, 304 (RFC 9110 15.4.5), 206 and requests
  with ``Range`` (a range of the compressed bytes is not what was asked for);
* ``Content-Encoding`` already present: the proxy never decompresses, so it
  never compresses twice either;
* ``Cache-Control: no-transform`` in the response or the request (RFC 9111
  5.2.1.6 and 5.2.2.6; RFC 9110 7.7: a proxy MUST NOT transform such content);
* a media type outside the route's ``types``, or a known length below
  ``min_length`` (a few hundred bytes gain nothing and cost a context).

A response that passes them depends on ``Accept-Encoding``, so it gets
``Vary: Accept-Encoding`` (merged into the upstream's Vary, RFC 9110 12.5.5)
whether or not this client accepts a coding; a HEAD gets the head a GET
would (RFC 9110 9.3.2). The coding is the client's best by q-value (RFC
9110 12.5.3; ``q=0`` refuses, ``identity`` wins when weighted higher), the
route's order of ``encodings`` breaking ties. A compressed answer drops
Content-Length (the length is not known until the end, so HTTP/1.1 frames
it chunked), drops Accept-Ranges, and turns a strong ETag weak: the bytes
differ from the upstream's, though they mean the same (RFC 9110 8.8.3).

Streaming: ``Encoder.feed`` then ``flush`` after each piece the upstream
sends, so a server-sent event or a line of a streamed answer reaches the
client as soon as it would have without compression; an encoder holds its
window and nothing else, so memory stays flat however long the body.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import partial
from typing import Callable

import brotli
import zstandard

from ..config import Compress

# Windows are capped so that one stream's encoder stays near a megabyte (measured in
# docs/performance.md): the library defaults (4 MiB for Brotli, 2 MiB at zstd 3, 8 MiB
# at higher zstd levels) pay for ratio on bodies far larger than a web answer.
BROTLI_LGWIN = 20
ZSTD_WINDOW_LOG = 20

_NO_BODY = frozenset({204, 206, 304})
_IDENTITY = b"identity"
_ALIASES = {b"x-gzip": b"gzip"}  # RFC 9110 8.4.1.3: a recipient SHOULD treat x-gzip as gzip


# --- the client's side: Accept-Encoding ------------------------------------

def accept_weights(header: bytes | None) -> dict[bytes, float]:
    """Coding -> q-value of an Accept-Encoding value (RFC 9110 12.5.3), ``*`` included as it is.

    A q-value that is not one (``q=abc``, ``q=2``) refuses the coding: guessing
    what a malformed header meant would risk sending what the client cannot read.
    """
    weights: dict[bytes, float] = {}
    for item in (header or b"").lower().split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip()
        if not coding:
            continue
        q = 1.0
        params = params.strip()
        if params.startswith(b"q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
            if not 0.0 <= q <= 1.0:
                q = 0.0
        weights[_ALIASES.get(coding, coding)] = q
    return weights


def negotiate(header: bytes | None, offered: tuple[bytes, ...]) -> bytes | None:
    """The coding of ``offered`` (in the server's order of preference) the client prefers, or None
    for identity.

    No header: identity. RFC 9110 12.5.3 lets a server pick any coding then,
    but clients that send none are scripts and old tools that may not decode
    one (nginx and Caddy send identity too). ``*`` weighs the codings the
    header does not name. A coding is chosen only when weighted at least as
    high as identity (identity is acceptable unless refused, so unnamed it
    counts as the best coding's weight).
    """
    if header is None:
        return None
    weights = accept_weights(header)
    star = weights.get(b"*", 0.0)
    best, best_q = None, 0.0
    for coding in offered:
        q = weights.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    if best is None or best_q < weights.get(_IDENTITY, best_q):
        return None
    return best


# --- the response's side ---------------------------------------------------

def media_matches(policy: Compress, content_type: bytes) -> bool:
    """True when ``content_type`` (parameters ignored) is one of ``policy.types``."""
    kind = content_type.partition(b";")[0].strip().lower()
    if kind in policy.exact_types:
        return True
    return any(kind.startswith(prefix) and kind.endswith(suffix) for prefix, suffix in policy.wild_types)


def _no_transform(value: bytes) -> bool:
    return b"no-transform" in value.lower()


def _requested_untransformed(request_headers) -> bool:
    """A Range (the client wants bytes of the identity body) or Cache-Control: no-transform."""
    for name, value in request_headers:
        if name == b"range" or (name == b"cache-control" and _no_transform(value)):
            return True
    return False


def choose(policy: Compress, request_headers, accept_encoding: bytes | None, status: int,
           headers, length: int | None) -> bytes | None | bool:
    """The decision for one response: a coding (bytes), None when the response depends on
    Accept-Encoding but this client gets identity, or False when it is never compressed.

    ``length``: the identity body's length when known. A HEAD is decided as
    its GET would be: the caller sends the head alone.
    """
    if status < 200 or status in _NO_BODY:
        return False
    content_type = None
    for name, value in headers:
        if name == b"content-type":
            content_type = value
        elif name == b"content-encoding" or (name == b"cache-control" and _no_transform(value)):
            return False
    if content_type is None or not media_matches(policy, content_type):
        return False
    if length is not None and length < policy.min_length:
        return False
    if _requested_untransformed(request_headers):
        return False
    return negotiate(accept_encoding, policy.codings)


def rewrite(headers, coding: bytes | None) -> list[tuple[bytes, bytes]]:
    """The head of a response that depends on Accept-Encoding, for ``coding`` (None: identity)."""
    out = []
    vary_at = None  # the first Vary field: Accept-Encoding joins it unless a Vary field names it already
    named = False
    for name, value in headers:
        if name == b"vary":
            if vary_at is None:
                vary_at = len(out)
            named = named or _names_accept_encoding(value)
        elif coding is not None:
            if name == b"content-length" or name == b"accept-ranges":
                continue  # the coded length is not known; ranges would be of the identity body
            if name == b"etag" and value.startswith(b'"'):
                value = b"W/" + value
        out.append((name, value))
    if vary_at is None:
        out.append((b"vary", b"Accept-Encoding"))
    elif not named:  # RFC 9110 5.3: several Vary fields are one list
        out[vary_at] = (b"vary", out[vary_at][1] + b", Accept-Encoding")
    if coding is not None:
        out.append((b"content-encoding", coding))
    return out


def _names_accept_encoding(vary: bytes) -> bool:
    return any(item.strip().lower() in (b"accept-encoding", b"*") for item in vary.split(b","))


def weakened_validator(request_headers, headers) -> list[tuple[bytes, bytes]] | None:
    """A 304 for a body the client holds compressed: its strong ETag as the weak one the client was
    given (and Vary), so a cache finds the stored response it revalidates (RFC 9110 15.4.5: a 304
    carries the ETag and Vary a 200 would). None when the client validated anything else."""
    etag = next((value for name, value in headers if name == b"etag"), None)
    if etag is None or not etag.startswith(b'"'):
        return None
    weak = b"W/" + etag
    for name, value in request_headers:
        if name == b"if-none-match" and weak in (t.strip() for t in value.split(b",")):
            return rewrite([(n, weak if n == b"etag" else v) for n, v in headers], None)
    return None


# --- the seam the server calls ---------------------------------------------

def _decided(policy: Compress, head, status: int, headers, length: int | None):
    """``(coding or None, headers)``: the decision for a response and its head, rewritten when it
    depends on Accept-Encoding."""
    decision = choose(policy, head.headers, head.get(b"accept-encoding"), status, headers, length)
    if decision is False:
        if status == 304:
            return None, weakened_validator(head.headers, headers) or headers
        return None, headers
    return decision, rewrite(headers, decision)


def begin(policy: Compress, head, status: int, headers, length: int | None):
    """For a body that follows in pieces: ``(headers, length, encoder or None)``."""
    coding, headers = _decided(policy, head, status, headers, length)
    if coding is None:
        return headers, length, None
    if head.method == b"HEAD":
        return headers, None, None
    return headers, None, encoder(coding, policy.levels[coding], length)


def complete(policy: Compress, head, status: int, headers, length: int, body: bytes):
    """For a body that is all there (``length`` is its identity length, which HEAD and 304 do not
    send): ``(headers, length, body)``, compressed in one call when it is compressed."""
    coding, headers = _decided(policy, head, status, headers, length)
    if coding is None:
        return headers, length, body
    if head.method == b"HEAD":
        return headers, None, body
    body = compress(coding, policy.levels[coding], body)
    return headers, len(body), body


# --- encoders --------------------------------------------------------------
# A table, one row per coding: the level range its library accepts, how to start a stream (its
# feed, flush and finish), and how to compress a body that is all there.

def _gzip_stream(level: int, length: int | None):
    z = zlib.compressobj(level, zlib.DEFLATED, 31)  # 16 + 15: the gzip wrapper (RFC 1952), a 32 KiB window
    return z.compress, partial(z.flush, zlib.Z_SYNC_FLUSH), z.flush  # a sync flush ends on a byte boundary


def _brotli_stream(level: int, length: int | None):
    c = brotli.Compressor(quality=level, lgwin=BROTLI_LGWIN)
    return c.process, c.flush, c.finish


def _zstd_stream(level: int, length: int | None):
    # A compressor carries one stream at a time, so each body gets its own; a known length goes in the frame.
    c = zstandard.ZstdCompressor(compression_params=_zstd_params(level)).compressobj(
        size=-1 if length is None else length)
    return (c.compress, partial(c.flush, zstandard.COMPRESSOBJ_FLUSH_BLOCK),
            partial(c.flush, zstandard.COMPRESSOBJ_FLUSH_FINISH))


def _zstd_whole(level: int, data) -> bytes:
    compressor = _ZSTD_WHOLE.get(level)
    if compressor is None:  # one per level and process: a worker compresses one whole body at a time
        compressor = _ZSTD_WHOLE[level] = zstandard.ZstdCompressor(compression_params=_zstd_params(level))
    return compressor.compress(data)


_ZSTD_PARAMS: dict[int, zstandard.ZstdCompressionParameters] = {}
_ZSTD_WHOLE: dict[int, zstandard.ZstdCompressor] = {}


def _zstd_params(level: int) -> zstandard.ZstdCompressionParameters:
    params = _ZSTD_PARAMS.get(level)
    if params is None:
        params = _ZSTD_PARAMS[level] = zstandard.ZstdCompressionParameters.from_level(
            level, window_log=ZSTD_WINDOW_LOG)
    return params


@dataclass(frozen=True, slots=True)
class Coding:
    """A content coding the proxy produces (RFC 9110 8.4.1)."""

    name: bytes
    levels: tuple[int, int]  # the lowest and highest level the library takes
    stream: Callable  # (level, length or None) -> (feed, flush, finish)
    whole: Callable  # (level, data) -> bytes


CODINGS = {coding.name: coding for coding in (
    Coding(b"zstd", (1, 19), _zstd_stream, _zstd_whole),  # RFC 8878
    Coding(b"br", (0, 11), _brotli_stream,
           lambda level, data: brotli.compress(data, quality=level, lgwin=BROTLI_LGWIN)),  # RFC 7932
    Coding(b"gzip", (1, 9), _gzip_stream, lambda level, data: zlib.compress(data, level, wbits=31)),  # RFC 1952
)}


class Encoder:
    """One body's encoder: ``feed`` bytes, ``flush`` what they made so far (the client can decode all
    it was sent), ``finish`` the stream. Each returns the bytes to send."""

    __slots__ = ("coding", "feed", "flush", "finish")

    def __init__(self, coding: bytes, level: int, length: int | None = None) -> None:
        self.coding = coding
        self.feed, self.flush, self.finish = CODINGS[coding].stream(level, length)

    def __repr__(self) -> str:
        return f"<Encoder {self.coding.decode()}>"


def encoder(coding: bytes, level: int, length: int | None = None) -> Encoder:
    """A new encoder for one body in pieces (``length``: its identity length when known)."""
    return Encoder(coding, level, length)


def compress(coding: bytes, level: int, data) -> bytes:
    """A whole body in one call."""
    return CODINGS[coding].whole(level, data)
