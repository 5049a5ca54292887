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
import json
import logging
import time
from typing import Awaitable, Callable

from ..accesslog import AccessLog, AccessRecord
from ..metrics import Metrics, merge, worker_view
from .board import PUBLISH_INTERVAL, Board
from ..config import Address, Config
from ..http.headers import request_id
from ..http import static
from ..http.responses import Clock, error_bytes
from ..http.routing import Router
from ..tls import Certificates, load_certificates
from ..upstream.group import UpstreamGroup
from .channel import Channel
from .client import DRAIN_IDLE, ClientHandler
from .sockets import bind_all, bound_address
from .tls import EdgeState, log_tls_listening, tls_protocol

log = logging.getLogger("proxy")


class Runtime:
    """What every connection of this process shares: config, routes, pools, logs."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, board: Board | None = None,
                 slot: int | None = None, certificates: Certificates | None = None) -> None:
        self.config = config
        self.board = board  # shared with the other workers, for whole-proxy status pages
        self.slot = slot
        self.loop = loop
        self.router = Router(config.routes)
        self.groups = {name: UpstreamGroup(up, loop) for name, up in config.upstreams.items()}
        self.access = AccessLog(config.log.access, config.log.format)
        self.metrics = Metrics()
        server = config.server
        self.files = static.OpenFileCache(server.open_file_cache_valid, server.open_file_cache_entries,
                                          server.open_file_cache_bytes)
        self.clock = Clock()
        self.server_name = config.server.name.encode()
        self.via = b"1.1 " + self.server_name
        self.closing = False
        self.handlers: set[ClientHandler] = set()
        self.refused = 0  # connections answered 503 at max_connections
        # Edge (TLS): the certificates this process serves: built by the master once per generation and
        # inherited by its workers, or built here from the config. ``edge``: handshakes and their failures.
        self.tls = certificates if certificates is not None or config.tls is None else \
            load_certificates(config.tls, config.path)
        self.edge = EdgeState()

    def __repr__(self) -> str:
        return f"<Runtime {self.config.path} connections={len(self.handlers)} closing={self.closing}>"

    new_request_id = staticmethod(request_id)

    def publish(self) -> None:
        """Pin this worker's counters on the board, and again every PUBLISH_INTERVAL."""
        if self.board is None:
            return
        payload = json.dumps(worker_view(self), separators=(",", ":")).encode()
        if not self.board.publish(self.slot, payload):
            log.warning("status board: this worker's view (%d bytes) does not fit its slot", len(payload))
        if not self.closing:
            self.loop.call_later(PUBLISH_INTERVAL, self.publish)

    def merged_metrics(self) -> dict:
        """Every worker's counters added up, this worker's live and first."""
        views = [worker_view(self)]
        if self.board is not None:
            fresh = time.time() - 3 * PUBLISH_INTERVAL
            for payload in self.board.read_all(exclude=self.slot):
                view = json.loads(payload)
                if view["published"] >= fresh:
                    views.append(view)
        return merge(views)

    def log_access(self, record: AccessRecord) -> None:
        self.metrics.observe(record)
        self.access.write(record)

    @staticmethod
    def local_host(channel: Channel) -> bytes:
        """Host for an HTTP/1.0 request that sent none: the address it reached us on."""
        name = channel.transport.get_extra_info("sockname") if channel.transport else None
        if not name:
            return b""
        return str(Address(name[0], name[1])).encode()

    def at_capacity(self) -> bool:
        """``[server] max_connections`` reached, counting TLS handshakes in progress (they hold memory
        too); counts the refusal the caller is about to make, and logs the first and every 1000th."""
        if len(self.handlers) + len(self.edge.handshakes) < self.config.server.max_connections:
            return False
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("max_connections (%d) reached: new connections are refused (%d so far)",
                        self.config.server.max_connections, self.refused)
        return True

    def accept(self, channel: Channel, scheme: bytes = b"http") -> None:
        if self.at_capacity():
            # Answering costs one write; holding it would cost what the limit protects.
            channel.write(error_bytes(503, self.server_name, self.clock.date(), extra=[(b"retry-after", b"1")]))
            channel.close()
            return
        handler = ClientHandler(self, channel, scheme)
        task = self.loop.create_task(handler.run())
        handler.task = task
        self.handlers.add(handler)
        task.add_done_callback(lambda _: self.handlers.discard(handler))
        if self.closing:
            self._close_when_idle(handler, self.config.server.grace_period)

    async def drain(self, grace: float) -> None:
        """Close idle connections soon and wait up to ``grace`` seconds for busy ones.

        An idle keep-alive connection is not closed at once: a client may be
        sending its next request on it at this very moment, and a close would
        make that request fail. It gets ``DRAIN_IDLE`` seconds; a request that
        arrives meanwhile is answered with Connection: close.
        """
        self.closing = True
        # A TLS handshake under way is a client that already connected: finish it and serve it.
        await self.edge.finish(min(grace, self.config.limits.header_timeout))
        for handler in list(self.handlers):
            if not handler.busy:
                self._close_when_idle(handler, grace)
        deadline = self.loop.time() + grace
        while self.handlers:
            remaining = deadline - self.loop.time()
            tasks = [h.task for h in self.handlers if h.task is not None]
            if remaining <= 0:
                log.warning("grace period over: closing %d connection(s) still in use", len(tasks))
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=1.0)
                break
            await asyncio.wait(tasks, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        for group in self.groups.values():
            group.close()
        self.access.close()

    def _close_when_idle(self, handler: ClientHandler, grace: float) -> None:
        linger = 0.0 if grace == 0 else min(DRAIN_IDLE, self.config.limits.keepalive_timeout)
        self.loop.call_later(linger, handler.close_if_idle)


class _AcceptingChannel(Channel):
    __slots__ = ("_runtime",)

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime.loop)
        self._runtime = runtime

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._runtime.accept(self)


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

    def __init__(self, runtime: Runtime, sock, factory: Callable[[], asyncio.Protocol] | None = None) -> None:
        self.runtime = runtime
        self.sock = sock
        self.factory = factory or (lambda: _AcceptingChannel(runtime))  # tls_protocol for [tls] sockets
        self.pending: set[asyncio.Task] = set()
        runtime.loop.add_reader(sock.fileno(), self._accept)

    def __repr__(self) -> str:
        return f"<Acceptor {self.sock.getsockname() if self.sock.fileno() >= 0 else 'closed'}>"

    def _accept(self) -> None:
        loop = self.runtime.loop
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
            self.runtime.loop.add_reader(self.sock.fileno(), self._accept)

    async def close(self) -> None:
        """Stop accepting now; the connections already accepted still get served."""
        if self.sock.fileno() >= 0:
            self.runtime.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if self.pending:
            await asyncio.wait(list(self.pending))


