"""Listening sockets, the state every connection shares, and a graceful stop.

``serve(config, shutdown=...)`` is the whole server: it binds, calls
``on_ready`` with the bound addresses, and runs until the ``shutdown`` future
completes (signals are wired to it by the CLI; tests complete it directly).
Stopping follows nginx's graceful quit: stop accepting, close idle keep-alive
connections, let in-flight requests finish within ``grace_period``, then cut
what is left.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Awaitable, Callable

from ..config import Address, Config, Listen, UnixAddress
from ..http.responses import error_bytes
from ..tls import Certificates
from .board import Board
from .client import ClientProtocol
from .h2conn import PriorKnowledge
from .proxied import PendingHeader
from .sockets import bind_all, bound_address, close_listener, describe_listener
from .tls import log_tls_listening, tls_protocol
from .worker import Worker
from .zones import Zones

log = logging.getLogger("proxy")


def accept(worker: Worker, scheme: bytes = b"http") -> asyncio.Protocol:
    """The protocol for a new connection: served, or answered 503 at ``[server] max_connections``."""
    if worker.conns.at_capacity(len(worker.edge.handshakes)):
        return _Refuse(worker)
    if worker.config.server.h2c:
        return PriorKnowledge(worker)  # HTTP/2 if it starts with the preface, else HTTP/1.1
    return ClientProtocol(worker, scheme)


def accept_proxied(worker: Worker) -> asyncio.Protocol:
    """The same on a ``proxy_protocol`` listener: its PROXY header is read first (server/proxied.py)."""
    if worker.conns.at_capacity(len(worker.edge.handshakes)):
        return _Refuse(worker)
    return PendingHeader(worker)


def factory(worker: Worker, entry: Listen, secure: bool) -> Callable[[], asyncio.Protocol]:
    """The protocol factory for a listen entry: TLS or not, with the PROXY protocol or not."""
    if secure:
        return tls_protocol(worker, entry.proxy_protocol)  # the handshake (and a PROXY header) first
    if entry.proxy_protocol:
        return lambda: accept_proxied(worker)
    return lambda: accept(worker)


class _Refuse(asyncio.Protocol):
    """A connection over max_connections: answering costs one write; holding it would cost what the
    limit protects."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def connection_made(self, transport) -> None:
        w = self.worker
        transport.write(error_bytes(503, w.server_name, w.clock.date(), extra=[(b"retry-after", b"1")]))
        transport.close()


class Acceptor:
    """Accepts connections on one listening socket.

    Not ``loop.create_server``: stopping must close the listening socket at
    once (so new connections are refused, or go to the workers of a new
    generation), and on Python 3.11 a connection that asyncio's Server
    accepted in the same loop turn as ``Server.close()`` fails an assertion
    in ``Server._attach`` and is leaked unanswered until the process exits.
    Here every accepted socket becomes a connection, whatever happens next.
    """

    BATCH = 64  # accepts per wake-up, so one busy listener cannot starve the loop

    def __init__(self, worker: Worker, sock, factory: Callable[[], asyncio.Protocol] | None = None) -> None:
        self.worker = worker
        self.sock = sock
        self.factory = factory or (lambda: accept(worker))  # tls_protocol for [tls] sockets
        self.pending: set[asyncio.Task] = set()
        worker.loop.add_reader(sock.fileno(), self._accept)

    def __repr__(self) -> str:
        return f"<Acceptor {self.sock.getsockname() if self.sock.fileno() >= 0 else 'closed'}>"

    def _accept(self) -> None:
        loop = self.worker.loop
        for _ in range(self.BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                # Out of file descriptors or memory: pause this listener briefly instead of spinning.
                log.error("accept failed: %s; pausing this listener for 0.5 s", exc.strerror or exc)
                loop.remove_reader(self.sock.fileno())
                loop.call_later(0.5, self._resume)
                return
            conn.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(self.factory, conn))
            self.pending.add(task)
            task.add_done_callback(self._accepted)

    def _accepted(self, task: asyncio.Task) -> None:
        self.pending.discard(task)
        if not task.cancelled():
            task.exception()  # a peer that left before its transport existed: nothing to serve

    def _resume(self) -> None:
        if self.sock.fileno() >= 0:
            self.worker.loop.add_reader(self.sock.fileno(), self._accept)

    async def close(self) -> None:
        """Stop accepting now; the connections already accepted still get served."""
        if self.sock.fileno() >= 0:
            self.worker.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if self.pending:
            await asyncio.wait(list(self.pending))


async def serve(config: Config, *, shutdown: Awaitable, sockets=None, tls_sockets=None,
                certificates: Certificates | None = None,
                on_ready: Callable[[list[Address | UnixAddress]], None] | None = None, grace: float | None = None,
                board: Board | None = None, slot: int | None = None, zones: Zones | None = None,
                notices=None, certificates_version: int = 0) -> None:
    """Run the proxy until ``shutdown`` completes, then stop gracefully.

    ``shutdown`` may complete with a number of seconds that replaces the
    grace period (0 stops at once, for SIGQUIT). ``sockets`` are the
    (listen entry, listening socket) pairs to serve on (a worker gets the
    master's), ``tls_sockets`` those of ``[tls] listen`` and ``certificates``
    the contexts for them; without sockets ``serve`` binds both lists itself
    (and closes them, unix socket files included, when it ends). ``zones``:
    the master's shared memory for rate and connection limits (without it,
    this process's own). ``notices``: the counters the certificate manager
    bumps (server/acme.py), ``certificates_version`` their value when
    ``certificates`` were read.
    """
    loop = asyncio.get_running_loop()
    worker = Worker(config, loop, board, slot, certificates, zones, notices, certificates_version)
    own = sockets is None
    if own:
        sockets = bind_all(config.server.listen)
        try:
            tls_sockets = bind_all(config.tls.listen if config.tls is not None else ())
        except BaseException:
            for _, sock in sockets:
                close_listener(sock)
            raise
        for entry, sock in sockets:
            log.info("%s", describe_listener(entry, sock, "http"))
        log_tls_listening(tls_sockets, worker.tls)
    tls_sockets = tls_sockets or []
    for group in worker.groups.values():
        await group.start()
    tcp_ports = [bound_address(sock).port for _, sock in tls_sockets if sock.family != socket.AF_UNIX]
    if tcp_ports:
        worker.edge.https_port = tcp_ports[0]
    acceptors = [Acceptor(worker, sock, factory(worker, entry, False)) for entry, sock in sockets]
    acceptors += [Acceptor(worker, sock, factory(worker, entry, True)) for entry, sock in tls_sockets]
    worker.publish()
    if on_ready is not None:
        on_ready([bound_address(sock) for _, sock in sockets + tls_sockets])
    try:
        override = await shutdown
        if override is not None:
            grace = override
    finally:
        for acceptor in acceptors:
            await acceptor.close()
        if own:
            for _, sock in sockets + tls_sockets:
                close_listener(sock)
        log.info("shutting down: %d request(s) in flight", worker.conns.active)
        await worker.stop(config.server.grace_period if grace is None else grace)
        if board is not None:
            worker.publish(final=True)  # the last counts, for the master to keep once this worker is gone
            board.clear(slot)
        log.info("stopped")



