"""The client behind a load balancer: ``[server] trusted_proxies`` (nginx realip, Caddy trusted_proxies).

A connection from a trusted proxy carries the client's address in
X-Forwarded-For, each hop appending the address it received the request
from. Only the hops we trust could have written their part honestly, so the
list is read from the right (nginx ``real_ip_recursive on``): every
trusted address is skipped, and the first one that is not trusted is the
client. A client can write anything to the left of that; it is never read.
When every address is trusted the left-most one is the client; an entry
that is not an address stops the walk at the last trusted hop (nginx keeps
the connection's address then). A connection from anywhere else is its own
client, whatever its X-Forwarded-For says.

The address found is what the logs, rate and connection limits, allow/deny
and the X-Forwarded-For sent upstream use.
"""

from __future__ import annotations

import ipaddress

from ..config import matching_network
from .rules import _Memo

FORWARDED_FOR = b"x-forwarded-for"


def _parse(entry: bytes) -> str | None:
    """One X-Forwarded-For entry -> the address in it (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``)."""
    text = entry.strip().decode("latin-1")
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class TrustedProxies:
    """The networks of ``[server] trusted_proxies``, and the client address a request came from."""

    __slots__ = ("networks", "_trusted")

    def __init__(self, networks: tuple) -> None:
        self.networks = networks
        self._trusted = _Memo(self._check)

    def __repr__(self) -> str:
        return f"<TrustedProxies {[str(n) for n in self.networks]}>"

    def _check(self, ip: str) -> bool:
        return matching_network(ip, self.networks) is not None

    def trusts(self, ip: str) -> bool:
        return self._trusted[ip]

    def client(self, peer: str, headers: list[tuple[bytes, bytes]]) -> str:
        """The client's address: ``peer`` unless it is trusted and X-Forwarded-For says more."""
        if not self._trusted[peer]:
            return peer
        entries = [entry for name, value in headers if name == FORWARDED_FOR for entry in value.split(b",")]
        client = peer
        for entry in reversed(entries):
            address = _parse(entry)
            if address is None:
                break
            client = address
            if not self._trusted[address]:
                break
        return client
