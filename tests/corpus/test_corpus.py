"""Runs every case of tests/corpus/cases/ against the real proxy and a recording upstream.

One proxy process serves the whole module (see CONFIG). For each case the
bytes are sent on a fresh connection, the responses are read and compared
with the case's ``.expect``, the upstream's record is checked, and then the
proxy must still answer normal requests, on that connection when it was to
stay open and on a new one in every case.
"""

from __future__ import annotations

import os
import re
import socket
import time

import pytest

from tests.helpers import ProxyProcess, RecordingUpstream

from . import casefile

# The corpus proxy. Header limits are the defaults (32k head, 8k request line,
# 100 fields); the body limit is lowered to 64k so the cases that cross it stay small.
CONFIG = """
    [server]
    listen = ["127.0.0.1:0"]
    [limits]
    max_body_bytes = "64k"
    header_timeout = 5.0
    body_timeout = 5.0
    [log]
    access = "off"
    [upstreams.app]
    servers = ["{upstream}"]
    read_timeout = 5.0
    [[routes]]
    prefix = "/static/"
    static = "site/static"
    cache_control = "public, max-age=60"
    [[routes]]
    prefix = "/"
    upstream = "app"
"""

SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT"
ALPHABET_MTIME = 1_700_000_000  # Tue, 14 Nov 2023 22:13:20 GMT
READ_TIMEOUT = 5.0
PACE = 0.002  # between pieces when a case is sent in many reads: lets each piece arrive on its own

NAMES = casefile.names()


def build_site(root) -> None:
    """The static folder the cases probe, with files and symlinks that point out of it."""
    (root / "secret.txt").write_bytes(SECRET + b"\n")
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET + b"\n")
    static = root / "static"
    static.mkdir()
    (static / "hello.txt").write_bytes(b"hello, corpus\n")
    (static / "alphabet.txt").write_bytes(b"abcdefghijklmnopqrstuvwxyz")
    os.utime(static / "alphabet.txt", (ALPHABET_MTIME, ALPHABET_MTIME))  # the date-* cases name this instant
    (static / "caf\u00e9.txt").write_bytes(b"utf-8 name\n")
    (static / ".env").write_bytes(SECRET + b" in a dotfile\n")
    (static / ".git").mkdir()
    (static / ".git" / "config").write_bytes(SECRET + b" in .git\n")
    (static / "sub").mkdir()
    (static / "sub" / "index.html").write_bytes(b"<p>sub index</p>\n")
    (static / "sub" / ".hidden").write_bytes(SECRET + b" hidden\n")
    (static / "noindex").mkdir()
    (static / "noindex" / "file.txt").write_bytes(b"in a folder without index\n")
    (static / "app.js").write_bytes(b"console.log('plain');\n")
    (static / "app.js.gz").write_bytes(b"\x1f\x8bgzipped-bytes")
    os.symlink("hello.txt", static / "inside-link")
    os.symlink("../secret.txt", static / "escape-link")
    os.symlink("../outside", static / "escape-dir")
    os.symlink(str(root / "secret.txt"), static / "absolute-link")
    (static / "leaky").mkdir()
    os.symlink("../../secret.txt", static / "leaky" / "index.html")
    (static / "lib.js").write_bytes(b"console.log('lib');\n")
    os.symlink("../secret.txt", static / "lib.js.gz")


def start(folder) -> tuple[ProxyProcess, RecordingUpstream]:
    """The corpus proxy with its static site in ``folder``, and the upstream behind it."""
    site = folder / "site"
    site.mkdir()
    build_site(site)
    upstream = RecordingUpstream()
    return ProxyProcess(folder, CONFIG.format(upstream=upstream.address)), upstream


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    proxy, upstream = start(tmp_path_factory.mktemp("corpus"))
    yield proxy, upstream
    proxy.stop()
    upstream.close()


# --- reading responses --------------------------------------------------------

class Reader:
    """Reads raw responses off a socket; the bytes stay available for checks."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.raw = b""
        self.eof = False

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        self.raw += chunk
        return True

    def response(self, head_only: bool, deadline: float) -> int | None:
        """The status of the next complete response, or None at EOF/timeout."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill(deadline):
                return None
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
        assert match, f"malformed status line from the proxy: {head[:80]!r}"
        status = int(match[1])
        headers = head.lower()
        body_length = 0
        if not (head_only or status in (204, 304) or 100 <= status < 200):
            length = re.search(rb"\r\ncontent-length: *(\d+)", headers)
            if length:
                body_length = int(length[1])
            elif b"\r\ntransfer-encoding: chunked" in headers:
                while not rest.endswith(b"0\r\n\r\n") and self._fill(deadline):
                    rest = self.buffer.partition(b"\r\n\r\n")[2]
                body_length = len(rest)
            else:
                while self._fill(deadline):
                    pass
                rest = self.buffer.partition(b"\r\n\r\n")[2]
                body_length = len(rest)
        while len(self.buffer) - len(head) - 4 < body_length:
            if not self._fill(deadline):
                raise AssertionError(f"response {status} ended before its body")
        self.buffer = self.buffer[len(head) + 4 + body_length:]
        return status

    def closed(self, deadline: float) -> bool:
        """True when the proxy closes the connection with nothing more to say."""
        while self._fill(deadline):
            pass
        return self.eof and not self.buffer


