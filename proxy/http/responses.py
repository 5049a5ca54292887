"""Responses the proxy makes itself: error pages and the Date header.

An error page is a small HTML document naming the status, like nginx's. For
errors after which the connection closes, ``error_bytes`` serialises the
whole response without h11, since h11 may already be in its ERROR state.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus


HTML = (b"content-type", b"text/html; charset=utf-8")  # the Content-Type of the proxy's own pages

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


def reason(status: int) -> bytes:
    """The standard reason phrase, b"" for a status that has none."""
    return _REASONS.get(status, b"")


def error_page(status: int, server: bytes) -> bytes:
    title = b"%d %s" % (status, reason(status))
    return (b"<!doctype html>\n<html><head><title>" + title + b"</title></head>\n<body><h1>" + title
            + b"</h1><hr><p>" + server + b"</p></body></html>\n")


class Clock:
    """The Date header value, formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


def error_headers(status: int, body: bytes, server: bytes, date: bytes, *, close: bool,
                  extra: list[tuple[bytes, bytes]] = ()) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"server", server),
        (b"date", date),
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        *extra,
    ]
    if close:
        headers.append((b"connection", b"close"))
    return headers


def error_bytes(status: int, server: bytes, date: bytes, *, head_only: bool = False,
                extra: list[tuple[bytes, bytes]] = ()) -> bytes:
    """A complete ``Connection: close`` error response, ready for the socket."""
    body = error_page(status, server)
    lines = [b"HTTP/1.1 %d %s" % (status, reason(status))]
    lines += [name + b": " + value for name, value in error_headers(status, body, server, date, close=True,
                                                                     extra=extra)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body)
