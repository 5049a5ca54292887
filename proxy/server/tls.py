"""HTTPS listeners: accept TCP, shake hands with the current certificates, then serve as plain HTTP does
(or as HTTP/2, server/h2conn.py, when the client chose "h2" by ALPN).

Why not asyncio's ``ssl=`` argument when accepting: asyncio would then
swallow failed handshakes without a word (it logs them only in debug mode),
or fail the accepting task with them. Accepting plain TCP and calling
``loop.start_tls`` per connection instead puts every failure in our hands:
counted in the metrics, and logged once a minute at most
(``tls.FailureLog``). Each handshake uses ``worker.tls``, the certificates
this worker was started with; a reload (SIGHUP to the master) starts new
workers with certificates read afresh, and no socket is closed.

No byte of the ClientHello may be lost between accepting and ``start_tls``.
asyncio reads nothing before then: it honours the ``pause_reading()`` in
``_Holding.connection_made``. uvloop does not: it starts reading right after
``connection_made`` returns (a pause there is a no-op), and the task that
calls ``start_tls`` runs a loop turn later, after uvloop has polled the
socket, so a hello already sent (clients send it at once) reaches
``_Holding.data_received`` first. Dropped there, the handshake would wait for
it until header_timeout: the old "uvloop hangs with [[tls.sites]]", where any
name could lose the race and every connection does when the worker is busy.
So ``_Holding`` keeps those bytes and pauses, and ``_replay`` hands them to
the TLS protocol that ``start_tls`` installs, before its handshake starts.

ACME (server/acme.py): with ``acme = true`` sites, each new connection first
lets ``worker.acme.check`` take up certificates the manager renewed. While a
tls-alpn-01 validation is pending, ``_Holding`` reads the whole ClientHello
itself (the same replay carries it to the handshake afterwards): a client
that offers ``acme-tls/1`` alone for that name is the CA, and gets the
validation certificate and then a closed connection (RFC 8737 section 3);
everyone else shakes hands as usual.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
from typing import Callable

from ..acme.challenges import NotHello, client_hello
from ..config import Address
from ..errors import ProxyHeaderError
from ..http import proxyproto
from ..http.proxyproto import UNIX_CLIENT
from ..tls import Certificates, Failure, FailureLog, classify, describe
from .client import ClientProtocol
from .h2conn import Http2Protocol
from .sockets import describe_listener

log = logging.getLogger("proxy")

# asyncio's SSLProtocol gives every TLS connection a 256 KiB receive buffer, zero-filled (so resident) when
# the connection is made: measured 293 KiB per connection, which at [server] max_connections = 4096 would
# be 1.2 GiB per worker. 32 KiB holds two full TLS records; measured 73 KiB per connection and no loss of
# throughput (ten 4 MiB messages echoed over wss: 3.9 s against 4.8 s). It is a class attribute of a
# private module, so test_wss_tunnels_cost_little_memory fails if a Python version stops honouring it.
# uvloop's TLS protocol has its own fixed 256 KiB buffer (a compile-time constant, no knob), malloc'ed and
# never zeroed: a quiet connection holds only the pages reads touched (measured 51-60 KiB per wss tunnel),
# a busy one up to all of it (docs/performance.md, "uvloop and TLS").
SSL_READ_BUFFER = 32 * 1024
if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > SSL_READ_BUFFER:
    asyncio.sslproto.SSLProtocol.max_size = SSL_READ_BUFFER


class TlsClientProtocol(ClientProtocol):
    """A client connection over TLS. TLS has no half-close in asyncio: a client's close_notify (or FIN)
    ends the connection, and returning True from eof_received would only make asyncio log a warning."""

    __slots__ = ("_early",)

    def __init__(self, worker, scheme: bytes = b"https", client_ip: str | None = None) -> None:
        super().__init__(worker, scheme, client_ip)
        self._early: list[bytes] | None = []

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        early, self._early = self._early, None
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        # The handshake's last read may carry the first request: asyncio hands it over before
        # start_tls returns, so before connection_made; it is kept until then.
        if self._early is not None:
            self._early.append(data)
        else:
            super().data_received(data)

    def eof_received(self) -> bool:
        super().eof_received()
        return False


class _Holding(asyncio.Protocol):
    """Owns a fresh TCP connection on a TLS port until ``start_tls`` takes it over, keeping whatever it
    reads before then (``early``: the start of the ClientHello, under uvloop only; or, on a
    ``proxy_protocol`` listener, what followed the PROXY header in its last read).

    On a ``proxy_protocol`` listener it first reads the PROXY header (it comes before the TLS
    handshake: the balancer writes it in clear as soon as it connects): ``header`` is then a future
    that the handshake task waits for, resolved with the header or failed with why there is none.

    While a tls-alpn-01 validation is pending (ACME, see the module docstring), ``hello`` is a future
    resolved with the whole ClientHello (acme.challenges.Hello, read after any PROXY header), or None
    when what came is not one.
    """

    __slots__ = ("_worker", "_transport", "early", "header", "hello")

    def __init__(self, worker, proxied: bool = False) -> None:
        self._worker = worker
        self._transport: asyncio.Transport | None = None
        self.early = bytearray()
        self.header: asyncio.Future | None = worker.loop.create_future() if proxied else None
        self.hello: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        worker = self._worker
        edge = worker.edge
        if worker.conns.at_capacity(len(edge.handshakes)):
            transport.abort()  # there is no way to say 503 before the handshake
            return
        self._transport = transport
        acme = worker.acme
        if acme is not None:
            acme.check(worker)  # a renewed certificate, a validation pending: taken up before this handshake
            if acme.alpn:
                self.hello = worker.loop.create_future()
        if self.header is None and self.hello is None:
            transport.pause_reading()  # honoured by asyncio; a no-op under uvloop (see the module docstring)
        task = worker.loop.create_task(_handshake(worker, transport, self))
        edge.handshakes.add(task)
        task.add_done_callback(edge.handshakes.discard)

    def data_received(self, data: bytes) -> None:
        # uvloop read the ClientHello before start_tls took the transport: keep it for _replay, and let
        # the rest (if the hello spans several reads) wait in the kernel until start_tls resumes reading.
        self.early += data
        header = self.header
        if header is not None and not header.done():
            try:
                found = proxyproto.parse(self.early)
            except ProxyHeaderError as exc:
                found = exc
            if found is None:
                return  # more of the header to read
            if isinstance(found, ProxyHeaderError):
                header.set_exception(found)
                self._transport.pause_reading()
                return
            del self.early[:found.length]
            header.set_result(found)
        hello = self.hello
        if hello is not None and not hello.done():
            try:
                found = client_hello(bytes(self.early))
            except NotHello:  # OpenSSL will say what it is
                found = False
            if found is None:
                return  # read on: the hello is not complete yet
            hello.set_result(found or None)
        self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._no_header(ProxyHeaderError("the connection closed before its PROXY header ended"))
        self._no_hello()
        return False

    def connection_lost(self, exc) -> None:
        self._no_header(ConnectionResetError())
        self._no_hello()

    def _no_hello(self) -> None:
        if self.hello is not None and not self.hello.done():
            self.hello.set_result(None)

    def _no_header(self, exc: BaseException) -> None:
        header = self.header
        if header is not None and not header.done():
            header.set_exception(exc)


def _replay(transport: asyncio.Transport, holding: _Holding) -> None:
    """Give the TLS protocol that ``start_tls`` installed the bytes the holding protocol read first.

    Runs from ``call_soon``, queued just before ``start_tls`` is called. Both asyncio and uvloop swap the
    transport's protocol before ``start_tls`` first suspends, then queue the TLS protocol's
    ``connection_made`` (which starts the handshake) and the transport's ``resume_reading``, so this runs
    first: the bytes reach the TLS protocol's incoming buffer before its handshake or any later read does.
    """
    protocol = transport.get_protocol()
    if protocol is holding or transport.is_closing():  # start_tls failed before taking over, or a reset
        return
    _feed(protocol, bytes(holding.early))
    holding.early.clear()


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver bytes to a protocol as a transport would: into its buffers if it is a buffered protocol
    (the TLS protocols of asyncio and uvloop both are), else through data_received."""
    get_buffer = getattr(protocol, "get_buffer", None)
    if get_buffer is None:
        protocol.data_received(data)
        return
    view = memoryview(data)
    while view:
        buffer = get_buffer(len(view))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


