"""Virtual hosts: which ``[[sites]]`` entry a request's Host names (nginx's server_name, Caddy's site blocks).

Matching is on the host name alone, lower-cased, without its port or a
trailing dot: an exact name first, then a ``*.example.test`` wildcard, which
stands for exactly one label in front (as in a certificate, RFC 6125 6.4.3,
and as Caddy matches; nginx's would take several), then the default site.

A request for a host no site serves, with no default site, gets 404, or
421 Misdirected Request (RFC 9110 15.5.20) over TLS when the client's SNI
name differs from its Host: the connection was set up for another name, and
421 tells a client it may retry on a connection of its own to that host.

A configuration without ``[[sites]]`` is one default site with no names, and
then ``Sites.only`` spares every request the lookup.
"""

from __future__ import annotations

from typing import Iterable

from ..config import Site
from .placeholders import host_name
from .rules import _Memo


class Sites:
    """Host -> site, prepared once. ``entries`` are whatever the caller keeps per site (a Router and the
    routes' policies, in decide.py), in the order of ``[[sites]]``."""

    __slots__ = ("entries", "only", "default", "_exact", "_wildcard", "_by_host")

    def __init__(self, sites: Iterable[Site], entry) -> None:
        self.entries = [(site, entry(site)) for site in sites]
        self._exact: dict[bytes, object] = {}
        self._wildcard: dict[bytes, object] = {}
        self.default = None
        for site, prepared in self.entries:
            for name in site.names:
                table = self._wildcard if name.startswith("*.") else self._exact
                table[name.removeprefix("*.").encode()] = prepared
            if site.default:
                self.default = prepared
        nameless = len(self.entries) == 1 and not self.entries[0][0].names
        self.only = self.default if nameless else None
        self._by_host = _Memo(self._lookup)

    def __repr__(self) -> str:
        return f"<Sites {[site.names or ['(default)'] for site, _ in self.entries]}>"

    def pick(self, host: bytes):
        """The prepared entry of the site serving ``host`` (Host as sent), or None."""
        return self._by_host[host]

    def _lookup(self, host: bytes):
        name = host_name(host)
        found = self._exact.get(name)
        if found is None and b"." in name:
            found = self._wildcard.get(name.partition(b".")[2])
        return self.default if found is None else found

    def named(self, host: bytes) -> bool:
        """Whether a site names ``host`` (rather than the default site taking it)."""
        name = host_name(host)
        return name in self._exact or (b"." in name and name.partition(b".")[2] in self._wildcard)


def misdirected(host: bytes, scheme: bytes, server_name: str | None) -> bool:
    """An unknown Host over TLS on a connection made for another name (SNI): 421 rather than 404."""
    return scheme == b"https" and server_name is not None and server_name.encode() != host_name(host)
