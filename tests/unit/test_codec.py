"""codec.py without sockets: both engines, fed bytes, must behave the same; the writer against h11."""

from __future__ import annotations

import h11
import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import Limits
from proxy.errors import ClientError, UpstreamError
from proxy.http import codec, rules
from proxy.http.codec import (CLOSED, NEED_DATA, PAUSED, Data, EndOfMessage, Informational, RequestHead,
                              ResponseHead)
from tests import bad_responses
from tests.bad_responses import GOOD

SMALL = Limits(max_header_bytes=1024, max_request_line=256, max_headers=10, max_body_bytes=100)
ENGINES = sorted(codec.ENGINES)


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


def request(*headers: str, line: str = "GET /a/b?x=1 HTTP/1.1", body: bytes = b"") -> bytes:
    return (line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode("latin-1") + body


def run(engine: str, data: bytes, limits: Limits = SMALL, pieces: int = 0, eof: bool = False) -> list:
    """Feed ``data`` (at once, or in pieces), answer each request, and return every event but NEED_DATA.

    A refusal ends the list with the ClientError."""
    parser = codec.request_parser(engine, limits)
    reads = [data[i:i + pieces] for i in range(0, len(data), pieces)] if pieces else [data]
    if eof:
        reads.append(b"")
    out: list = []
    try:
        for chunk in reads:
            parser.feed(chunk)
            while True:
                event = parser.next_event()
                if event is NEED_DATA:
                    break
                out.append(event)
                if event is CLOSED:
                    return out
                if event is PAUSED:
                    parser.start_next_cycle()
    except ClientError as exc:
        out.append(exc)
    return out


def refused(engine: str, data: bytes, limits: Limits = SMALL, pieces: int = 0, eof: bool = False) -> ClientError:
    events = run(engine, data, limits, pieces, eof)
    assert isinstance(events[-1], ClientError), events
    return events[-1]


def head_of(engine: str, data: bytes, limits: Limits = SMALL) -> RequestHead:
    events = run(engine, data, limits)
    assert type(events[0]) is RequestHead, events
    return events[0]


def test_a_plain_request(engine):
    head = head_of(engine, request("Host: example.com", "Accept: */*", "X-Mixed-Case: Value  "))
    assert (head.method, head.target, head.path, head.query, head.host) == (
        b"GET", b"/a/b?x=1", "/a/b", b"x=1", b"example.com")
    assert head.headers == [(b"host", b"example.com"), (b"accept", b"*/*"), (b"x-mixed-case", b"Value")]
    assert (head.has_body, head.content_length, head.expect_continue, head.keep_alive, head.upgrade) == (
        False, None, False, True, None)
    assert head.request_line == "GET /a/b?x=1 HTTP/1.1"


def test_events_of_a_body(engine):
    events = run(engine, request("Host: h", "Content-Length: 5", line="POST / HTTP/1.1", body=b"hello"))
    assert [type(e) for e in events] == [RequestHead, Data, type(EndOfMessage), type(PAUSED)]
    assert events[1].data == b"hello" and events[2] is EndOfMessage


KEEP_ALIVE = [
    ("GET / HTTP/1.1", None, True),
    ("GET / HTTP/1.1", "close", False),
    ("GET / HTTP/1.1", "Keep-Alive, Close", False),
    ("GET / HTTP/1.0", None, False),
    ("GET / HTTP/1.0", "keep-alive", True),
    ("GET / HTTP/1.2", None, True),  # a higher minor version is processed as 1.1 (RFC 9110 2.5)
]


@pytest.mark.parametrize("line, connection, keep_alive", KEEP_ALIVE)
def test_keep_alive(engine, line, connection, keep_alive):
    headers = ["Host: h"] + ([f"Connection: {connection}"] if connection else [])
    assert head_of(engine, request(*headers, line=line)).keep_alive is keep_alive


REQUEST_LINE_REFUSALS = [
    ("GET / HTTP/2.0", 505),
    ("GET / HTTP/0.9", 505),
    ("GET / HTTP/9.1", 505),
    ("GET  / HTTP/2.0", 505),  # the version is judged first, whatever else is wrong
    ("get / HTTP/1.1", 400),
    ("GET2 / HTTP/1.1", 400),
    ("G\tET / HTTP/1.1", 400),
    ("GET  / HTTP/1.1", 400),
    ("GET / http/1.1", 400),
    ("GET / HTTP/1.10", 400),
    ("GET / RTSP/1.0", 400),
    ("GET /", 400),
    ("GET /a#frag HTTP/1.1", 400),
    ("GET a/b HTTP/1.1", 400),
    ("GET /caf\xe9 HTTP/1.1", 400),
    ("GET * HTTP/1.1", 400),
    ("GET /%zz HTTP/1.1", 400),
    ("GET /a/%2e%2e/%2e%2e/b HTTP/1.1", 400),  # climbs above /
    ("GET example.com:80 HTTP/1.1", 400),
    ("TRACE / HTTP/1.1", 405),
    ("CONNECT example.com:443 HTTP/1.1", 405),
    ("CONNECT / HTTP/1.1", 405),
    ("FOO / HTTP/1.1", 501),
    ("X_CUSTOM / HTTP/1.1", 501),
    ("PRI * HTTP/1.1", 501),
]


@pytest.mark.parametrize("line, status", REQUEST_LINE_REFUSALS)
def test_request_line_refusals(engine, line, status):
    assert refused(engine, request("Host: h", line=line)).status == status


@pytest.mark.parametrize("method", sorted(rules.KNOWN_METHODS - rules.REFUSED_METHODS))
def test_every_known_method_passes(engine, method):
    assert head_of(engine, request("Host: h", line=f"{method.decode()} / HTTP/1.1")).method == method


def test_known_methods_are_llhttps():
    """rules.KNOWN_METHODS is what the installed llhttp accepts, no more, no less (of these candidates)."""
    candidates = rules.KNOWN_METHODS | {b"PRI", b"DESCRIBE", b"SETUP", b"PLAY", b"FOO", b"GETS", b"X_CUSTOM",
                                        b"GET_PARAMETER", b"FLUSH", b"RECORD"}
    accepted = set()
    for method in candidates:
        parser = httptools.HttpRequestParser(object())
        try:
            parser.feed_data(method + b" / HTTP/1.1\r\nHost: h\r\n\r\n")
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            continue
        accepted.add(method)
    assert accepted - {b"PRI"} == rules.KNOWN_METHODS  # PRI waits for the HTTP/2 preface


FIELD_REFUSALS = [
    (["Host: h", "Content-Length: 1", "Transfer-Encoding: chunked"], 400),
    (["Host: h", "Transfer-Encoding: chunked", "Content-Length: 1"], 400),
    (["Host: h", "Content-Length: 1", "Content-Length: 2"], 400),
    (["Host: h", "Content-Length: 1", "Content-Length: 1"], 400),  # RFC 9110 8.6 allows refusing; llhttp does
    (["Host: h", "Content-Length: 1, 1"], 400),
    (["Host: h", "Content-Length: +1"], 400),
    (["Host: h", "Content-Length: "], 400),
    (["Host: h", "Content-Length: 18446744073709551616"], 400),  # 2**64: llhttp overflows
    (["Host: h", "Content-Length: 000000000000000000001"], 400),  # 21 digits: h11's limit
    (["Host: h", "Content-Length: 101"], 413),
    (["Host: h", "Transfer-Encoding: gzip"], 400),  # chunked not final: RFC 9112 6.3 rule 4
    (["Host: h", "Transfer-Encoding: chunked, gzip"], 400),
    (["Host: h", "Transfer-Encoding: chunked,"], 400),
    (["Host: h", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"], 400),
    (["Host: h", "Transfer-Encoding: "], 400),
    (["Host: h", "Transfer-Encoding: ", "Transfer-Encoding: chunked"], 400),  # llhttp: empty Transfer-Encoding
    (["Host: h", "Transfer-Encoding: gzip, chunked"], 501),  # a coding we do not implement: 6.1
    (["Host: h", "Transfer-Encoding: ,chunked"], 501),
    (["Host: h", "Transfer-Encoding: gzip", "Transfer-Encoding: chunked"], 501),
    (["Host: h", "Transfer-Encoding: gzip, chunked", "Expect: nothing"], 501),  # the whole head decides
    (["Host: h", "Transfer-Encoding: gzip, chunked", "X\x01: y"], 400),
    (["Host: h", "Connection: content-length"], 400),
    (["Host: h", "Connection: keep-alive, Transfer-Encoding"], 400),
    (["Host: h", "Connection: HOST"], 400),
    (["Host: h", "X-Ctl: a\x01b"], 400),
    (["Host: h", "X-Ctl: a\x7f"], 400),
    (["Host: h", "X-Nul: a\x00b"], 400),
    (["Host: h", "X-Cr: a\rb"], 400),
    (["Host: h", "X ws: v"], 400),
    (["Host : h"], 400),
    (["Host: h", "Expect: something-else"], 417),
    ([], 400),  # HTTP/1.1 without Host
    (["Host: a", "Host: b"], 400),
    (["Host: a b"], 400),
    (["Host: user@h"], 400),
    (["Host: a/b"], 400),
    (["Host: a..b"], 400),
    (["Host: h:port"], 400),
]


@pytest.mark.parametrize("headers, status", FIELD_REFUSALS)
def test_field_refusals(engine, headers, status):
    assert refused(engine, request(*headers, line="POST / HTTP/1.1")).status == status


def test_transfer_encoding_in_http10_is_400(engine):
    assert refused(engine, request("Transfer-Encoding: chunked", line="POST / HTTP/1.0")).status == 400


BARE_LF_AND_OBS_FOLD = [
    b"GET / HTTP/1.1\nHost: h\n\n",
    b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n\n",
]


@pytest.mark.parametrize("raw", BARE_LF_AND_OBS_FOLD)
def test_bare_lf_and_obs_fold_are_400(engine, raw):
    assert refused(engine, raw).status == 400


def test_names_with_underscores_are_dropped(engine):
    head = head_of(engine, request("Host: h", "X_Forwarded_For: 6.6.6.6", "Content_Length: 5", "X-Ok: 1"))
    assert head.headers == [(b"host", b"h"), (b"x-ok", b"1")]
    assert head.has_body is False


def test_obs_text_in_a_value_passes(engine):
    assert head_of(engine, request("Host: h", "X-Name: caf\xe9")).get(b"x-name") == b"caf\xe9"


def test_expect_100_continue(engine):
    head = head_of(engine, request("Host: h", "Expect: 100-Continue", "Content-Length: 5", line="POST / HTTP/1.1"))
    assert head.expect_continue and head.content_length == 5 and head.has_body


def test_absolute_form_and_asterisk(engine):
    head = head_of(engine, request("Host: other", line="GET http://example.com:8080/p?q HTTP/1.1"))
    assert (head.target, head.host, head.path) == (b"/p?q", b"example.com:8080", "/p")
    head = head_of(engine, request("Host: h", line="OPTIONS * HTTP/1.1"))
    assert (head.target, head.path) == (b"*", "*")


# --- limits, to the byte, in one read or many ------------------------------------------

def line_of(length: int) -> str:
    """A request line of ``length`` bytes, CRLF excluded."""
    return "GET /" + "a" * (length - len("GET / HTTP/1.1")) + " HTTP/1.1"


@pytest.mark.parametrize("pieces", [0, 1, 7, 100])
def test_request_line_limit_to_the_byte(engine, pieces):
    # The LF may be at index max_request_line (the CR included in the line): 255 bytes + CR pass.
    assert type(run(engine, request("Host: h", line=line_of(255)), pieces=pieces)[0]) is RequestHead
    assert refused(engine, request("Host: h", line=line_of(256)), pieces=pieces).status == 414


def test_request_line_over_the_limit_before_it_ends_is_414(engine):
    assert refused(engine, line_of(257).encode()).status == 414
    assert run(engine, line_of(256).encode()) == []  # not yet certain: the CR may follow


def padded(size: int) -> bytes:
    """A complete request head of exactly ``size`` bytes."""
    base = request("Host: h", "X-Pad: ")
    return request("Host: h", "X-Pad: " + "p" * (size - len(base)))


@pytest.mark.parametrize("pieces", [0, 1, 50])
def test_head_limit_to_the_byte(engine, pieces):
    assert type(run(engine, padded(1024), pieces=pieces)[0]) is RequestHead
    assert refused(engine, padded(1025), pieces=pieces).status == 431


def test_an_endless_head_is_431_before_it_ends(engine):
    trickle = request("Host: h")[:-2] + b"X-Long: " + b"a" * 1024
    assert refused(engine, trickle, pieces=10).status == 431


def test_too_many_header_fields_is_431(engine):
    assert refused(engine, request("Host: h", *[f"X-{i}: v" for i in range(10)])).status == 431
    assert head_of(engine, request("Host: h", *[f"X-{i}: v" for i in range(9)])).method == b"GET"


def chunked(body: bytes) -> bytes:
    return request("Host: h", "Transfer-Encoding: chunked", line="POST / HTTP/1.1") + body


def body_of(events: list) -> bytes:
    return b"".join(e.data for e in events if type(e) is Data)


@pytest.mark.parametrize("pieces", [0, 1, 3])
def test_a_chunked_body_is_read(engine, pieces):
    events = run(engine, chunked(b"5;name=value;x=\"q\\\"s\"\r\nhello\r\n1;a\r\n!\r\n0\r\nX-Sum: 1\r\n\r\n"),
                 pieces=pieces)
    assert type(events[0]) is RequestHead and events[0].has_body and events[0].content_length is None
    assert body_of(events) == b"hello!"
    assert events[-2:] == [EndOfMessage, PAUSED]


def test_streamed_body_over_the_limit_is_413(engine):
    assert refused(engine, chunked(b"40\r\n" + b"a" * 64 + b"\r\n40\r\n" + b"b" * 64 + b"\r\n0\r\n\r\n")).status == 413


def test_a_declared_chunk_over_the_limit_is_413_before_its_data_arrives(engine):
    assert refused(engine, chunked(b"ffffffff\r\nabc")).status == 413
    assert refused(engine, chunked(b"65\r\n")).status == 413  # 101 bytes announced, none sent
    assert refused(engine, chunked(b"10000000000000000\r\n")).status == 413  # 2**64
    assert refused(engine, chunked(b"00000000000000000001\r\n")).status == 400  # 20 digits: not what a size is


def test_a_chunk_of_exactly_the_limit_passes(engine):
    events = run(engine, chunked(b"64\r\n" + b"a" * 100 + b"\r\n0\r\n\r\n"))
    assert events[-2] is EndOfMessage and len(body_of(events)) == 100


@pytest.mark.parametrize("body", [
    b"3\nabc\n0\n\n",  # bare LF line ends: h11 alone would wait for a CRLF until the body timeout
    b"3\r\nabc\n0\r\n\r\n",
    b"3\r\nabc\r\n0\r\n\n",
    b"5;a\rb\r\nhello\r\n0\r\n\r\n",  # a bare CR in a chunk extension (nginx refuses it, h11 does not)
    b"5\r\r;ABCD\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"5 ;a\r\nhello\r\n0\r\n\r\n",  # BWS: RFC 9112 7.1.1 has it, llhttp and h11 refuse it, no client sends it
    b"5; a\r\nhello\r\n0\r\n\r\n",
    b"5;\r\nhello\r\n0\r\n\r\n",
    b"5;a=\r\nhello\r\n0\r\n\r\n",
    b"5;a=\"b\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"0\r\nX: a\rb\r\n\r\n",
    b"0\r\nX : b\r\n\r\n",
    b"0\r\nX: b\r\n c\r\n\r\n",
])
def test_malformed_chunked_bodies_are_400_at_once(engine, body):
    assert refused(engine, chunked(body)).status == 400


@pytest.mark.parametrize("trailer", [b"Content-Length: 5", b"Transfer-Encoding: chunked", b"Host: x",
                                     b"Connection: close", b"Trailer: x"])
def test_trailers_with_framing_fields_are_400(engine, trailer):
    assert refused(engine, chunked(b"0\r\n" + trailer + b"\r\n\r\n")).status == 400


def test_an_endless_chunk_line_or_trailer_is_431(engine):
    assert refused(engine, chunked(b"1;a=" + b"b" * 1100), pieces=100).status == 431
    assert refused(engine, chunked(b"0\r\n" + b"X: y\r\n" * 200), pieces=100).status == 431


# --- across reads and requests ---------------------------------------------------------

def test_empty_lines_before_a_request_are_skipped(engine):
    parser = codec.request_parser(engine, SMALL)
    parser.feed(b"\r\n")  # alone: must not look like the client's EOF
    assert parser.next_event() is NEED_DATA and not parser.head_started
    parser.feed(b"\n\r\nGET / HTTP/1.1\r\n")
    assert parser.next_event() is NEED_DATA and parser.head_started
    parser.feed(b"Host: h\r\n\r\n")
    assert type(parser.next_event()) is RequestHead


def test_an_empty_line_after_a_body_is_skipped(engine):
    # RFC 9112 2.2: old clients send CRLF after a POST body; the next request must still parse.
    events = run(engine, request("Host: h", "Content-Length: 2", line="POST / HTTP/1.1", body=b"ok\r\n\r\n")
                 + request("Host: h", line="GET /next HTTP/1.1") + b"\r\n", eof=True)
    assert [e.path for e in events if type(e) is RequestHead] == ["/", "/next"]
    assert events[-1] is CLOSED


def test_pipelined_requests_wait_for_start_next_cycle(engine):
    parser = codec.request_parser(engine, SMALL)
    parser.feed(request("Host: h", line="GET /one HTTP/1.1") + request("Host: h", line="get /two HTTP/1.1"))
    assert parser.next_event().path == "/one"
    assert parser.next_event() is EndOfMessage
    assert parser.next_event() is PAUSED and parser.next_event() is PAUSED
    assert parser.requests == 1 and parser.head_started
    parser.start_next_cycle()
    with pytest.raises(ClientError) as info:  # the error in the second request comes only now
        parser.next_event()
    assert info.value.status == 400 and parser.requests == 2
    with pytest.raises(ClientError):  # and stays
        parser.next_event()
    assert repr(parser).startswith("<RequestParser ")


def test_the_head_limit_applies_to_each_request_on_its_own(engine):
    small = padded(1000)
    events = run(engine, small + small)
    assert [type(e) for e in events].count(RequestHead) == 2


def test_a_split_head_is_checked_as_a_whole(engine):
    raw = request("Host: h", "X-A: 1", "X-B: 2")
    events = run(engine, raw, pieces=1)
    assert events[0].get(b"x-b") == b"2"


def test_eof(engine):
    assert refused(engine, b"GET / HTTP/1.1\r\nHost", eof=True).status == 400
    assert refused(engine, request("Host: h", "Content-Length: 5", line="POST / HTTP/1.1", body=b"ab"),
                   eof=True).status == 400
    assert refused(engine, chunked(b"5\r\nab"), eof=True).status == 400
    assert run(engine, b"\r\n", eof=True) == [CLOSED]
    assert run(engine, request("Host: h"), eof=True)[-1] is CLOSED


def test_an_upgrade_hands_over_what_follows(engine):
    parser = codec.request_parser(engine, SMALL)
    parser.feed(request("Host: h", "Connection: Upgrade", "Upgrade: websocket") + b"\x81\x05hello")
    head = parser.next_event()
    assert head.upgrade == b"websocket"
    assert parser.next_event() is EndOfMessage and parser.next_event() is PAUSED
    assert parser.take_trailing() == b"\x81\x05hello"
    with pytest.raises(RuntimeError):
        parser.next_event()


def test_an_upgrade_that_was_refused_goes_on_as_http(engine):
    events = run(engine, request("Host: h", "Connection: upgrade", "Upgrade: h2c", "Content-Length: 2", body=b"ok")
                 + request("Host: h", line="GET /next HTTP/1.1"))
    assert events[0].upgrade == b"h2c" and body_of(events) == b"ok"
    assert events[4].path == "/next"


def test_no_upgrade_in_http10_or_without_connection(engine):
    assert head_of(engine, request("Connection: upgrade", "Upgrade: websocket", line="GET / HTTP/1.0")).upgrade is None
    assert head_of(engine, request("Host: h", "Upgrade: websocket")).upgrade is None


# --- responses ----------------------------------------------------------------------

BAD = {
    **bad_responses.BAD,
    "te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "ctl-in-reason": b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok",
    "version-2.0": b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "rtsp": b"RTSP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "leading-crlf": b"\r\n" + GOOD,
    "1xx-with-length": b"HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\nok" + GOOD,
    "chunk-bare-lf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
    "chunk-trailer-length": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 1\r\n\r\n",
    "chunk-size-huge": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
}


def exchange(engine: str, response: bytes, method: bytes = b"GET", upgrade: bool = False,
             eof: bool = False) -> tuple[codec.ResponseParser, list]:
    parser = codec.response_parser(engine)
    parser.expect(method, upgrade)
    parser.feed(response)
    if eof:
        parser.feed(b"")
    events = []
    while True:
        event = parser.next_event()
        events.append(event)
        if event is NEED_DATA or event is PAUSED:
            return parser, events


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_responses_are_502(engine, name):
    with pytest.raises(UpstreamError) as info:
        exchange(engine, BAD[name], eof=True)
    assert info.value.status == 502


def test_a_clean_response_and_the_next(engine):
    parser, events = exchange(engine, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                              + GOOD)
    assert events[:2] == [Informational(100, []), Informational(103, [(b"link", b"</a>")])]
    assert events[2] == ResponseHead(200, b"OK", b"1.1", [(b"content-length", b"4")], 4, False, True)
    assert events[3:] == [Data(b"good"), EndOfMessage, PAUSED]
    assert parser.reusable
    parser.start_next_cycle()
    parser.expect(b"GET")
    parser.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert parser.next_event().status == 204 and parser.next_event() is EndOfMessage
    assert repr(parser).startswith("<ResponseParser ")


def test_bytes_beyond_the_declared_length_make_it_not_reusable(engine):
    parser, events = exchange(engine, GOOD + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON")
    assert events[-2] is EndOfMessage and body_of(events) == b"good"
    assert not parser.reusable


@pytest.mark.parametrize("status, headers, method, length, kept", [
    (204, b"Content-Length: 0\r\n", b"GET", None, []),  # RFC 9110 8.6: a 204 MUST NOT carry it
    (304, b"Content-Length: 10\r\n", b"GET", 10, [(b"content-length", b"10")]),  # 15.4.5: the 200's length
    (200, b"Content-Length: 10\r\n", b"HEAD", 10, [(b"content-length", b"10")]),
    (200, b"Transfer-Encoding: chunked\r\n", b"HEAD", None, [(b"transfer-encoding", b"chunked")]),
])
def test_responses_without_a_body(engine, status, headers, method, length, kept):
    parser, events = exchange(engine, b"HTTP/1.1 %d X\r\n%s\r\n" % (status, headers), method)
    head = events[0]
    assert (head.status, head.content_length, head.headers, head.chunked) == (status, length, kept, False)
    assert events[1:] == [EndOfMessage, PAUSED] and parser.reusable


def test_a_close_delimited_body_ends_at_eof(engine):
    parser, events = exchange(engine, b"HTTP/1.1 200 OK\r\n\r\nall of it")
    assert events == [events[0], Data(b"all of it"), NEED_DATA]
    parser.feed(b"")
    assert parser.next_event() is EndOfMessage and not parser.reusable


def test_a_chunked_response_with_trailers(engine):
    parser, events = exchange(engine, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"4\r\ngood\r\n0\r\nServer-Timing: a\r\n\r\n")
    assert events[0].chunked and body_of(events) == b"good" and parser.reusable


@pytest.mark.parametrize("response", [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                                      b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ngo",
                                      b"HTTP/1.1 200 OK\r\nContent-", b""])
def test_eof_before_the_response_ends_is_an_error(engine, response):
    with pytest.raises(UpstreamError):
        exchange(engine, response, eof=True)


def test_connection_close_and_http10_are_not_reusable(engine):
    for response in (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                     b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"):
        parser, events = exchange(engine, response)
        assert events[-2] is EndOfMessage and not parser.reusable
    parser, _ = exchange(engine, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    assert parser.reusable


def test_101_switches_when_asked(engine):
    parser, events = exchange(engine, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\n\r\n\x81\x02hi", upgrade=True)
    assert events == [Informational(101, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]), PAUSED]
    assert parser.take_trailing() == b"\x81\x02hi" and not parser.reusable


@pytest.mark.parametrize("fields", [b"Connection: upgrade\r\n", b"Upgrade: websocket\r\n", b""])
def test_a_101_must_name_its_protocol(engine, fields):
    # RFC 9110 15.2.2 (Upgrade MUST be sent) and 7.6.1 (so Connection names it).
    with pytest.raises(UpstreamError):
        exchange(engine, b"HTTP/1.1 101 Switching Protocols\r\n" + fields + b"\r\n", upgrade=True)


def test_an_upgrade_answered_without_101_stays_http(engine):
    parser, events = exchange(engine, GOOD, upgrade=True)
    assert body_of(events) == b"good" and parser.reusable


@pytest.mark.parametrize("pieces", [1, 2, 7])
def test_a_huge_response_head_is_refused_however_it_arrives(engine, pieces):
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\nok"
    parser = codec.response_parser(engine)
    parser.expect(b"GET")
    size = len(head) // pieces + 1
    with pytest.raises(UpstreamError, match="head larger"):
        for start in range(0, len(head), size):
            parser.feed(head[start:start + size])
            while parser.next_event() is not NEED_DATA:
                pass


@pytest.mark.parametrize("garbage", [b"\x00\x01\x02\x03", b"NOT HTTP", b"H", b"HTTQ"])
def test_bytes_that_cannot_start_a_status_line_are_refused_at_once(engine, garbage):
    # No waiting for a head that will never end (read_timeout would make it a 504).
    parser = codec.response_parser(engine)
    parser.expect(b"GET")
    parser.feed(garbage)
    if b"HTTP/".startswith(garbage):
        assert parser.next_event() is NEED_DATA
        return
    with pytest.raises(UpstreamError, match="not an HTTP/1.x status line"):
        parser.next_event()


def test_a_large_but_allowed_response_head_passes(engine):
    _, events = exchange(engine, b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 60_000 + b"\r\nContent-Length: 2\r\n\r\nok")
    assert body_of(events) == b"ok"


# --- the writer ------------------------------------------------------------------------

def reparsed_response(wire: bytes, method: bytes = b"GET", eof: bool = False):
    """h11, as a client, reads what the writer produced: the head, the body, how it ended."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"h")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    if eof:
        client.receive_data(b"")
    head = client.next_event()
    body = b""
    while True:
        event = client.next_event()
        if type(event) is h11.Data:
            body += event.data
        else:
            return head, body, event


def written(framing: codec.Framing, status: int, reason: bytes, headers: list, body: bytes) -> bytes:
    """A whole response, as a shell would write it with the codec's writer."""
    wire = codec.response_head(status, reason, [*headers, *framing.headers])
    if framing.kind == "chunked":
        return wire + b"".join(codec.chunk(body[i:i + 3]) for i in range(0, len(body), 3)) + codec.LAST_CHUNK
    return wire + (body if framing.kind in ("length", "close") else b"")


field_names = st.from_regex(rb"\A[-!#$%&'*+.^_`|~0-9a-z]{1,12}\Z").filter(
    lambda n: n not in (b"content-length", b"transfer-encoding", b"connection"))
field_values = st.from_regex(rb"\A[\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff\t]{0,20}[\x21-\x7e\x80-\xff])?\Z")


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from([b"1.1", b"1.0"]), method=st.sampled_from([b"GET", b"HEAD", b"POST"]),
       keep_alive=st.booleans(), status=st.sampled_from([200, 201, 204, 206, 301, 304, 404, 500, 503]),
       reason=st.from_regex(rb"\A[\x21-\x7e]([ \x21-\x7e]{0,15}[\x21-\x7e])?\Z"),
       headers=st.lists(st.tuples(field_names, field_values), max_size=6), body=st.binary(max_size=50),
       known=st.booleans())
def test_the_writer_gives_h11_the_same_message(version, method, keep_alive, status, reason, headers, body, known):
    framing = codec.response_framing(version, method, keep_alive, status, len(body) if known else None)
    bodiless = method == b"HEAD" or status in (204, 304)
    assert framing.kind == ("none" if bodiless else "length" if known else "chunked" if version == b"1.1"
                            else "close")
    assert framing.keep_alive == (keep_alive and version == b"1.1" and framing.kind != "close")
    head, received, end = reparsed_response(written(framing, status, reason, headers, body), method,
                                            eof=framing.kind == "close")
    assert (head.status_code, head.reason) == (status, reason)
    assert list(head.headers) == [*headers, *framing.headers]
    assert received == (b"" if bodiless else body) and type(end) is h11.EndOfMessage


def test_the_request_writer_gives_h11_the_same_request():
    wire = codec.request_head(b"POST", b"/p?q", [(b"host", b"h"), (b"content-length", b"2")]) + b"ok"
    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    event = server.next_event()
    assert (event.method, event.target, list(event.headers)) == (
        b"POST", b"/p?q", [(b"host", b"h"), (b"content-length", b"2")])
    assert server.next_event().data == b"ok"


def test_framing_keeps_or_closes_the_connection():
    assert codec.response_framing(b"1.1", b"GET", False, 200, 5).headers == (
        (b"content-length", b"5"), (b"connection", b"close"))
    assert codec.response_framing(b"1.0", b"GET", True, 200, 5).keep_alive is False
    assert codec.response_framing(b"1.1", b"GET", True, 101, None).headers == ()


def test_engine_names():
    assert type(codec.engine("auto")) is codec.ENGINES["llhttp"]
    assert set(codec.ENGINES) == {"llhttp", "h11"}