async def _handshake(worker, transport: asyncio.Transport, holding: _Holding) -> None:
    peer = transport.get_extra_info("peername")
    if transport.is_closing():  # reset before this task ran
        worker.edge.handshake_failed(ConnectionResetError(), peer, worker)
        return
    client_ip = None
    if holding.header is not None:
        found = await _proxy_header(worker, transport, holding, peer)
        if found is None:
            return
        client_ip = found.client_ip
        peer = found.client or peer  # a failed handshake is then logged with the client's address
    context = worker.tls.default
    validation = None
    if holding.hello is not None:  # a tls-alpn-01 validation is pending: is this the CA?
        try:
            hello = await asyncio.wait_for(asyncio.shield(holding.hello), worker.config.limits.header_timeout)
        except TimeoutError as exc:
            transport.abort()
            worker.edge.handshake_failed(exc, peer, worker)
            return
        validation = worker.acme.validation_context(hello) if hello is not None else None
        context = validation or context
        if transport.is_closing():
            return
    protocol = TlsClientProtocol(worker, b"https", client_ip)
    if holding.early:
        worker.loop.call_soon(_replay, transport, holding)
    try:
        tls_transport = await worker.loop.start_tls(
            transport, protocol, context, server_side=True,
            ssl_handshake_timeout=worker.config.limits.header_timeout)
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError; so are resets and asyncio's timeout
        transport.abort()
        worker.edge.handshake_failed(exc, peer, worker)
        return
    worker.metrics.tls_handshakes += 1
    if validation is not None:  # RFC 8737 section 3: the CA only looks at the certificate, then closes
        log.info("acme: tls-alpn-01 validation of %s from %s answered", hello.server_name, _peer_text(peer))
        tls_transport.abort()
        return
    worker.edge.handshakes.discard(asyncio.current_task())  # from here on it counts as a connection
    ssl_object = tls_transport.get_extra_info("ssl_object")
    if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
        # The client chose HTTP/2 ([tls] http2 offered it): the connection is an Http2Protocol's, and what
        # the TLS protocol already delivered (kept in _early) goes to it.
        early, protocol._early = protocol._early, None
        http2 = Http2Protocol(worker, b"https", client_ip)
        tls_transport.set_protocol(http2)
        http2.connection_made(tls_transport)
        for data in early:
            http2.data_received(data)
        return
    protocol.connection_made(tls_transport)


