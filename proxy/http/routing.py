"""Request paths: normalisation and longest-prefix route matching.

Strategy: routes are matched on the *decoded, normalised* path, the way nginx
matches locations on its normalised URI, so ``/%73tatic/`` cannot dodge a
route for ``/static/``. ``normalize_path`` decodes ``%XX`` once, refuses what
has no unambiguous decoded form (NUL, backslash, bytes that are not UTF-8,
which includes every overlong encoding) with 400, merges repeated slashes,
and then removes ``.`` and ``..`` segments as RFC 3986 section 5.2.4 does;
a ``..`` that would climb above ``/`` is a 400 (nginx answers the same).
Because the decoded path is what is normalised, the encoded forms (``%2e%2e``,
``.%2e``, ``..%2f``) are dot segments like the plain ones, while a double
encoding (``%252e``) is a literal name.

Routing and every later decision (the static file, the status pages) see only
this normalised path. The raw target is still what is forwarded upstream,
as nginx's ``proxy_pass`` without a URI does: the app normalises it by its own
rules, and a proxy that rewrote targets would change what signed URLs and
odd-but-legal paths mean.
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
        path = remove_dot_segments(path)
    return path


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on an absolute, slash-merged path; ClientError(400) above ``/``.

    ``/a/./b`` -> ``/a/b``, ``/a/b/..`` -> ``/a/``, ``/a/.`` -> ``/a/`` (a final dot
    segment leaves its slash, so a folder stays a folder). RFC 3986 would drop a ``..``
    at the root silently; such a path only comes from a client probing for traversal.
    """
    segments = path.split("/")[1:]
    out: list[str] = []
    for segment in segments:
        if segment == ".":
            continue
        if segment == "..":
            if not out:
                raise ClientError("path climbs above /")
            out.pop()
        else:
            out.append(segment)
    if segments[-1] in (".", "..") and out:
        out.append("")
    return "/" + "/".join(out)


class Router:
    """Longest-prefix match over a fixed set of routes, precomputed once."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True))

    def match(self, path: str) -> Route | None:
        for route in self._routes:
            if path.startswith(route.prefix):
                return route
        return None

    def matching(self, path: str) -> list[Route]:
        """Every route whose prefix matches, longest first (for explain)."""
        return [route for route in self._routes if path.startswith(route.prefix)]

    def __repr__(self) -> str:
        return f"<Router {[r.prefix for r in self._routes]}>"
