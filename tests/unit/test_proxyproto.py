"""The PROXY protocol parser (proxy/http/proxyproto.py), driven with bytes alone: v1 text, v2 binary, TLVs,
headers cut at every byte, and hostile input."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from proxy.errors import ProxyHeaderError
from proxy.http.proxyproto import LOCAL, PROXY, V1_MAX, V2_MAX, V2_SIGNATURE, ProxyHeader, parse

HTTP = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(command: int = 0x1, family: int = 0x11, addresses: bytes | None = None, tlvs: bytes = b"",
       version: int = 2, length: int | None = None) -> bytes:
    """A v2 header: signature, version/command, family/transport, length, address block, TLVs."""
    if addresses is None:
        addresses = {0x11: ipv4_block("203.0.113.7", "10.0.0.1", 51234, 443),
                     0x21: ipv6_block("2001:db8::7", "2001:db8::1", 51234, 443),
                     0x31: b"/run/client.sock".ljust(108, b"\0") + b"/run/lb.sock".ljust(108, b"\0")}.get(family, b"")
    body = addresses + tlvs
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", size) + body


def ipv4_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack("!HH", sport, dport)


def ipv6_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + struct.pack("!HH", sport, dport)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# (version, command, client, server) of each header; its length is all of it.
VALID = [
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n",
     (1, PROXY, ("203.0.113.7", 51234), ("10.0.0.1", 443))),
    (b"PROXY TCP6 2001:db8:0:0::7 2001:db8::1 65535 0\r\n",
     (1, PROXY, ("2001:db8::7", 65535), ("2001:db8::1", 0))),
    (b"PROXY TCP6 ::ffff:198.51.100.9 ::1 1 2\r\n",  # a dual-stack balancer's mapped address: the IPv4 one
     (1, PROXY, ("198.51.100.9", 1), ("::1", 2))),
    (b"PROXY UNKNOWN\r\n", (1, PROXY, None, None)),
    (b"PROXY UNKNOWN ffff:f...f:ffff 65535 65535\r\n", (1, PROXY, None, None)),
    (v2(), (2, PROXY, ("203.0.113.7", 51234), ("10.0.0.1", 443))),
    (v2(family=0x21), (2, PROXY, ("2001:db8::7", 51234), ("2001:db8::1", 443))),
    (v2(family=0x31), (2, PROXY, ("unix:", 0), ("unix:", 0))),
    (v2(command=0x0), (2, LOCAL, None, None)),  # the balancer's own health check
    (v2(command=0x0, family=0x00), (2, LOCAL, None, None)),
    (v2(family=0x00, addresses=b""), (2, PROXY, None, None)),
    # TLVs (ALPN, authority, an AWS VPC endpoint id, an empty NOOP, a custom one) are walked and skipped.
    (v2(tlvs=tlv(0x01, b"h2") + tlv(0x02, b"shop.example.test") + tlv(0xEA, b"\x01vpce-0123456789abcdef")
         + tlv(0x04, b"") + tlv(0xE0, b"x" * 300)),
     (2, PROXY, ("203.0.113.7", 51234), ("10.0.0.1", 443))),
    # An address block longer than the family needs: the extra bytes are read as TLVs (here: one, empty).
    (v2(addresses=ipv4_block("192.0.2.1", "192.0.2.2", 1, 2) + b"\x00\x00\x00"),
     (2, PROXY, ("192.0.2.1", 1), ("192.0.2.2", 2))),
]


@pytest.mark.parametrize("header, expected", VALID)
def test_valid_headers(header, expected):
    expected = ProxyHeader(*expected, len(header))
    assert parse(header) == expected
    # What follows belongs to the next protocol and is left alone.
    assert parse(header + HTTP) == expected
    assert (header + HTTP)[expected.length:] == HTTP


@pytest.mark.parametrize("header, expected", VALID)
def test_every_prefix_of_a_valid_header_asks_for_more(header, expected):
    expected = ProxyHeader(*expected, len(header))
    for cut in range(len(header)):
        assert parse(header[:cut]) is None, cut
    assert parse(bytearray(header)) == expected  # the shells buffer in a bytearray


INVALID = [
    (HTTP, "did not begin with a PROXY header"),
    (b"\x16\x03\x01\x02\x00", "did not begin with a PROXY header"),  # a TLS ClientHello
    (b"PROXX", "did not begin with a PROXY header"),
    (b"\r\n\r\n\x01", "did not begin with a PROXY header"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\n", "without CRLF"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 " + b"4" * 80, "without CRLF"),
    (b"PROXY UNKNOWN " + b"x" * (V1_MAX - 15) + b"\r\n", "without CRLF"),  # 108 bytes
    (b"PROXY TCP5 203.0.113.7 10.0.0.1 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY\r\n", "did not begin"),
    (b"PROXY \r\n", "not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY tcp4 203.0.113.7 10.0.0.1 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 1\r\n", "two ports, one space apart"),
    (b"PROXY TCP4 203.0.113.7  10.0.0.1 1 2\r\n", "two ports, one space apart"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2 \r\n", "two ports, one space apart"),
    (b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n", "not an address of its family"),
    (b"PROXY TCP6 203.0.113.7 ::1 1 2\r\n", "not an address of its family"),
    (b"PROXY TCP4 203.0.113.007 10.0.0.1 1 2\r\n", "not an address of its family"),
    (b"PROXY TCP4 256.0.113.7 10.0.0.1 1 2\r\n", "not an address of its family"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "not an address of its family"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.\xff 1 2\r\n", "not an address of its family"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n", "is not a port"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 0443 443\r\n", "is not a port"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 443\r\n", "is not a port"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 +1 443\r\n", "is not a port"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 \xd9\xa1 443\r\n", "is not a port"),  # an Arabic-Indic digit
    (v2(version=1), "version 1, expected 2"),
    (v2(version=3), "version 3, expected 2"),
    (v2(command=0x2), "neither LOCAL nor PROXY"),
    (v2(family=0x12, addresses=b"\0" * 12), "datagram"),
    (v2(family=0x22, addresses=b"\0" * 36), "datagram"),
    (v2(family=0x32, addresses=b"\0" * 216), "datagram"),
    (v2(family=0x13, addresses=b"\0" * 12), "are not defined"),
    (v2(family=0x10, addresses=b"\0" * 12), "are not defined"),
    (v2(family=0x41, addresses=b"\0" * 12), "are not defined"),
    (v2(family=0x11, addresses=b"\0" * 11), "11 bytes of addresses, inet needs 12"),
    (v2(family=0x21, addresses=ipv4_block("192.0.2.1", "192.0.2.2", 1, 2)), "inet6 needs 36"),
    (v2(family=0x31, addresses=b"\0" * 108), "unix needs 216"),
    (v2(tlvs=b"\x01"), "a TLV is cut short"),
    (v2(tlvs=tlv(0x01, b"h2") + b"\x02\x00"), "a TLV is cut short"),
    (v2(tlvs=b"\x01\x00\x05abc"), "runs past the end"),
    (v2(tlvs=b"\x01\xff\xff"), "runs past the end"),
    (v2(command=0x0, tlvs=b"\x01\x00\x09"), "runs past the end"),  # LOCAL headers are checked too
]


@pytest.mark.parametrize("data, message", INVALID)
def test_invalid_headers_are_refused(data, message):
    with pytest.raises(ProxyHeaderError, match=message):
        parse(data)


def test_a_v2_header_too_long_is_refused_before_it_arrives():
    # The length field alone says it: nothing past the 16 fixed bytes is waited for.
    header = v2(length=V2_MAX)
    with pytest.raises(ProxyHeaderError, match=f"of {V2_MAX + 16} bytes, more than {V2_MAX}"):
        parse(header[:16])
    assert parse(v2(length=V2_MAX - 16)[:16]) is None  # the largest allowed one is waited for


def test_refused_at_the_first_byte_that_cannot_begin_a_header():
    # A client speaking HTTP to a proxy_protocol listener is closed at once, not after 107 bytes.
    for data in (b"G", b"\x16", b"PX", b"\r\n\r\n\x00\r\nQUIX"):
        with pytest.raises(ProxyHeaderError):
            parse(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_header_more_or_a_refusal(data):
    try:
        header = parse(data)
    except ProxyHeaderError:
        return
    assert header is None or 0 < header.length <= len(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([h for h, _ in VALID]), st.integers(min_value=0), st.binary(min_size=1, max_size=8))
def test_mutated_headers_never_crash(header, position, junk):
    at = position % len(header)
    for data in (header[:at] + junk + header[at + len(junk):], header[:at] + junk):
        try:
            found = parse(data)
        except ProxyHeaderError:
            continue
        assert found is None or found.length <= len(data)
