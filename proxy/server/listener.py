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
import os
from typing import Awaitable, Callable

from ..accesslog import AccessLog, AccessRecord
from ..metrics import Metrics
from ..config import Address, Config, load as config_load
from ..http.headers import request_id
from ..http.responses import Clock
from ..http.routing import Router
from ..tls import load_certificates
from ..upstream.group import UpstreamGroup
from .channel import Channel
from .client import ClientHandler
from .tls import EdgeState, follow_reloads, start_tls_listeners

log = logging.getLogger("proxy")


class Runtime:
    """What every connection of this process shares: config, routes, pools, logs."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.router = Router(config.routes)
        self.groups = {name: UpstreamGroup(up, loop) for name, up in config.upstreams.items()}
        self.access = AccessLog(config.log.access, config.log.format)
        self.metrics = Metrics()
        self.clock = Clock()
        self.server_name = config.server.name.encode()
        self.via = b"1.1 " + self.server_name
        self.closing = False
        self.handlers: set[ClientHandler] = set()
        # Edge (TLS): certificates are built per Runtime from the config it is given, and ``tls`` is
        # replaced whole on a reload; ``edge`` holds handshakes in progress and their failure log.
        self.tls = load_certificates(config.tls, config.path) if config.tls is not None else None
        self.edge = EdgeState()

    def __repr__(self) -> str:
        return f"<Runtime {self.config.path} connections={len(self.handlers)} closing={self.closing}>"

    new_request_id = staticmethod(request_id)

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

    def accept(self, channel: Channel, scheme: bytes = b"http") -> None:
        handler = ClientHandler(self, channel, scheme)
        task = self.loop.create_task(handler.run())
        handler.task = task
        self.handlers.add(handler)
        task.add_done_callback(lambda _: self.handlers.discard(handler))

    async def drain(self, grace: float) -> None:
        """Close idle connections now and wait up to ``grace`` seconds for busy ones."""
        self.closing = True
        self.edge.close()
        for handler in list(self.handlers):
            if not handler.busy:
                handler.channel.close()
        tasks = [h.task for h in self.handlers if h.task is not None]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                log.warning("grace period over: closing %d connection(s) still in use", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=1.0)
        for group in self.groups.values():
            group.close()
        self.access.close()


class _AcceptingChannel(Channel):
    __slots__ = ("_runtime",)

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime.loop)
        self._runtime = runtime

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._runtime.accept(self)


class ListenError(OSError):
    """A listening socket could not be opened; the message says which and why."""


async def start_listeners(runtime: Runtime, addresses=None, factory=None) -> list[asyncio.AbstractServer]:
    """Listen on ``addresses`` ([server].listen by default) with protocols from ``factory``."""
    servers = []
    for address in runtime.config.server.listen if addresses is None else addresses:
        try:
            server = await runtime.loop.create_server(
                factory or (lambda: _AcceptingChannel(runtime)), address.host, address.port,
                reuse_address=True, backlog=1024)
        except OSError as exc:
            for s in servers:
                s.close()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            hint = ""
            if exc.errno == 98:
                hint = " (another process uses it: stop it, or change [server].listen)"
            elif exc.errno == 13:
                hint = " (ports below 1024 need privileges: use a higher port)"
            raise ListenError(exc.errno, f"cannot listen on {address}: {reason}{hint}") from None
        servers.append(server)
    return servers


def bound_addresses(servers: list[asyncio.AbstractServer]) -> list[Address]:
    out = []
    for server in servers:
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            out.append(Address(host, port))
    return out


async def serve(config: Config, *, shutdown: Awaitable, on_ready: Callable[[list[Address]], None] | None = None,
                grace: float | None = None, reloads: asyncio.Queue | None = None) -> None:
    """Run the proxy until ``shutdown`` completes, then stop gracefully.

    Each item put in ``reloads`` re-reads the TLS certificates (the CLI puts one per SIGHUP).
    """
    loop = asyncio.get_running_loop()
    runtime = Runtime(config, loop)
    for group in runtime.groups.values():
        await group.start()
    servers = await start_listeners(runtime)
    try:
        secure = await start_tls_listeners(runtime, start_listeners)
    except BaseException:
        for server in servers:
            server.close()
        raise
    for scheme, group_of in (("http", servers), ("https", secure)):
        for address in bound_addresses(group_of):
            log.info("listening on %s://%s/", scheme, address)
    servers += secure
    addresses = bound_addresses(servers)
    if on_ready is not None:
        on_ready(addresses)
    follower = loop.create_task(follow_reloads(runtime, reloads, config_load)) if reloads is not None else None
    try:
        await shutdown
    finally:
        if follower is not None:
            follower.cancel()
        for server in servers:
            server.close()
        in_flight = sum(1 for h in runtime.handlers if h.busy)
        log.info("shutting down: %d request(s) in flight", in_flight)
        await runtime.drain(config.server.grace_period if grace is None else grace)
        log.info("stopped")



