"""Request paths: normalisation and longest-prefix route matching.

Strategy: routes are matched on the *decoded* path, the way nginx matches
locations on its normalised URI, so ``/%73tatic/`` cannot dodge a route for
``/static/``. The raw target is what gets forwarded upstream (nginx's
``proxy_pass`` without a URI does the same). Anything whose decoded form is
ambiguous (NUL, backslash, ``.``/``..`` segments, bytes that are not UTF-8,
which includes every overlong encoding) is refused with 400 here, before a
route or the file system ever sees it.
"""

from __future__ import annotations

from typing import Iterable

from ..config import Route
from ..errors import ClientError

_HEX = frozenset(b"0123456789abcdefABCDEF")


def percent_decode(raw: bytes) -> bytes:
    """Decode %XX once. A ``%`` not followed by two hex digits is a 400."""
    if b"%" not in raw:
        return raw
    parts = raw.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            raise ClientError("bad percent-encoding in path")
        out.append(int(part[:2], 16))
        out += part[2:]
    return bytes(out)


def normalize_path(raw_path: bytes) -> str:
    """Raw request path (no query) -> decoded, slash-merged path, or ClientError(400)."""
    decoded = percent_decode(raw_path)
    if b"\x00" in decoded or b"\\" in decoded:
        raise ClientError("NUL or backslash in path")
    try:
        path = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError("path is not valid UTF-8") from None
    if not path.startswith("/"):
        raise ClientError("path must start with /")
    if "//" in path:
        while "//" in path:
            path = path.replace("//", "/")
    if "/." in path:
        for segment in path.split("/"):
            if segment in (".", ".."):
                raise ClientError("dot segment in path")
    return path


class Router:
    """Longest-prefix match over a fixed set of routes, precomputed once."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True))

    def match(self, path: str) -> Route | None:
        for route in self._routes:
            if path.startswith(route.prefix):
                return route
        return None

    def __repr__(self) -> str:
        return f"<Router {[r.prefix for r in self._routes]}>"
