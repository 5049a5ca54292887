"""Values with placeholders: ``redirect = "https://{host}/new/{path}"`` and header rules.

A template is checked once, when the configuration is loaded: only the
placeholders below, and nothing outside printable ASCII, so no value can
carry a CR or LF into a header (response splitting, CWE-113). Every value a
placeholder stands for comes from a request head that passed http/rules.py
(no control characters in the target or Host) or from the proxy itself, so
an expanded template is still a valid header value.

``{path}`` is the path *after the route's prefix* (for prefix ``/old/``,
``/old/a/b`` gives ``a/b``), so ``redirect = "https://{host}/new/{path}"``
moves a whole subtree; ``{uri}`` is the whole target as the client sent it.
Both keep the client's percent-encoding: they go into a Location or a header,
where a decoded path would not be a valid URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

PLACEHOLDERS = {
    "scheme": 'the scheme the client used, "http" or "https"',
    "host": "the requested host name, without its port",
    "uri": "the request target as sent: path and query",
    "path": "the path after the route's prefix, as sent (percent-encoded)",
    "query": 'the query string, without "?" ("" when there is none)',
    "client_ip": "the client's address (after [server] trusted_proxies)",
    "request_id": "the request's X-Request-ID",
}

_PART_RE = re.compile(r"\{([^{}]*)\}")
_PRINTABLE_RE = re.compile(r"^[\x20-\x7e]*$")
# What quote() leaves alone in a path that had to be re-encoded: RFC 3986 pchar and "/".
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class TemplateError(ValueError):
    """The message says what is wrong with the template (the loader adds the key)."""


@dataclass(frozen=True, slots=True)
class Template:
    """A value with placeholders, split once: literal bytes and placeholder names, in order."""

    text: str
    parts: tuple[bytes | str, ...]  # bytes: literal; str: a placeholder's name
    literal: bytes | None  # the whole value when it has no placeholder

    def __str__(self) -> str:
        return self.text

    def expand(self, request: "Vars") -> bytes:
        if self.literal is not None:
            return self.literal
        return b"".join(part if type(part) is bytes else _VALUES[part](request) for part in self.parts)


def compile_template(text: str) -> Template:
    """Split ``text``; TemplateError for an unknown placeholder, a stray brace or a control character."""
    if not isinstance(text, str):
        raise TemplateError("expected a string")
    if not _PRINTABLE_RE.fullmatch(text):
        raise TemplateError("only printable ASCII is allowed (no CR, LF or other control characters)")
    if "{" in _stray(text) or "}" in _stray(text):
        raise TemplateError("a brace that is not part of a {placeholder}")
    parts: list[bytes | str] = []
    at = 0
    for match in _PART_RE.finditer(text):
        literal = text[at:match.start()]
        name = match[1]
        if name not in PLACEHOLDERS:
            known = " ".join("{%s}" % n for n in PLACEHOLDERS)
            raise TemplateError(f"unknown placeholder {{{name}}} (known: {known})")
        if literal:
            parts.append(literal.encode())
        parts.append(name)
        at = match.end()
    rest = text[at:]
    if rest:
        parts.append(rest.encode())
    literal = text.encode() if all(type(p) is bytes for p in parts) else None
    return Template(text, tuple(parts), literal)


def _stray(text: str) -> str:
    """The text with every {placeholder} removed: any brace left is a mistake."""
    return _PART_RE.sub("", text)


class Vars:
    """What the placeholders of one request stand for; made only for routes whose templates need it."""

    __slots__ = ("head", "host", "scheme", "client_ip", "request_id", "prefix")

    def __init__(self, head, host: bytes, scheme: bytes, client_ip: str, request_id: bytes, prefix: str) -> None:
        self.head = head
        self.host = host
        self.scheme = scheme
        self.client_ip = client_ip
        self.request_id = request_id
        self.prefix = prefix


def host_name(host: bytes) -> bytes:
    """``Shop.Example.test:8080`` -> ``shop.example.test``; ``[::1]:80`` -> ``[::1]``."""
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1].lower()
    return host.partition(b":")[0].rstrip(b".").lower()


def raw_remainder(head, prefix: str) -> bytes:
    """The path after ``prefix`` as the client sent it (percent-encoding kept).

    Routing matched the decoded, normalised path; when the raw path does not
    start with the prefix as written (``/%61pi/x`` for ``/api/``, or dot
    segments), the normalised remainder is percent-encoded again instead.
    """
    raw = head.target.partition(b"?")[0]
    encoded = prefix.encode()
    if raw.startswith(encoded) and b"/." not in raw and b"//" not in raw:
        return raw[len(encoded):]
    return quote(head.path[len(prefix):], safe=_PATH_SAFE).encode()


_VALUES = {
    "scheme": lambda v: v.scheme,
    "host": lambda v: host_name(v.host),
    "uri": lambda v: v.head.target,
    "path": lambda v: raw_remainder(v.head, v.prefix),
    "query": lambda v: v.head.query,
    "client_ip": lambda v: v.client_ip.encode(),
    "request_id": lambda v: v.request_id,
}
