"""Property-based tests of the sans-IO request path: the codec's request parser, rules.py, upstream_request_headers.

For any bytes a client sends, split into reads at any points, the proxy either
refuses with a ClientError (4xx, or 501/505 for what it does not implement) or
produces upstream requests whose framing it chose itself: one Content-Length it
computed from the body it read (or none), no Transfer-Encoding, no hop-by-hop or
underscored field, no CR, LF or NUL anywhere in a field. Nothing else is ever
raised. The generators are biased toward the bytes that matter (framing fields,
line endings, control bytes) so a few hundred examples reach the edges.
"""

from __future__ import annotations

import re

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import Limits
from proxy.errors import ClientError
from proxy.http.headers import HOP_BY_HOP, client_response_headers, connection_tokens, request_id
from proxy.http.headers import upstream_request_headers
from proxy.http import codec
from proxy.http.codec import RequestHead

LIMITS = Limits(max_header_bytes=2048, max_request_line=512, max_headers=20, max_body_bytes=256)
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
CLIENT_IP = "203.0.113.7"
REFUSAL_STATUSES = set(range(400, 500)) | {501, 505}
# Fields the proxy writes itself: a client's Connection may name them, and ours are still sent.
PROXY_SET = frozenset({b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                       b"x-real-ip", b"forwarded", b"via", b"x-request-id"})

# --- generators ---------------------------------------------------------------------
# Each piece of a request is ordinary most of the time and hostile otherwise, so that
# many examples are forwarded (and their rewriting checked) while the rest probe refusals.

hostile_methods = st.sampled_from([b"TRACE", b"CONNECT", b"get", b"G=T", b"", b"GET ", b"\x00"])
hostile_targets = st.one_of(
    st.sampled_from([b"*", b"http://u@h/", b"example.com:80", b"/%2e%2e/x", b"/a%00b", b"/a#f", b"/%c0%ae",
                     b"//x//y", b"/a\\b", b"/%zz", b"ftp://h/", b"http://h?q", b"http://a..b/"]),
    st.binary(max_size=12).map(lambda b: b"/" + b),
)
hostile_versions = st.sampled_from([b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.10", b"http/1.1", b""])
hostile_names = st.one_of(
    st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Content_Length", b"Transfer_Encoding",
                     b"Expect", b"Content-Length ", b" Host", b"", b"X\x85"]),
    st.from_regex(rb"\A[-a-zA-Z_]{1,12}\Z"),
)
hostile_values = st.one_of(
    st.sampled_from([b"", b"0", b"5", b"07", b"-1", b"+5", b"5, 5", b"5, 6", b"chunked", b"CHUNKED", b"gzip, chunked",
                     b"chunked, gzip", b",chunked", b"Content-Length", b"Transfer-Encoding", b"host", b"100-continue",
                     b"a..b", b"h:port", b"\xa0chunked", b"a\rb", b"a\nb", b"a\x00b", b"a\x01b", b"\r\n b"]),
    st.binary(max_size=16),
)
hostile_line_ends = st.sampled_from([b"\n", b"\r", b"\r\n ", b"\r\n\t"])

ORDINARY_NAMES = [b"Accept", b"User-Agent", b"X-Custom", b"Connection", b"Keep-Alive", b"TE", b"Upgrade", b"Via",
                  b"X-Forwarded-For", b"X-Real-IP", b"X-Request-ID", b"Forwarded", b"Trailer", b"Proxy-Connection",
                  b"X_Underscored", b"HTTP2-Settings"]
ORDINARY_VALUES = [b"1", b"keep-alive", b"close", b"x-custom, te", b"Upgrade, HTTP2-Settings", b"trailers", b"h2c",
                   b"1.1 other", b"6.6.6.6", b"abc-123", b"caf\xe9", b"*/*", b"for=6.6.6.6"]


