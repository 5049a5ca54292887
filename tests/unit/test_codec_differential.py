"""Differential tests: llhttp and h11, fed the same bytes split the same way, must give the same outcome.

Two implementations, one oracle: each checks the other. For each generated
byte stream (valid requests, mutations of them, every corpus case), cut into
several ``feed`` calls and sometimes ended by EOF, both engines must produce
the same events: heads equal field by field, the same body bytes for each
message, or the same refusal status after the same events and in the same
read. The same for upstream responses, for GET and HEAD requests and for
requests that asked to upgrade.

Any difference is a bug in one of them, or a place where they differ by design;
rules.py then refuses the input for both (its docstring has the table).

How many examples: ``CODEC_DIFF_EXAMPLES`` (default 2000 per test, a few
seconds each). A deeper run, before changing codec.py or rules.py:

    CODEC_DIFF_EXAMPLES=100000 .venv/bin/python -m pytest tests/unit/test_codec_differential.py -q
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.config import Limits
from proxy.errors import ClientError, UpstreamError
from proxy.http import codec
from proxy.http.codec import CLOSED, NEED_DATA, PAUSED, Data, EndOfMessage, RequestHead
from tests.corpus import casefile

LIMITS = Limits(max_header_bytes=2048, max_request_line=400, max_headers=20, max_body_bytes=300)
EXAMPLES = int(os.environ.get("CODEC_DIFF_EXAMPLES", "2000"))
DIFF = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CORPUS = {name: casefile.load(name).data for name in casefile.names()}


# --- driving one engine -----------------------------------------------------------------

def reads_of(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:])] or [b""]


def drive(parser, reads: list[bytes], error: type, paused) -> list:
    """Feed ``reads`` and record the outcome: each head (field by field), ("end", body) per
    message, "closed", or ("refused", status, read number, body so far). ``paused(parser,
    head, out)`` handles PAUSED: True to go on with the next message."""
    out: list = []
    body = b""
    head = None
    for number, chunk in enumerate(reads):
        parser.feed(chunk)
        try:
            while True:
                event = parser.next_event()
                if event is NEED_DATA:
                    break
                if type(event) is Data:
                    body += event.data
                elif event is EndOfMessage:
                    out.append(("end", body))
                    body = b""
                elif event is PAUSED:
                    if not paused(parser, head, out):
                        return out
                elif event is CLOSED:
                    out.append("closed")
                    return out
                else:
                    head = event
                    out.append(tuple(event))
        except error as exc:
            out.append(("refused", exc.status, number, body))
            return out
    return out


def next_request(parser, head: RequestHead, out: list) -> bool:
    if head.keep_alive:
        parser.start_next_cycle()
    return head.keep_alive


def request_outcome(engine: str, data: bytes, cuts: list[int], eof: bool, limits: Limits = LIMITS) -> list:
    """What a client connection yields, answering each request that keeps the connection open."""
    reads = reads_of(data, cuts) + ([b""] if eof else [])
    return drive(codec.request_parser(engine, limits), reads, ClientError, next_request)


def reusable(parser, head, out: list) -> bool:
    out.append(("reusable", parser.reusable))
    return False


def response_outcome(engine: str, data: bytes, cuts: list[int], eof: bool, method: bytes,
                     upgrade: bool) -> list:
    """What an upstream connection yields for one request: 1xx, the head, the body, reusable."""
    parser = codec.response_parser(engine)
    parser.expect(method, upgrade)
    return drive(parser, reads_of(data, cuts) + ([b""] if eof else []), UpstreamError, reusable)


def same_requests(data: bytes, cuts: list[int], eof: bool, limits: Limits = LIMITS) -> list:
    reference = request_outcome("h11", data, cuts, eof, limits)
    fast = request_outcome("llhttp", data, cuts, eof, limits)
    assert fast == reference, data
    return reference


def same_responses(data: bytes, cuts: list[int], eof: bool, method: bytes, upgrade: bool) -> list:
    reference = response_outcome("h11", data, cuts, eof, method, upgrade)
    fast = response_outcome("llhttp", data, cuts, eof, method, upgrade)
    assert fast == reference, data
    return reference


# --- generators --------------------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
METHODS = [b"GET", b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH", b"PROPFIND", b"M-SEARCH",
           b"QUERY", b"TRACE", b"CONNECT", b"PRI", b"FOO", b"get", b"X_Y"]
TARGETS = [b"/", b"/a/b?x=1", b"/caf%C3%A9", b"/x%2Fy", b"http://example.com/p?q", b"https://h:8443", b"http://h?q",
           b"*", b"/a#f", b"//x", b"/a?b?c", b"/%zz", b"example.com:80", b"/\"<>{}|\\^`", b"/~!$&'()*+,;=:@",
           b"http://a@b/", b"http://[::1]:80/x", b"http://h:99999/", b"http://%41b/", b"HTTP://H/", b"http:/x",
           b"h2://x/", b"*x", b"/a%2", b"/..", b"/a/./b", b"http://a b/", b"http://h#f", b"/a?#"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9"]
NAMES = [b"Accept", b"User-Agent", b"Connection", b"Upgrade", b"Expect", b"Content-Length", b"Transfer-Encoding",
         b"Host", b"X_Forwarded_For", b"Trailer", b"TE", b"Keep-Alive", b"Cookie", b"X-Custom"]
VALUES = [b"*/*", b"close", b"keep-alive", b"upgrade", b"Upgrade, HTTP2-Settings", b"websocket", b"h2c",
          b"100-continue", b"5", b"0", b"chunked", b"gzip, chunked", b"chunked, gzip", b",chunked", b"caf\xe9",
          b"a=b; c=d", b"", b"  padded  ", b"x\ty", b"+5", b"005", b"5, 5", b"-1", b"1" * 21,
          b"18446744073709551616", b"18446744073709551615", b"chunked,", b"identity", b"CHUNKED"]
SPECIAL = b"\r\n\x00 \t\x01\x0b\x0c\x1f\x7f\x80\xff:;=\",#?/\\"

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=8).map(str.encode)
quoted = st.binary(max_size=6).map(lambda b: b'"' + b.replace(b'"', b"").replace(b"\\", b"") + b'"')


@st.composite
def chunked_body(draw, payload: bytes) -> bytes:
    out = b""
    rest = payload
    while rest:
        size = draw(st.integers(1, max(1, len(rest))))
        part, rest = rest[:size], rest[size:]
        extensions = b""
        for _ in range(draw(st.integers(0, 2))):
            extensions += b";" + draw(tokens)
            if draw(st.booleans()):
                extensions += b"=" + draw(st.one_of(tokens, quoted))
        digits = draw(st.sampled_from([b"%x", b"%X", b"%02x", b"%018x"])) % len(part)
        out += digits + extensions + b"\r\n" + part + b"\r\n"
    out += b"0" + draw(st.sampled_from([b"", b";last"])) + b"\r\n"
    for _ in range(draw(st.integers(0, 2))):
        out += draw(st.sampled_from([b"X-Sum", b"Server-Timing", b"Content-Length", b"Host"])) + b": 1\r\n"
    return out + b"\r\n"


@st.composite
def framed(draw, kinds: list[str], codings: list[bytes]) -> tuple[list, bytes]:
    """(framing fields, body) of one of ``kinds``: none, length, chunked, both, close."""
    payload = draw(st.binary(max_size=40))
    kind = draw(st.sampled_from(kinds))
    fields = []
    body = payload if kind == "close" else b""
    if kind in ("length", "both"):
        fields.append((b"Content-Length", b"%d" % len(payload)))
        body = payload
    if kind in ("chunked", "both"):
        fields.append((b"Transfer-Encoding", draw(st.sampled_from(codings))))
        body = draw(chunked_body(payload))
    return fields, body


@st.composite
def valid_requests(draw) -> bytes:
    method = draw(st.sampled_from(METHODS))
    version = draw(st.sampled_from(VERSIONS))
    line = method + b" " + draw(st.sampled_from(TARGETS)) + b" " + version + b"\r\n"
    fields = []
    if draw(st.integers(0, 9)):
        fields.append((b"Host", draw(st.sampled_from([b"example.com", b"h:8080", b"[::1]", b"", b"a..b", b"a b"]))))
    framing, body = draw(framed(["none", "none", "length", "chunked", "both"],
                                [b"chunked", b"chunked", b"Chunked", b" chunked", b"gzip, chunked",
                                 b"chunked, chunked"]))
    fields += framing
    for _ in range(draw(st.integers(0, 6))):
        fields.append((draw(st.one_of(st.sampled_from(NAMES), tokens)), draw(st.sampled_from(VALUES))))
    if draw(st.booleans()):
        fields.append((b"Connection", draw(st.sampled_from([b"upgrade", b"close", b"keep-alive", b"Upgrade, close",
                                                           b"TE, x-custom"]))))
        fields.append((b"Upgrade", draw(st.sampled_from([b"websocket", b"h2c", b"foo/2"]))))
    fields = draw(st.permutations(fields))
    head = line + b"".join(name + b":" + draw(st.sampled_from([b" ", b"", b"\t", b"  "])) + value + b"\r\n"
                           for name, value in fields)
    return head + b"\r\n" + body


@st.composite
def mutated(draw, base) -> bytes:
    """``base`` with a few bytes flipped, inserted or deleted, or a line repeated or moved."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        kind = draw(st.integers(0, 5))
        if kind == 0:
            data[where] = draw(st.integers(0, 255))
        elif kind in (1, 2):
            data[where:where] = bytes([draw(st.sampled_from(SPECIAL))])
        elif kind == 3:
            del data[where]
        else:
            lines = bytes(data).split(b"\r\n")
            if len(lines) > 2:
                i = draw(st.integers(1, len(lines) - 1))
                j = draw(st.integers(1, len(lines) - 1))
                if kind == 4:
                    lines.insert(j, lines[i])
                else:
                    lines.insert(j, lines.pop(i))
                data = bytearray(b"\r\n".join(lines))
    return bytes(data)


