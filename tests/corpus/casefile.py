"""Reading corpus cases: ``NAME.http`` (the bytes to send) and ``NAME.expect`` (what must happen).

The ``.http`` format (see README.md) spells every byte out, so CR, LF, NUL and
other control bytes survive git, editors and review:

* line breaks in the file are ignored: each line is joined to the next;
* ``\\r`` ``\\n`` ``\\t`` ``\\0`` ``\\\\`` and ``\\xHH`` are the bytes they name;
* ``{{N*TEXT}}`` is TEXT (escapes allowed, on one line) repeated N times, for
  the size-limit cases;
* anything else is taken literally as ASCII.

A line may not end in a space or tab: an editor could strip it. Write ``\\x20``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

CASES = Path(__file__).resolve().parent / "cases"

_REPEAT = re.compile(r"\{\{(\d+)\*(.*?)\}\}")
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|[rnt0\\])")
_SIMPLE = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\x00", "\\": b"\\"}


class CaseError(ValueError):
    """A case file that does not follow the format."""


def decode(text: str, where: str = "<text>") -> bytes:
    """The wire bytes a ``.http`` file describes."""
    out = bytearray()
    for number, line in enumerate(text.splitlines(), 1):
        if line != line.rstrip(" \t"):
            raise CaseError(f"{where}:{number}: trailing whitespace; write it as \\x20 or \\t")
        line = _REPEAT.sub(lambda m: m[2] * int(m[1]), line)
        out += _unescape(line, f"{where}:{number}")
    return bytes(out)


def _unescape(line: str, where: str) -> bytes:
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(line):
        out += _ascii(line[pos:match.start()], where)
        token = match[1]
        out += bytes([int(token[1:], 16)]) if token[0] == "x" else _SIMPLE[token]
        pos = match.end()
    out += _ascii(line[pos:], where)
    return bytes(out)


def _ascii(text: str, where: str) -> bytes:
    if "\\" in text:
        raise CaseError(f"{where}: unknown escape in {text!r}")
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise CaseError(f"{where}: non-ASCII text; write bytes as \\xHH") from None


@dataclass(frozen=True)
class Expect:
    """What must happen when a case's bytes are sent to the corpus proxy.

    ``statuses``: the status of each response, in order ([] = none at all).
    ``closed``: the proxy closes the connection after them; otherwise the
    same connection must still serve a normal request.
    ``upstream``: how many requests reach the recording upstream.
    ``received_has``/``received_lacks``: regexes over what the upstream got.
    ``response_has``/``response_lacks``: regexes over the raw responses.
    ``send_in``: send the bytes in pieces of this size (many reads) instead of at once.
    ``half_close``: shut down the sending side afterwards (the client's EOF).
    ``head``: the responses answer HEAD requests (no body is read).
    """

    source: str
    statuses: list[int]
    closed: bool
    upstream: int
    why: str = ""
    received_has: list[str] = field(default_factory=list)
    received_lacks: list[str] = field(default_factory=list)
    response_has: list[str] = field(default_factory=list)
    response_lacks: list[str] = field(default_factory=list)
    send_in: int = 0
    half_close: bool = False
    head: bool = False


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: Expect

    def __str__(self) -> str:
        return self.name


def load(name: str, folder: Path = CASES) -> Case:
    raw = (folder / f"{name}.http").read_text("ascii")
    data = decode(raw, f"{name}.http")
    with open(folder / f"{name}.expect", "rb") as fh:
        table = tomllib.load(fh)
    try:
        expect = Expect(**table)
    except TypeError as exc:
        raise CaseError(f"{name}.expect: {exc}") from None
    if not expect.source.strip():
        raise CaseError(f"{name}.expect: source must cite where the case comes from")
    return Case(name, data, expect)


def names(folder: Path = CASES) -> list[str]:
    http = {p.stem for p in folder.glob("*.http")}
    expect = {p.stem for p in folder.glob("*.expect")}
    if http != expect:
        raise CaseError(f"cases without a partner file: {sorted(http ^ expect)}")
    return sorted(http)