@st.composite
def requests(draw, hostile: bool = True) -> bytes:
    """One request: ordinary in most of its pieces and hostile in some, or (hostile=False) in none."""
    def pick(ordinary: list, bad, odds: int = 15):
        if not hostile or draw(st.integers(1, odds)) > 1:
            return draw(st.sampled_from(ordinary))
        return draw(bad)

    def eol() -> bytes:
        return pick([b"\r\n"], hostile_line_ends, odds=40)  # one per line: rarer, or few heads would end

    out = (pick([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"HEAD"], hostile_methods) + b" "
           + pick([b"/", b"/a/b?x=1", b"/caf%C3%A9", b"http://example.com/p?q", b"/x%2Fy"], hostile_targets) + b" "
           + pick([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"], hostile_versions))
    http10 = out.endswith(b"/1.0")
    out += eol()
    fields = []
    if pick([True], st.just(False)):
        fields.append((b"Host", pick([b"example.com", b"example.com:8080", b"[::1]", b""], hostile_values)))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["none", "length"] if http10 and not hostile else ["none", "length", "chunked"]))
    if framing == "length":
        fields.append((b"Content-Length", pick([b"%d" % len(body)], hostile_values)))
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", pick([b"chunked"], hostile_values)))
        trailer = pick([b"", b"X-Sum: 1\r\n"], st.sampled_from([b"Content-Length: 1\r\n", b"Host: x\r\n"]))
        body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n" + trailer + b"\r\n"
    else:
        body = b""
    for _ in range(draw(st.integers(0, 5))):
        fields.append((pick(ORDINARY_NAMES, hostile_names), pick(ORDINARY_VALUES, hostile_values)))
    # A Connection field naming fields that are really there: they must not be forwarded.
    # (Naming a framing field is refused, so an ordinary request does not.)
    nameable = [n for n, _ in fields if hostile or n.lower() not in (b"host", b"content-length", b"transfer-encoding")]
    if nameable and draw(st.booleans()):
        fields.append((b"Connection", b", ".join(draw(st.lists(st.sampled_from(nameable), min_size=1, max_size=3)))))
    for name, value in draw(st.permutations(fields)):
        out += name + b":" + pick([b" "], st.sampled_from([b"", b"\t", b"  "])) + value + eol()
    return out + b"\r\n" + body


pipelines = st.lists(requests(), min_size=1, max_size=3).map(b"".join)
ordinary_pipelines = st.lists(requests(hostile=False), min_size=1, max_size=3).map(b"".join)
streams = st.one_of(pipelines, pipelines, pipelines, st.binary(max_size=300))  # 3:1


# --- the driver -------------------------------------------------------------------------

def upstream_requests(data: bytes, cuts: list[int], engine: str = "llhttp") -> list[tuple[RequestHead, bytes, list]]:
    """Feed ``data`` in reads cut at ``cuts``; return (head, body, upstream headers) per request.

    Raises ClientError when the proxy refuses; any other exception fails the property.
    """
    parser = codec.request_parser(engine, LIMITS)
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    reads = [data[a:b] for a, b in zip(bounds, bounds[1:])] + [b""]  # b"": the client's EOF
    out = []
    head, body = None, b""
    while True:
        event = parser.next_event()
        if event is codec.NEED_DATA:
            if not reads:
                raise AssertionError("NEED_DATA after EOF")
            parser.feed(reads.pop(0))
        elif type(event) is RequestHead:
            head, body = event, b""
        elif type(event) is codec.Data:
            body += event.data
        elif event is codec.EndOfMessage:
            headers = upstream_request_headers(
                head.headers, host=head.host or b"127.0.0.1:8080", client_ip=CLIENT_IP, scheme=b"http",
                request_id=request_id(head.get(b"x-request-id")), via=b"1.1 twotier",
                body_length=len(body) if head.has_body else None)
            out.append((head, body, headers))
        elif event is codec.PAUSED:
            if not head.keep_alive or head.upgrade is not None:
                return out  # answered with a close (or a tunnel would take over): nothing more is read
            parser.start_next_cycle()
        elif event is codec.CLOSED:
            return out
        else:
            raise AssertionError(f"unexpected event {event!r}")


def check_upstream_request(head: RequestHead, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    client_named = connection_tokens(head.headers)
    lengths = [v for n, v in headers if n == b"content-length"]
    assert [n for n, _ in headers].count(b"host") == 1
    assert lengths == ([b"%d" % len(body)] if head.has_body else [])  # framing the proxy chose
    assert len(body) <= LIMITS.max_body_bytes
    for name, value in headers:
        assert TOKEN.fullmatch(name) and name == name.lower() and b"_" not in name, name
        assert not re.search(rb"[\r\n\x00]", value), (name, value)
        assert name not in HOP_BY_HOP and (name not in client_named or name in PROXY_SET), name
    assert (b"x-forwarded-for", CLIENT_IP.encode()) in headers
    if b"via" in client_named or head.get(b"via") is None:
        assert (b"via", b"1.1 twotier") in headers  # no client value survives in Via
    # h11, the reference parser, reads what the proxy writes upstream as the same request.
    wire = codec.request_head(head.method, head.target, headers)
    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    request = server.next_event()
    assert (request.method, request.target) == (head.method, head.target)
    assert [(n, v) for n, v in request.headers] == [(n.lower(), v) for n, v in headers]
    assert head.target[:1] == b"/" or head.target == b"*"


@SETTINGS
@given(data=streams, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_any_input_is_refused_with_a_4xx_or_forwarded_with_our_own_framing(data, cuts):
    try:
        forwarded = upstream_requests(data, cuts)
    except ClientError as exc:
        assert exc.status in REFUSAL_STATUSES, exc
        return
    for head, body, headers in forwarded:
        check_upstream_request(head, body, headers)


@SETTINGS
@given(data=ordinary_pipelines, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_ordinary_requests_are_forwarded(data, cuts):
    """The other half of the property: what is merely unusual (hop-by-hop fields, underscores,
    spoofed forwarding fields, odd but valid values) is cleaned and forwarded, not refused."""
    forwarded = upstream_requests(data, cuts)
    assert forwarded
    for head, body, headers in forwarded:
        check_upstream_request(head, body, headers)


@SETTINGS
@given(data=pipelines)
def test_reads_do_not_change_the_outcome(data):
    """The same bytes in one read or one byte at a time: the same requests, or the same refusal."""
    def outcome(cuts):
        try:
            return [(h.method, h.target, h.headers, b) for h, b, _ in upstream_requests(data, cuts)]
        except ClientError as exc:
            return exc.status

    assert outcome([]) == outcome(list(range(len(data))))


field_names = st.from_regex(rb"\A[-!#$%&'*+.^_`|~0-9a-zA-Z]{1,10}\Z").map(bytes.lower)
field_values = st.from_regex(rb"\A[\x20-\x7e\x80-\xff\t]{0,20}\Z").map(lambda v: v.strip(b" \t"))


@st.composite
def field_lists(draw) -> list[tuple[bytes, bytes]]:
    """Header lists as h11 hands them over, often with a Connection field naming some of them."""
    fields = draw(st.lists(st.tuples(st.one_of(field_names, st.sampled_from(sorted(HOP_BY_HOP))), field_values),
                           max_size=12))
    if fields and draw(st.booleans()):
        named = draw(st.lists(st.sampled_from([n for n, _ in fields]), min_size=1, max_size=3))
        fields.insert(draw(st.integers(0, len(fields))), (b"connection", b" , ".join(n.upper() for n in named)))
    return fields


@SETTINGS
@given(headers=field_lists(), body_length=st.one_of(st.none(), st.integers(0, 10**9)))
def test_upstream_request_headers_keep_nothing_hop_by_hop(headers, body_length):
    out = upstream_request_headers(headers, host=b"h", client_ip="::1", scheme=b"https", request_id=b"id",
                                   via=b"1.1 twotier", body_length=body_length)
    named = connection_tokens(headers)
    out_names = [n for n, _ in out]
    assert not (set(out_names) & (HOP_BY_HOP | named) - PROXY_SET)
    assert not any(b"_" in n for n in out_names)
    assert dict(out)[b"via"] == (b"1.1 twotier" if b"via" in named or b"via" not in dict(headers)
                                 else dict(headers)[b"via"] + b", 1.1 twotier")
    assert out_names.count(b"content-length") == (body_length is not None)
    assert out_names.count(b"x-forwarded-for") == out_names.count(b"via") == 1
    kept = [(n, v) for n, v in headers if n not in HOP_BY_HOP | named and b"_" not in n and n not in (
        b"host", b"content-length", b"expect", b"x-request-id", b"via", b"x-forwarded-for", b"x-forwarded-proto",
        b"x-forwarded-host", b"x-forwarded-port", b"x-forwarded-prefix", b"x-real-ip", b"forwarded")]
    assert [pair for pair in out if pair in kept] == kept  # everything else passes, in order


@SETTINGS
@given(headers=field_lists())
def test_client_response_headers_keep_nothing_hop_by_hop(headers):
    out = client_response_headers(headers, via=b"1.1 twotier", extra=[(b"content-length", b"3")])
    named = connection_tokens(headers)
    out_names = [n for n, _ in out]
    assert not (set(out_names) & (HOP_BY_HOP | named) - {b"via", b"content-length"})
    if b"via" in named:
        assert (b"via", b"1.1 twotier") in out
    assert out_names.count(b"content-length") == out_names.count(b"via") == 1
    assert b"server" not in out_names and b"date" not in out_names