pipelines = st.lists(valid_requests(), min_size=1, max_size=3).map(b"".join)
request_streams = st.one_of(
    pipelines,
    mutated(pipelines),
    mutated(pipelines),
    st.sampled_from(sorted(CORPUS)).map(CORPUS.get),
    mutated(st.sampled_from(sorted(CORPUS)).map(CORPUS.get)),
    st.binary(max_size=200),
)
cuts = st.lists(st.integers(0, 600), max_size=6)


@st.composite
def valid_responses(draw) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 2))):
        out += draw(st.sampled_from([b"HTTP/1.1 100 Continue\r\n\r\n",
                                     b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]))
    status = draw(st.sampled_from([200, 200, 201, 204, 301, 304, 404, 500, 101, 102, 199, 600, 99]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0"]))
    reason = draw(st.sampled_from([b"OK", b"", b"Not Found", b"caf\xe9", b"A\tB"]))
    line = version + b" %d" % status + (b" " + reason if draw(st.integers(0, 5)) else b"") + b"\r\n"
    fields = [(b"Server", b"gunicorn"), (b"Content-Type", b"application/json")]
    if status == 101 and draw(st.integers(0, 3)):
        fields += [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    framing, body = draw(framed(["length", "length", "chunked", "close", "both"],
                                [b"chunked", b"chunked", b"gzip, chunked"]))
    fields += framing
    for _ in range(draw(st.integers(0, 4))):
        fields.append((draw(st.one_of(st.sampled_from(NAMES), tokens)), draw(st.sampled_from(VALUES))))
    fields = draw(st.permutations(fields))
    head = line + b"".join(name + b": " + value + b"\r\n" for name, value in fields)
    return out + head + b"\r\n" + body + draw(st.sampled_from([b"", b"", b"HTTP/1.1 200 OK\r\n\r\n"]))


response_streams = st.one_of(valid_responses(), mutated(valid_responses()), mutated(valid_responses()),
                             st.binary(max_size=120))


# --- the properties ------------------------------------------------------------------------

@DIFF
@given(data=request_streams, cuts=cuts, eof=st.booleans())
@example(data=b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", cuts=[], eof=False)
def test_both_engines_read_requests_the_same(data, cuts, eof):
    same_requests(data, cuts, eof)


@DIFF
@given(data=response_streams, cuts=cuts, eof=st.booleans(), method=st.sampled_from([b"GET", b"HEAD", b"POST"]),
       upgrade=st.booleans())
def test_both_engines_read_responses_the_same(data, cuts, eof, method, upgrade):
    same_responses(data, cuts, eof, method, upgrade)


# The corpus proxy's limits (tests/corpus/test_corpus.py): the defaults, and a 64k body.
CORPUS_LIMITS = Limits(max_body_bytes=64 * 1024)


def without_reads(outcome: list) -> list:
    """An outcome without what depends on the cuts: the read a refusal came in, and how much
    of the refused message's body had been handed out before it."""
    return [item[:2] if item[0] == "refused" else item for item in outcome]


def test_every_corpus_case_gives_the_same_outcome_on_both_engines():
    """Each case in one read and byte by byte, with the client's EOF after it: the same on both
    engines whatever the reads, and, where the case ends with a refusal, the corpus's status."""
    checked = 0
    for name, data in CORPUS.items():
        whole = same_requests(data, [], True, CORPUS_LIMITS)
        assert without_reads(same_requests(data, list(range(len(data))), True, CORPUS_LIMITS)) == without_reads(whole)
        statuses = casefile.load(name).expect.statuses
        if whole[-1][0] == "refused":
            assert statuses and whole[-1][1] == statuses[-1], (name, whole[-1], statuses)
            checked += 1
    assert checked > 100  # most cases are refusals: the loop above did compare statuses