def send(sock: socket.socket, data: bytes, piece: int) -> None:
    """Send all of ``data``; the proxy may close early (it answered already), which is fine."""
    try:
        if not piece:
            sock.sendall(data)
            return
        for start in range(0, len(data), piece):
            sock.sendall(data[start:start + piece])
            time.sleep(PACE)
    except (BrokenPipeError, ConnectionResetError):
        pass


def play(sock: socket.socket, case: casefile.Case, timeout: float = READ_TIMEOUT) -> tuple[list[int], Reader, float]:
    """Send a case on ``sock``; the statuses of the responses it expects (fewer if they do not come)."""
    expect = case.expect
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    send(sock, case.data, expect.send_in)
    if expect.half_close:
        sock.shutdown(socket.SHUT_WR)
    reader = Reader(sock)
    deadline = time.monotonic() + timeout
    statuses = []
    for _ in expect.statuses:
        status = reader.response(expect.head, deadline)
        if status is None:
            break
        statuses.append(status)
    return statuses, reader, deadline


NORMAL_STATIC = b"GET /static/hello.txt HTTP/1.1\r\nHost: corpus\r\n\r\n"
NORMAL_PROXIED = b"GET /still-alive HTTP/1.1\r\nHost: corpus\r\nConnection: close\r\n\r\n"


def normal_request_works(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        sock.sendall(NORMAL_STATIC + NORMAL_PROXIED)
        reader = Reader(sock)
        deadline = time.monotonic() + READ_TIMEOUT
        assert reader.response(False, deadline) == 200
        assert reader.response(False, deadline) == 200
        assert reader.closed(deadline)


# --- the corpus -----------------------------------------------------------------

def test_case_format_decodes_escapes_and_repeats():
    text = "GET / HTTP/1.1\\r\\n\nX: a\\x00\\tb\\\\{{3*z\\r}}\\x20\\0\n"
    assert casefile.decode(text) == b"GET / HTTP/1.1\r\nX: a\x00\tb\\z\rz\rz\r \x00"
    with pytest.raises(casefile.CaseError, match="trailing whitespace"):
        casefile.decode("Host: a \n")
    with pytest.raises(casefile.CaseError, match="unknown escape"):
        casefile.decode("\\q")
    with pytest.raises(casefile.CaseError, match="non-ASCII"):
        casefile.decode("caf\u00e9")


def test_corpus_is_large_and_cited():
    assert len(NAMES) >= 80
    for name in NAMES:
        casefile.load(name)  # raises on a malformed file or a missing source


@pytest.mark.parametrize("doc, pattern", [
    ("README.md", r"the (\d+)-case hostile-input corpus"), ("README.md", r"\| (\d+) hostile raw requests"),
    ("docs/security.md", r"`tests/corpus/cases/`, (\d+) cases"), ("docs/security.md", r"# the (\d+) hostile-input"),
])
def test_the_docs_state_the_number_of_cases(doc, pattern):
    from tests.helpers import ROOT

    assert [int(n) for n in re.findall(pattern, (ROOT / doc).read_text())] == [len(NAMES)], (doc, pattern)


@pytest.mark.parametrize("name", NAMES)
def test_case(corpus, name):
    proxy, upstream = corpus
    case = casefile.load(name)
    expect = case.expect
    before = len(upstream.received)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=READ_TIMEOUT) as sock:
        statuses, reader, deadline = play(sock, case)
        assert statuses == expect.statuses, f"{name}: {expect.why}\nresponses: {reader.raw[:600]!r}"
        if expect.closed:
            assert reader.closed(deadline), f"{name}: connection left open; unread {reader.buffer[:200]!r}"
        responses = reader.raw
        if not expect.closed:
            assert not reader.eof, f"{name}: connection closed, expected keep-alive"
            sock.sendall(NORMAL_STATIC)
            assert reader.response(False, time.monotonic() + READ_TIMEOUT) == 200

    received = upstream.received[before:]
    assert len(received) == expect.upstream, f"{name}: upstream got {received!r}"
    seen = b"".join(received)
    for pattern in expect.received_has:
        assert re.search(pattern.encode(), seen), f"{name}: upstream lacks /{pattern}/ in {seen!r}"
    for pattern in expect.received_lacks:
        assert not re.search(pattern.encode(), seen), f"{name}: upstream got /{pattern}/ in {seen!r}"
    for pattern in expect.response_has:
        assert re.search(pattern.encode(), responses), f"{name}: response lacks /{pattern}/"
    for pattern in expect.response_lacks:
        assert not re.search(pattern.encode(), responses), f"{name}: response has /{pattern}/"
    assert SECRET not in responses, f"{name}: a file outside the static folder was served"
    normal_request_works(proxy.port)