async def serve(config: Config, *, shutdown: Awaitable, sockets=None, tls_sockets=None,
                certificates: Certificates | None = None,
                on_ready: Callable[[list[Address]], None] | None = None, grace: float | None = None,
                board: Board | None = None, slot: int | None = None) -> None:
    """Run the proxy until ``shutdown`` completes, then stop gracefully.

    ``shutdown`` may complete with a number of seconds that replaces the
    grace period (0 stops at once, for SIGQUIT). ``sockets`` are listening
    sockets to serve on (a worker gets the master's), ``tls_sockets`` those
    of ``[tls] listen`` and ``certificates`` the contexts for them; without
    sockets ``serve`` binds both lists itself.
    """
    loop = asyncio.get_running_loop()
    runtime = Runtime(config, loop, board, slot, certificates)
    own = sockets is None
    if own:
        bound = bind_all(config.server.listen)
        try:
            secure = bind_all(config.tls.listen if config.tls is not None else ())
        except BaseException:
            for sock in bound.values():
                sock.close()
            raise
        sockets, tls_sockets = list(bound.values()), list(secure.values())
        for sock in sockets:
            log.info("listening on http://%s/", bound_address(sock))
        log_tls_listening(tls_sockets, runtime.tls)
    tls_sockets = tls_sockets or []
    for group in runtime.groups.values():
        await group.start()
    acceptors = [Acceptor(runtime, sock) for sock in sockets]
    acceptors += [Acceptor(runtime, sock, tls_protocol(runtime)) for sock in tls_sockets]  # handshake first
    if tls_sockets:
        runtime.edge.https_port = bound_address(tls_sockets[0]).port
    runtime.publish()
    if on_ready is not None:
        on_ready([bound_address(sock) for sock in sockets + tls_sockets])
    try:
        override = await shutdown
        if override is not None:
            grace = override
    finally:
        for acceptor in acceptors:
            await acceptor.close()
        in_flight = sum(1 for h in runtime.handlers if h.busy)
        log.info("shutting down: %d request(s) in flight", in_flight)
        await runtime.drain(config.server.grace_period if grace is None else grace)
        if board is not None:
            board.clear(slot)
        log.info("stopped")