async def _proxy_header(worker, transport: asyncio.Transport, holding: _Holding, peer):
    """The PROXY header of a connection on a proxy_protocol TLS listener, or None (the connection is then
    closed and the refusal logged)."""
    try:
        async with asyncio.timeout(worker.config.limits.header_timeout):
            return await holding.header
    except ProxyHeaderError as exc:
        refusal = exc
    except TimeoutError:
        refusal = ProxyHeaderError("no PROXY header within header_timeout")
    except ConnectionResetError:
        refusal = None  # gone before it said anything worth a line (a balancer's TCP check)
    transport.abort()
    if refusal is not None:
        worker.edge.proxy_header_refused(refusal, peer, worker)
    return None


def _peer_text(peer) -> str:
    """A peer address for the log: "host:port", "unix:" for a unix socket's client, "?" when unknown."""
    if isinstance(peer, tuple) and peer and peer[0] != UNIX_CLIENT:
        return str(Address(peer[0], peer[1]))
    return UNIX_CLIENT if isinstance(peer, (str, tuple)) else "?"


class EdgeState:
    """What the edge listeners share in one process: TLS handshakes in progress, and the logs of failed
    handshakes and refused PROXY headers."""

    def __init__(self) -> None:
        self.handshakes: set[asyncio.Task] = set()
        self.failures = FailureLog()
        self.proxy_failures = FailureLog(what="PROXY protocol header refused")
        self.https_port: int | None = None  # the first TLS listener's bound port, for redirect_http

    def proxy_header_refused(self, exc: ProxyHeaderError, peer, worker) -> None:
        """A connection on a proxy_protocol listener is closed for its header: said once a minute at most."""
        worker.metrics.proxy_protocol_refused += 1
        line = self.proxy_failures.note(Failure("proxy_protocol", str(exc)), _peer_text(peer), worker.loop.time())
        if line is not None:
            log.warning("%s", line)

    def handshake_failed(self, exc: BaseException, peer, worker) -> None:
        failure = classify(exc)
        worker.metrics.tls_failures[failure.kind] += 1
        line = self.failures.note(failure, _peer_text(peer), worker.loop.time())
        if line is not None:
            log.warning("%s", line)

    async def finish(self, timeout: float) -> None:
        """Let handshakes in progress complete (their connections are then served and drained
        like any other) for up to ``timeout`` seconds; cancel what is left."""
        if self.handshakes and timeout > 0:
            await asyncio.wait(list(self.handshakes), timeout=timeout)
        for task in list(self.handshakes):
            task.cancel()


def tls_protocol(worker, proxied: bool = False) -> Callable[[], asyncio.Protocol]:
    """The protocol factory for connections accepted on a [tls] socket (``proxied``: proxy_protocol on)."""
    return lambda: _Holding(worker, proxied)


def log_tls_listening(listeners, certificates: Certificates | None) -> None:
    """The lines a process that binds [tls] listen logs (the master, or serve() on its own);
    ``listeners``: (listen entry, socket) pairs."""
    if certificates is not None and listeners:
        log.info("TLS certificates: %s", describe(certificates))
        for why in certificates.pending:
            log.warning("acme: %s", why)
    for entry, sock in listeners:
        log.info("%s", describe_listener(entry, sock, "https"))
