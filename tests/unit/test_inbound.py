"""inbound.py without sockets: ClientConnection and check_head, fed bytes, with small limits.

The refusal tables are test_codec.py's: the current server and both codec engines must agree."""

from __future__ import annotations

import h11
import pytest

from proxy.config import Limits
from proxy.errors import ClientError
from proxy.http.inbound import ClientConnection, RequestHead, split_target, transfer_coding_status
from tests.unit.test_codec import BARE_LF_AND_OBS_FOLD, FIELD_REFUSALS, KEEP_ALIVE, REQUEST_LINE_REFUSALS

SMALL = Limits(max_header_bytes=1024, max_request_line=256, max_headers=10, max_body_bytes=100)


def head_of(data: bytes, limits: Limits = SMALL, pieces: int = 0) -> RequestHead:
    """Feed ``data`` (at once, or in pieces of that size) and return the first event that is not NEED_DATA."""
    conn = ClientConnection(limits)
    chunks = [data[i:i + pieces] for i in range(0, len(data), pieces)] if pieces else [data]
    for chunk in chunks:
        conn.receive_data(chunk)
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
    return event


def refused(data: bytes, limits: Limits = SMALL, pieces: int = 0) -> ClientError:
    with pytest.raises(ClientError) as info:
        head_of(data, limits, pieces)
    return info.value


