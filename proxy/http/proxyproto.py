"""The PROXY protocol (versions 1 and 2), as HAProxy and cloud load balancers send it: bytes in, a header out.

A load balancer that relays TCP (HAProxy ``send-proxy``, AWS NLB, GCP and
Azure load balancers, Cloudflare Spectrum) cannot add X-Forwarded-For: it
never parses HTTP. It writes one PROXY header at the very start of each
connection instead, naming the client it accepted; a listener with
``proxy_protocol = true`` reads it before the HTTP codec (or the TLS
handshake) sees a byte, and the client address it carries becomes the
connection's (access log, X-Forwarded-For, the decision's ConnFacts).

Strategy: ``parse(data)`` looks at the bytes received so far and returns
None (not complete yet), a ``ProxyHeader`` (with how many bytes it took: the
rest belong to the protocol that follows) or raises ``ProxyHeaderError``. It
refuses as early as it can: the first byte that cannot begin a PROXY header
ends it, so a client that sends HTTP to such a listener is closed at once.
The version is told by the first bytes (v1 is text beginning "PROXY ", v2 a
12-byte binary signature that no text protocol can start with).

What is refused (the specification, haproxy.org's proxy-protocol.txt, says
a receiver must not guess): a v1 line longer than 107 bytes or not ending in
CRLF, an address that is not valid for its family, a port above 65535; a v2
version other than 2, a command other than LOCAL or PROXY, an address family
or transport the specification does not define, datagram transports (this is
a stream listener), an address block shorter than its family needs, and TLVs
that overrun the header. TLVs are walked to check their lengths and skipped:
none changes what the proxy does.

Which address counts: the source of a PROXY command over TCP (v1 TCP4/TCP6,
v2 INET/INET6) is the client. v1 UNKNOWN, the v2 LOCAL command (the balancer's
own health checks) and the v2 UNSPEC family say "use the connection's own
addresses": ``client`` is then None. A v2 UNIX source is a local client, shown
as ``unix:``, as a connection to a unix-socket listener is.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import ProxyHeaderError

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included ("PROXY UNKNOWN" + two full IPv6 addresses and ports)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family and transport, length
# Addresses and TLVs: AWS, GCP and Azure send a few dozen bytes of TLVs, HAProxy's SSL TLVs a few hundred.
# nginx reads the header into a buffer of 4 KiB too.
V2_MAX = 4096
UNIX_CLIENT = "unix:"  # the client address of a local (unix socket) peer, as nginx's $remote_addr shows it

LOCAL, PROXY = "local", "proxy"
_V2_COMMANDS = {0x0: LOCAL, 0x1: PROXY}
# Family and transport byte -> (address family, bytes of the address block); v2 section 2.2.
# 0x00 UNSPEC; 0x11 TCP over IPv4; 0x21 TCP over IPv6; 0x31 UNIX stream. The datagram ones (0x12, 0x22,
# 0x32) are valid in the protocol but not on a stream listener; everything else is undefined.
_V2_FAMILIES = {0x00: ("unspec", 0), 0x11: ("inet", 12), 0x21: ("inet6", 36), 0x31: ("unix", 216)}
_V2_DATAGRAM = frozenset({0x12, 0x22, 0x32})
_V1_FAMILIES = {b"TCP4": ipaddress.IPv4Address, b"TCP6": ipaddress.IPv6Address}


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete PROXY header. ``client``/``server``: (address, port) as the balancer saw them, or None
    when the header says to use the connection's own. ``length``: bytes the header took."""

    version: int
    command: str  # LOCAL or PROXY
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    length: int

    @property
    def client_ip(self) -> str | None:
        return self.client[0] if self.client is not None else None


def parse(data: bytes | bytearray) -> ProxyHeader | None:
    """The PROXY header at the start of ``data``, None while more bytes are needed (see the module
    docstring), or ProxyHeaderError."""
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data[:1] == b"P":
        return _parse_v1(data)
    if not data:
        return None
    raise ProxyHeaderError("the connection did not begin with a PROXY header")


