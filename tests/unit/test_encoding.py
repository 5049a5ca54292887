"""http/encoding.py without sockets: which coding a response gets, its rewritten head, the encoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

from proxy import config
from proxy.explain import build_request, parse
from proxy.http import encoding
from tests.helpers import decoder

CFG = config.from_dict({"upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
                        "routes": [{"prefix": "/", "upstream": "app"}]}, Path("/nonexistent/proxy.toml"))
POLICY = config.Compress()
JSON = [(b"content-type", b"application/json")]
BODY = json.dumps([{"id": i, "name": f"user {i}", "active": i % 3 == 0} for i in range(400)]).encode()


def head(method="GET", headers=()):
    """A request head as the server has it: parsed from bytes by the real parser."""
    return parse(CFG, build_request(method, "/x", list(headers), "127.0.0.1:8080"))


def decompress(coding: bytes, data: bytes) -> bytes:
    return decoder(coding.decode())(data)


ORDER = (b"zstd", b"br", b"gzip")


# --- Accept-Encoding ---------------------------------------------------------------

@pytest.mark.parametrize("header, chosen", [
    (b"gzip", b"gzip"),
    (b"GZIP", b"gzip"),
    (b"x-gzip", b"gzip"),  # RFC 9110 8.4.1.3
    (b"gzip, deflate, br, zstd", b"zstd"),  # a browser: equal weights, the server's order
    (b"gzip, br", b"br"),
    (b"br;q=0.5, gzip", b"gzip"),  # the client's weights first
    (b"br; q=0.9, gzip;Q=0.8", b"br"),
    (b"zstd;q=0, br;q=0, gzip;q=0.1", b"gzip"),
    (b"*", b"zstd"),
    (b"zstd;q=0, *", b"br"),  # * weighs what is not named; zstd is refused by name
    (b"*;q=0.5, gzip", b"gzip"),
    (b"gzip;q=0", None),  # q=0: not acceptable
    (b"*;q=0", None),
    (b"gzip;q=abc", None),  # not a q-value: not taken
    (b"gzip;q=2", None),  # out of range: not taken either
    (b"identity;q=1, gzip;q=0.5", None),  # identity weighted higher
    (b"identity;q=0.5, gzip;q=0.5", b"gzip"),  # a tie with identity goes to the coding
    (b"identity", None),
    (b"deflate, compress", None),  # nothing the proxy makes
    (b"", None),  # an empty value asks for identity (RFC 9110 12.5.3)
    (b" , ;q=1", None),
    (None, None),  # no header: identity, as nginx and Caddy do
])
def test_the_client_weights_decide_and_the_server_order_breaks_ties(header, chosen):
    assert encoding.negotiate(header, ORDER) == chosen


@pytest.mark.parametrize("header", [
    b"gzip;q=0.5;q=1", b";;;,,,", b"gzip;q=", b"gzip;q=-1", b"gzip;q=nan", b"gzip;q=inf", b"\xff\xfe, br",
    b"br" * 10000, b"gzip;q=0.9, " * 2000, b"identity;q=0, *;q=0",
])
def test_a_hostile_accept_encoding_is_read_without_error(header):
    chosen = encoding.negotiate(header, ORDER)
    assert chosen is None or chosen in ORDER


def test_the_server_order_is_configurable():
    assert encoding.negotiate(b"gzip, br, zstd", (b"gzip", b"br")) == b"gzip"
    assert encoding.negotiate(b"zstd", (b"gzip", b"br")) is None


# --- which responses are compressed -------------------------------------------------

def choose(headers=JSON, status=200, length=None, request=(), accept=b"gzip", policy=POLICY):
    return encoding.choose(policy, list(request), accept, status, list(headers), length)


@pytest.mark.parametrize("why, kwargs", [
    ("1xx", {"status": 103}),
    ("204", {"status": 204}),
    ("206", {"status": 206}),
    ("304", {"status": 304}),
    ("already encoded", {"headers": [*JSON, (b"content-encoding", b"br")]}),
    ("already encoded, even as identity", {"headers": [*JSON, (b"content-encoding", b"identity")]}),
    ("no-transform", {"headers": [*JSON, (b"cache-control", b"public, No-Transform")]}),
    ("client asks no-transform", {"request": [(b"cache-control", b"no-transform")]}),
    ("a Range request", {"request": [(b"range", b"bytes=0-9")]}),
    ("type not listed", {"headers": [(b"content-type", b"image/png")]}),
    ("no type at all", {"headers": []}),
    ("known length below min_length", {"length": 1023}),
])
def test_never_compressed(why, kwargs):
    assert choose(**kwargs) is False, why


@pytest.mark.parametrize("kwargs", [
    {"length": 1024},
    {"length": None},  # a stream of unknown length: always
    {"status": 404},
    {"status": 500},
    {"headers": [(b"content-type", b"text/html; charset=utf-8")]},
    {"headers": [(b"content-type", b"Application/JSON")]},
    {"headers": [(b"content-type", b"application/problem+json")]},
    {"headers": [(b"content-type", b"image/svg+xml")]},
    {"headers": [*JSON, (b"cache-control", b"max-age=60")]},
])
def test_compressed(kwargs):
    assert choose(**kwargs) == b"gzip"


def test_a_response_that_could_be_compressed_varies_even_when_this_client_takes_identity():
    assert choose(accept=None) is None
    assert choose(accept=b"identity") is None


@pytest.mark.parametrize("types, kind, matches", [
    (["*/*"], b"image/png", True),
    (["text/*"], b"text/event-stream", True),
    (["text/*"], b"textual/plain", False),
    (["application/*+json"], b"application/ld+json", True),
    (["application/*+json"], b"application/json", False),
    (["application/json"], b"application/json;charset=utf-8", True),
    (["application/json"], b"application/jsonx", False),
])
def test_types_take_wildcards(types, kind, matches):
    policy = config.Compress(types=tuple(types))
    assert encoding.media_matches(policy, kind) is matches


def test_a_route_table_changes_the_codings_min_length_and_types():
    policy = config.Compress(encodings=("br",), min_length=10, types=("text/csv",))
    assert choose(policy=policy, accept=b"gzip, br", headers=[(b"content-type", b"text/csv")], length=10) == b"br"
    assert choose(policy=policy, accept=b"gzip", headers=[(b"content-type", b"text/csv")]) is None
    assert choose(policy=policy, headers=JSON) is False


# --- the rewritten head ---------------------------------------------------------------

@pytest.mark.parametrize("vary, merged", [
    (None, b"Accept-Encoding"),
    (b"Cookie", b"Cookie, Accept-Encoding"),
    (b"cookie, accept-encoding", b"cookie, accept-encoding"),
    (b"*", b"*"),
])
def test_vary_is_merged_with_the_upstreams(vary, merged):
    headers = [*JSON, *([(b"vary", vary)] if vary else [])]
    for coding in (b"gzip", None):
        out = encoding.rewrite(headers, coding)
        assert [v for n, v in out if n == b"vary"] == [merged]


def test_several_vary_fields_are_one_list():
    two = [(b"vary", b"Cookie"), *JSON, (b"vary", b"Accept-Language")]
    assert encoding.rewrite(two, b"gzip")[::2] == [(b"vary", b"Cookie, Accept-Encoding"), (b"vary", b"Accept-Language")]
    named = [(b"vary", b"Cookie"), (b"vary", b"accept-encoding")]
    assert encoding.rewrite(named, None) == named


def test_a_compressed_head_has_a_weak_etag_no_length_no_ranges():
    headers = [*JSON, (b"etag", b'"v1"'), (b"content-length", b"5000"), (b"accept-ranges", b"bytes"),
               (b"cache-control", b"max-age=60")]
    out = encoding.rewrite(headers, b"br")
    assert out == [*JSON, (b"etag", b'W/"v1"'), (b"cache-control", b"max-age=60"), (b"vary", b"Accept-Encoding"),
                   (b"content-encoding", b"br")]
    assert (b"etag", b'W/"v1"') in encoding.rewrite([(b"etag", b'W/"v1"')], b"gzip")  # weak stays weak
    identity = encoding.rewrite(headers, None)
    assert identity == [*headers, (b"vary", b"Accept-Encoding")]  # identity: the same bytes, the strong tag


def test_begin_gives_an_encoder_and_drops_the_length():
    headers, length, encoder = encoding.begin(POLICY, head(headers=[("Accept-Encoding", "br")]), 200,
                                              [*JSON, (b"etag", b'"a"')], 5000)
    assert length is None and encoder.coding == b"br"
    assert (b"content-encoding", b"br") in headers and (b"etag", b'W/"a"') in headers


def test_a_head_request_gets_the_head_a_get_would_and_no_encoder():
    request = head("HEAD", [("Accept-Encoding", "gzip")])
    headers, length, encoder = encoding.begin(POLICY, request, 200, JSON, 5000)
    assert (length, encoder) == (None, None) and (b"content-encoding", b"gzip") in headers
    headers, length, body = encoding.complete(POLICY, request, 200, JSON, 5000, b"")
    assert (length, body) == (None, b"") and (b"content-encoding", b"gzip") in headers


def test_begin_leaves_other_answers_alone():
    request = head(headers=[("Accept-Encoding", "gzip")])
    png = [(b"content-type", b"image/png")]
    assert encoding.begin(POLICY, request, 200, png, 5000) == (png, 5000, None)
    ranged = head(headers=[("Accept-Encoding", "gzip"), ("Range", "bytes=0-1")])
    assert encoding.begin(POLICY, ranged, 200, JSON, 5000) == (JSON, 5000, None)


@pytest.mark.parametrize("coding", ORDER)
def test_complete_compresses_in_one_call_with_the_length_known(coding):
    request = head(headers=[("Accept-Encoding", coding.decode())])
    headers, length, body = encoding.complete(POLICY, request, 200, JSON, len(BODY), BODY)
    assert length == len(body) < len(BODY) // 3
    assert decompress(coding, body) == BODY
    assert dict(headers)[b"content-encoding"] == coding


def test_complete_leaves_a_small_body_alone():
    request = head(headers=[("Accept-Encoding", "gzip")])
    assert encoding.complete(POLICY, request, 200, JSON, 10, b"0123456789") == (JSON, 10, b"0123456789")


def test_a_304_for_a_compressed_body_keeps_the_tag_the_client_was_given():
    # The upstream compares If-None-Match weakly and answers with its own strong tag; the client
    # (and any cache) holds the compressed body under the weak one.
    request = head(headers=[("Accept-Encoding", "gzip"), ("If-None-Match", 'W/"v1"')])
    headers, _, _ = encoding.begin(POLICY, request, 304, [(b"etag", b'"v1"')], None)
    assert headers == [(b"etag", b'W/"v1"'), (b"vary", b"Accept-Encoding")]
    plain = head(headers=[("Accept-Encoding", "gzip"), ("If-None-Match", '"v1"')])
    assert encoding.begin(POLICY, plain, 304, [(b"etag", b'"v1"')], None)[0] == [(b"etag", b'"v1"')]


# --- the encoders ---------------------------------------------------------------------

@pytest.mark.parametrize("coding", ORDER)
def test_each_flushed_piece_decodes_at_once(coding):
    """What makes a compressed stream live: after each flush, the client can decode all it was sent."""
    encoder = encoding.encoder(coding, POLICY.levels[coding])
    decode = decoder(coding.decode())
    pieces = [b"data: event %d\n\n" % i for i in range(20)] + [BODY]
    for piece in pieces:
        assert decode(encoder.feed(piece) + encoder.flush()) == piece
    assert decode(encoder.finish()) == b""


@pytest.mark.parametrize("coding", ORDER)
def test_encoders_take_memoryviews(coding):
    # A static file is sent from a reused buffer, as memoryviews of it.
    view = memoryview(bytearray(BODY))[:5000]
    encoder = encoding.encoder(coding, 1 if coding != b"br" else 0)
    out = encoder.feed(view) + encoder.flush() + encoder.finish()
    assert decompress(coding, out) == BODY[:5000]
    assert decompress(coding, encoding.compress(coding, 1, view)) == BODY[:5000]


def test_zstd_records_a_known_length():
    frame = encoding.encoder(b"zstd", 3, len(BODY))
    data = frame.feed(BODY) + frame.finish()
    assert zstandard.frame_content_size(data) == len(BODY)
    assert zstandard.frame_content_size(encoding.compress(b"zstd", 3, BODY)) == len(BODY)


@pytest.mark.parametrize("coding", ORDER)
def test_every_level_in_range_works(coding):
    low, high = encoding.CODINGS[coding].levels
    for level in (low, high):
        assert decompress(coding, encoding.compress(coding, level, BODY[:3000])) == BODY[:3000]


def test_config_checks_codings_and_levels_against_the_encoders():
    assert set(config.COMPRESS_CODINGS) == {c.decode() for c in encoding.CODINGS}
    for name, level in config.COMPRESS_LEVELS:
        low, high = encoding.CODINGS[name.encode()].levels
        assert low <= level <= high