def request(*headers: str, line: str = "GET /a/b?x=1 HTTP/1.1", body: bytes = b"") -> bytes:
    return (line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode("latin-1") + body


def test_a_plain_request():
    head = head_of(request("Host: example.com", "Accept: */*", "X-Mixed-Case: Value"))
    assert (head.method, head.target, head.path, head.query, head.host) == (
        b"GET", b"/a/b?x=1", "/a/b", b"x=1", b"example.com")
    assert head.headers == [(b"host", b"example.com"), (b"accept", b"*/*"), (b"x-mixed-case", b"Value")]
    assert (head.has_body, head.content_length, head.expect_continue, head.keep_alive) == (False, None, False, True)
    assert head.get(b"accept") == b"*/*" and head.get(b"missing") is None
    assert head.request_line == "GET /a/b?x=1 HTTP/1.1"


def test_the_path_is_normalised_and_the_target_kept_as_sent():
    # Routing and files see the path without dot segments; the upstream gets the raw target.
    head = head_of(request("Host: h", line="GET /static/./a/%2e%2e/b.txt?x HTTP/1.1"))
    assert (head.target, head.path, head.query) == (b"/static/./a/%2e%2e/b.txt?x", "/static/b.txt", b"x")


@pytest.mark.parametrize("line, connection, keep_alive", KEEP_ALIVE)
def test_keep_alive(line, connection, keep_alive):
    headers = ["Host: h"] + ([f"Connection: {connection}"] if connection else [])
    assert head_of(request(*headers, line=line)).keep_alive is keep_alive


# --- request line ------------------------------------------------------------------

@pytest.mark.parametrize("line, status", REQUEST_LINE_REFUSALS)
def test_request_line_refusals(line, status):
    assert refused(request("Host: h", line=line)).status == status


@pytest.mark.parametrize("method", [b"GET", b"POST", b"PROPFIND", b"M-SEARCH", b"QUERY"])
def test_methods_that_pass(method):
    assert head_of(request("Host: h", line=f"{method.decode()} / HTTP/1.1")).method == method


def test_options_asterisk():
    head = head_of(request("Host: h", line="OPTIONS * HTTP/1.1"))
    assert (head.target, head.path) == (b"*", "*")


def test_http12_needs_a_host_like_http11():
    assert refused(request(line="GET / HTTP/1.2")).status == 400
    assert head_of(request(line="GET / HTTP/1.0")).host == b""


@pytest.mark.parametrize("target, origin, path, query, host", [
    (b"/p?q", b"/p?q", b"/p", b"q", b"h"),
    (b"http://example.com/p?q", b"/p?q", b"/p", b"q", b"example.com"),
    (b"HTTPS://example.com:8443/p", b"/p", b"/p", b"", b"example.com:8443"),
    (b"http://example.com", b"/", b"/", b"", b"example.com"),
    (b"http://example.com?x=1", b"/?x=1", b"/", b"x=1", b"example.com"),
    (b"http://[::1]:8080/", b"/", b"/", b"", b"[::1]:8080"),
    (b"*", b"*", b"*", b"", b"h"),
])
def test_split_target(target, origin, path, query, host):
    assert split_target(target, b"h") == (origin, path, query, host)


@pytest.mark.parametrize("target", [
    b"/a#b", b"ftp://example.com/", b"http://user@example.com/", b"http:///p", b"http://a b/",
    b"http://a..b/", b"http://?x", b"example.com:80", b"relative/path",
])
def test_split_target_refusals(target):
    with pytest.raises(ClientError) as info:
        split_target(target, b"h")
    assert info.value.status == 400


# --- limits --------------------------------------------------------------------------

LONG_LINE = "GET /" + "a" * 300 + " HTTP/1.1"


def test_request_line_over_the_limit_in_one_read_is_414():
    assert refused(request("Host: h", line=LONG_LINE)).status == 414


def test_request_line_over_the_limit_in_many_reads_is_414():
    assert refused(request("Host: h", line=LONG_LINE), pieces=16).status == 414


def test_request_line_over_the_limit_before_it_ends_is_414():
    conn = ClientConnection(SMALL)
    conn.receive_data(LONG_LINE[:280].encode())
    with pytest.raises(ClientError) as info:
        conn.next_event()
    assert info.value.status == 414


def test_request_line_at_the_limit_passes():
    line = "GET /" + "a" * (256 - len("GET / HTTP/1.1") - 2) + " HTTP/1.1"
    assert len(line) + 1 == 255  # "\r" included, the "\n" is the 256th byte
    assert head_of(request("Host: h", line=line)).method == b"GET"


PADDED = [f"X-Pad-{i}: " + "p" * 150 for i in range(8)]  # about 1.3k of head


def test_head_over_max_header_bytes_in_one_read_is_431():
    # h11 enforces its size limit only on an incomplete head; this one arrives whole.
    assert refused(request("Host: h", *PADDED)).status == 431


def test_head_over_max_header_bytes_in_many_reads_is_431():
    assert refused(request("Host: h", *PADDED), pieces=100).status == 431


def test_too_many_header_fields_is_431():
    assert refused(request("Host: h", *[f"X-{i}: v" for i in range(10)])).status == 431
    assert head_of(request("Host: h", *[f"X-{i}: v" for i in range(9)])).method == b"GET"


def test_declared_body_over_the_limit_is_413():
    assert refused(request("Host: h", "Content-Length: 101", line="POST / HTTP/1.1")).status == 413


def events_of(data: bytes, limits: Limits = SMALL) -> list:
    conn = ClientConnection(limits)
    conn.receive_data(data)
    out = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return out
        out.append(event)
        if type(event) is h11.EndOfMessage:
            return out


def chunked(body: bytes) -> bytes:
    return request("Host: h", "Transfer-Encoding: chunked", line="POST / HTTP/1.1") + body


def test_a_chunked_body_is_read():
    events = events_of(chunked(b"5\r\nhello\r\n0\r\n\r\n"))
    assert type(events[0]) is RequestHead and events[0].has_body and events[0].content_length is None
    assert b"".join(e.data for e in events if type(e) is h11.Data) == b"hello"
    assert type(events[-1]) is h11.EndOfMessage


def test_streamed_body_over_the_limit_is_413():
    with pytest.raises(ClientError) as info:
        events_of(chunked(b"40\r\n" + b"a" * 64 + b"\r\n40\r\n" + b"b" * 64 + b"\r\n0\r\n\r\n"))
    assert info.value.status == 413


def test_a_declared_chunk_over_the_limit_is_413_before_its_data_arrives():
    with pytest.raises(ClientError) as info:
        events_of(chunked(b"ffffffff\r\nabc"))
    assert info.value.status == 413
    with pytest.raises(ClientError):
        events_of(chunked(b"65\r\n"))  # 101 bytes announced, none sent


def test_a_chunk_of_exactly_the_limit_passes():
    events = events_of(chunked(b"64\r\n" + b"a" * 100 + b"\r\n0\r\n\r\n"))
    assert type(events[-1]) is h11.EndOfMessage


@pytest.mark.parametrize("trailer", [b"Content-Length: 5", b"Transfer-Encoding: chunked", b"Host: x",
                                     b"Connection: close", b"Trailer: x"])
def test_trailers_with_framing_fields_are_400(trailer):
    with pytest.raises(ClientError) as info:
        events_of(chunked(b"0\r\n" + trailer + b"\r\n\r\n"))
    assert info.value.status == 400


def test_an_ordinary_trailer_passes():
    assert type(events_of(chunked(b"0\r\nX-Sum: 1\r\n\r\n"))[-1]) is h11.EndOfMessage


# --- fields ----------------------------------------------------------------------------

@pytest.mark.parametrize("headers, status", FIELD_REFUSALS)
def test_field_refusals(headers, status):
    assert refused(request(*headers, line="POST / HTTP/1.1")).status == status


def test_transfer_encoding_in_http10_is_400():
    assert refused(request("Transfer-Encoding: chunked", line="POST / HTTP/1.0")).status == 400


@pytest.mark.parametrize("raw", BARE_LF_AND_OBS_FOLD)
def test_bare_lf_and_obs_fold_are_400(raw):
    assert refused(raw).status == 400


def test_names_with_underscores_are_dropped():
    head = head_of(request("Host: h", "X_Forwarded_For: 6.6.6.6", "Content_Length: 5", "X-Ok: 1"))
    assert head.headers == [(b"host", b"h"), (b"x-ok", b"1")]
    assert head.has_body is False


def test_obs_text_in_a_value_passes():
    assert head_of(request("Host: h", "X-Name: caf\xe9")).get(b"x-name") == b"caf\xe9"


def test_expect_100_continue():
    head = head_of(request("Host: h", "Expect: 100-Continue", "Content-Length: 5", line="POST / HTTP/1.1"))
    assert head.expect_continue and head.content_length == 5 and head.has_body


@pytest.mark.parametrize("host", ["example.com", "example.com:8080", "[::1]", "[::1]:8080", "127.0.0.1", ""])
def test_valid_hosts(host):
    assert head_of(request(f"Host: {host}")).host == host.encode()


@pytest.mark.parametrize("values, status", [
    ([b"chunked"], 501),  # h11 refused it for another reason than the coding list (not reached in practice)
    ([b"gzip"], 400),
    ([b"chunked, gzip"], 400),
    ([b"chunked", b"chunked"], 400),
    ([b"chunked,chunked"], 400),
    ([b"\xa0chunked"], 400),
    ([b'"chunked"'], 400),
    ([b","], 400),
    ([b"gzip, chunked"], 501),
    ([b"gzip", b"chunked"], 501),
    ([b",chunked"], 501),
    ([b" CHUNKED "], 501),
])
def test_transfer_coding_status(values, status):
    assert transfer_coding_status(values) == status


# --- across reads and requests ---------------------------------------------------------

def test_empty_lines_before_the_request_line_are_skipped():
    conn = ClientConnection(SMALL)
    conn.receive_data(b"\r\n")  # alone: must not look like the client's EOF to h11
    assert conn.next_event() is h11.NEED_DATA
    assert not conn.head_started
    conn.receive_data(b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert type(conn.next_event()) is RequestHead


def test_an_empty_line_after_a_body_is_skipped():
    # RFC 9112 2.2: old clients send CRLF after a POST body; the next request must still parse.
    conn = ClientConnection(SMALL)
    conn.receive_data(request("Host: h", "Content-Length: 2", line="POST / HTTP/1.1", body=b"ok\r\n\r\n")
                      + request("Host: h", line="GET /next HTTP/1.1"))
    assert conn.next_event().method == b"POST"
    assert conn.next_event().data == b"ok"
    answer(conn)
    head = conn.next_event()
    assert head.path == "/next" and conn.requests == 2
    answer(conn)
    conn.receive_data(b"\r\n")
    assert conn.next_event() is h11.NEED_DATA
    conn.receive_data(b"")
    assert type(conn.next_event()) is h11.ConnectionClosed


def answer(conn: ClientConnection) -> None:
    assert type(conn.next_event()) is h11.EndOfMessage
    conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
    conn.send(h11.EndOfMessage())
    conn.start_next_cycle()


def test_pipelined_requests_are_each_checked():
    conn = ClientConnection(SMALL)
    conn.receive_data(request("Host: h", line="GET /one HTTP/1.1") + request("Host: h", line="get /two HTTP/1.1"))
    assert conn.next_event().path == "/one"
    answer(conn)
    with pytest.raises(ClientError) as info:
        conn.next_event()
    assert info.value.status == 400
    assert conn.requests == 2


def test_the_head_limit_applies_to_each_request_on_its_own():
    conn = ClientConnection(SMALL)
    small = request("Host: h", *PADDED[:5])
    assert len(small) < 1024 < 2 * len(small)
    conn.receive_data(small + small)
    assert type(conn.next_event()) is RequestHead
    answer(conn)
    assert type(conn.next_event()) is RequestHead


def test_a_split_head_is_checked_as_a_whole():
    conn = ClientConnection(SMALL)
    raw = request("Host: h", "X-A: 1", "X-B: 2")
    for i in range(len(raw) - 1):
        conn.receive_data(raw[i:i + 1])
        assert conn.next_event() is h11.NEED_DATA
    conn.receive_data(raw[-1:])
    assert conn.next_event().get(b"x-b") == b"2"
    assert repr(conn).startswith("<ClientConnection ")


def test_eof_in_the_middle_of_a_head_is_400():
    conn = ClientConnection(SMALL)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost")
    assert conn.next_event() is h11.NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(ClientError) as info:
        conn.next_event()
    assert info.value.status == 400
