"""ACME http-01 (RFC 8555 8.3): ``/.well-known/acme-challenge/<token>`` on the plain listener, answered by the proxy.

For a Host that an ``acme = true`` site names, a request for a challenge
token is answered before any route or redirect (so ``[tls] redirect_http``
can send everything else to HTTPS): 200 with the key authorization when the
certificate manager published that token, 404 when it did not. Other hosts
are left to their routes, so an application (or another ACME client behind
the proxy) can still answer challenges for names the proxy does not manage.

Sans-IO: ``lookup`` (token -> key authorization or None) is given by the
caller; the server's reads the storage folder (acme/store.py).
"""

from __future__ import annotations

from typing import Callable

from .placeholders import host_name

PREFIX = "/.well-known/acme-challenge/"
CONTENT_TYPE = ((b"content-type", b"application/octet-stream"),)


class Http01:
    """The http-01 answers for the names of ``acme = true`` sites."""

    __slots__ = ("names", "lookup")

    def __init__(self, names, lookup: Callable[[str], bytes | None]) -> None:
        self.names = frozenset(name.encode() for name in names)
        self.lookup = lookup

    def __repr__(self) -> str:
        return f"<Http01 {sorted(self.names)}>"

    def answer(self, path: str, host: bytes) -> tuple[int, str, bytes | None] | None:
        """(status, why, body) for a challenge request to a managed name; None for other hosts."""
        name = host_name(host)
        if name not in self.names:
            return None
        token = path[len(PREFIX):]
        body = self.lookup(token)
        if body is None:
            return 404, f"ACME http-01: no challenge pending for {name.decode()} with token {token!r}", None
        return 200, f"ACME http-01: the key authorization for {name.decode()}", body
