"""Helpers for the edge-protocol tests (TLS, WebSocket tunnels): certificates, a raw upgrading upstream, RSS.

Certificates come from trustme at test time; every server listens on
127.0.0.1 with a port chosen at run time; waits are polls with a deadline.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import threading
import time
from pathlib import Path

import trustme

from tests.helpers import ProxyProcess

WS_REQUEST = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def https_port(proxy: ProxyProcess) -> int:
    """The first TLS listener's port, from the proxy's "listening on https://HOST:PORT/" line."""
    return int(proxy.wait_for_line(r"listening on https://\S+:(\d+)/")[1])


def write_cert(cert: trustme.LeafCert, folder: Path, stem: str) -> tuple[Path, Path]:
    """stem.pem (chain, leaf first) and stem.key in ``folder``."""
    chain, key = folder / f"{stem}.pem", folder / f"{stem}.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return chain, key


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def peer_certificate(port: int, context: ssl.SSLContext, server_name: str | None) -> bytes:
    """The DER certificate the proxy presents for ``server_name`` (None: no SNI)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.getpeercert(binary_form=True)


class EagerClient:
    """A TLS client that sends its whole ClientHello the moment it is connected, before the server has
    accepted the connection or answered (as browsers and curl do), and finishes the handshake later.

    ``ssl.SSLObject`` over memory buffers, so the test decides when each flight is sent and how long
    to wait: ``finish`` raises TimeoutError instead of hanging when the server never answers.
    """

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str | None, send: slice = slice(None),
                 prefix: bytes = b""):
        """``send`` picks the part of the ClientHello to send now (all of it by default); ``prefix`` goes
        in the same write, before it (a PROXY header, as a load balancer sends one)."""
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_name)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.hello = self._step()[1]
        self.sock.sendall(prefix + self.hello[send])

    def _step(self) -> tuple[bool, bytes]:
        try:
            self.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        return done, self._outgoing.read()

    def finish(self, timeout: float) -> bytes:
        """The certificate (DER) the server presented, once the handshake is complete."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                raise TimeoutError(f"no TLS handshake within {timeout:g} s")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionResetError("closed by the server during the handshake")
            self._incoming.write(data)
            done, flight = self._step()
            self.sock.sendall(flight)
            if done:
                return self.tls.getpeercert(binary_form=True)

    def exchange(self, request: bytes, timeout: float = 5.0) -> bytes:
        """After ``finish``: send ``request`` over TLS, return what comes back until the server closes."""
        self.tls.write(request)
        self.sock.sendall(self._outgoing.read())
        response = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and select.select([self.sock], [], [], deadline - time.monotonic())[0]:
            data = self.sock.recv(65536)
            if not data:
                break
            self._incoming.write(data)
            try:
                while chunk := self.tls.read(65536):
                    response += chunk
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
        return response

    def close(self) -> None:
        self.sock.close()


def tls_site_config(app: str, *, server: str = "", limits: str = "", static: bool = False) -> str:
    """A proxy.toml for the HTTP/2 tests: a plain and a TLS listener (site.pem/site.key, see write_cert),
    [status], and everything forwarded to ``app``; ``static`` serves /static/ from the folder "static"."""
    files = '[[routes]]\nprefix = "/static/"\nstatic = "static"' if static else ""
    return f"""
[server]
listen = ["127.0.0.1:0"]
{server}
[limits]
{limits}
[tls]
listen = ["127.0.0.1:0"]
certificate = "site.pem"
key = "site.key"
[status]
[upstreams.app]
servers = ["{app}"]
{files}
[[routes]]
prefix = "/"
upstream = "app"
"""


def der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (VmRSS, in kB there)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) * 1024


def worker_pid(proxy: ProxyProcess) -> int:
    """The pid of a proxy's only worker (the master, proxy.pid, never holds a connection)."""
    return int(proxy.wait_for_line(r"worker (\d+) \(generation 1\) is accepting connections")[1])


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the end of an HTTP head; returns (head, bytes after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_until_eof(sock: socket.socket, limit: int = 1 << 26) -> bytes:
    chunks, total = [], 0
    while total < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


class RawUpgradeUpstream:
    """An upstream that answers each request head with 101 and then runs ``behave(sock, early_bytes)``.

    Lets a test script exactly what the app side of a tunnel does (half-close, stop reading, ...).
    ``heads`` records every request head received.
    """

    def __init__(self, behave) -> None:
        self.behave = behave
        self.heads: list[bytes] = []
        self.errors: list[BaseException] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                head, early = read_head(conn)
                self.heads.append(head)
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
                self.behave(conn, early)
            except BaseException as exc:  # surfaced by the test through .errors
                self.errors.append(exc)

    def close(self) -> None:
        self._sock.close()