def _parse_v1(data: bytes | bytearray) -> ProxyHeader | None:
    start = bytes(data[:len(V1_PREFIX)])
    if not V1_PREFIX.startswith(start):
        raise ProxyHeaderError("the connection did not begin with a PROXY header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or data.find(b"\n", 0, V1_MAX) >= 0:
            raise ProxyHeaderError(f"PROXY v1 header without CRLF in its first {V1_MAX} bytes")
        return None
    fields = bytes(data[:end]).split(b" ")
    length = end + 2
    if fields[1:2] == [b"UNKNOWN"]:  # the balancer does not know (or will not say): the rest is ignored
        return ProxyHeader(1, PROXY, None, None, length)
    family = _V1_FAMILIES.get(fields[1]) if len(fields) > 1 else None
    if family is None:
        raise ProxyHeaderError("PROXY v1 header: the protocol is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        raise ProxyHeaderError("PROXY v1 header: expected source, destination and two ports, one space apart")
    client = (_v1_address(fields[2], family), _v1_port(fields[4]))
    server = (_v1_address(fields[3], family), _v1_port(fields[5]))
    return ProxyHeader(1, PROXY, client, server, length)


def _v1_address(text: bytes, family) -> str:
    try:
        if b"%" in text:  # a scope id names an interface of the balancer's machine, not of ours
            raise ValueError
        return _client_form(family(text.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        raise ProxyHeaderError(f"PROXY v1 header: {text[:45]!r} is not an address of its family") from None


def _client_form(address) -> str:
    """An address as the proxy writes a client's: an IPv4-mapped IPv6 address (a balancer's dual-stack
    socket) as the IPv4 address it is, so allow lists and logs see one form (the proxy's own listeners
    are IPv6-only and never see mapped addresses)."""
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _v1_port(text: bytes) -> int:
    # Decimal, no sign, no leading zero (the specification's 0..65535 written as such).
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 header: {text[:8]!r} is not a port")
    return int(text)


def _parse_v2(data: bytes | bytearray) -> ProxyHeader | None:
    if not V2_SIGNATURE.startswith(bytes(data[:len(V2_SIGNATURE)])):
        raise ProxyHeaderError("the connection did not begin with a PROXY header")
    if len(data) < V2_FIXED:
        return None
    version, command = data[12] >> 4, _V2_COMMANDS.get(data[12] & 0x0F)
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2 header: version {version}, expected 2")
    if command is None:
        raise ProxyHeaderError(f"PROXY v2 header: command {data[12] & 0x0F:#x} is neither LOCAL nor PROXY")
    length = V2_FIXED + int.from_bytes(data[14:16], "big")
    if length > V2_MAX:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes, more than {V2_MAX}")
    if len(data) < length:
        return None
    kind = data[13]
    if kind in _V2_DATAGRAM:
        raise ProxyHeaderError("PROXY v2 header for a datagram connection, on a stream listener")
    family = _V2_FAMILIES.get(kind)
    if family is None:
        raise ProxyHeaderError(f"PROXY v2 header: address family and transport {kind:#04x} are not defined")
    name, size = family
    block = bytes(data[V2_FIXED:length])
    if len(block) < size:
        raise ProxyHeaderError(f"PROXY v2 header: {len(block)} bytes of addresses, {name} needs {size}")
    _skip_tlvs(block[size:])
    if command is LOCAL or name == "unspec":  # the balancer speaking for itself (health checks), or unsaid
        return ProxyHeader(2, command, None, None, length)
    if name == "unix":
        return ProxyHeader(2, command, (UNIX_CLIENT, 0), (UNIX_CLIENT, 0), length)
    half = (size - 4) // 2
    client = (_client_form(ipaddress.ip_address(block[:half])), int.from_bytes(block[2 * half:2 * half + 2], "big"))
    server = (_client_form(ipaddress.ip_address(block[half:2 * half])), int.from_bytes(block[2 * half + 2:size], "big"))
    return ProxyHeader(2, command, client, server, length)


def _skip_tlvs(tlvs: bytes) -> None:
    """Walk the type-length-value records after the addresses; each must fit in the header (v2 2.2.7)."""
    at = 0
    while at < len(tlvs):
        if len(tlvs) - at < 3:
            raise ProxyHeaderError("PROXY v2 header: a TLV is cut short")
        at += 3 + int.from_bytes(tlvs[at + 1:at + 3], "big")
        if at > len(tlvs):
            raise ProxyHeaderError("PROXY v2 header: a TLV runs past the end of the header")
