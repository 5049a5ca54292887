"""HTTPS listeners: accept TCP, shake hands with the current certificates, then serve as plain HTTP does.

Why not ``create_server(ssl=context)``: asyncio would then fix the context
for the life of the listening socket, and swallow failed handshakes without
a word (it logs them only in debug mode). Accepting plain TCP and calling
``loop.start_tls`` per connection instead gives each handshake the
certificates current at that moment (``runtime.tls``, replaced on reload with
no socket closed), and puts every failure in our hands: counted in the
metrics, and logged once a minute at most (``tls.FailureLog``).

``start_tls`` pauses the transport before its first await, and the task that
calls it runs before any read callback of the new connection (both are
queued with ``call_soon`` and the task is first), so no byte of the
ClientHello reaches the holding protocol.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from ..config import Address
from ..errors import ConfigError
from ..tls import FailureLog, classify, describe, load_certificates
from .channel import Channel

log = logging.getLogger("proxy")


class TlsChannel(Channel):
    """A Channel over TLS. TLS has no half-close in asyncio: a client's close_notify (or FIN) ends the
    connection, and returning True from eof_received would only make asyncio log a warning."""

    __slots__ = ()

    def eof_received(self) -> bool:
        super().eof_received()
        return False


class _Holding(asyncio.Protocol):
    """Owns a fresh TCP connection on a TLS port for the instant before ``start_tls`` takes it over."""

    __slots__ = ("_runtime",)

    def __init__(self, runtime) -> None:
        self._runtime = runtime

    # data_received is never called: see the module docstring.

    def connection_made(self, transport) -> None:
        edge = self._runtime.edge
        task = self._runtime.loop.create_task(_handshake(self._runtime, transport))
        edge.handshakes.add(task)
        task.add_done_callback(edge.handshakes.discard)


async def _handshake(runtime, transport: asyncio.Transport) -> None:
    if transport.is_closing():  # reset before this task ran
        runtime.edge.handshake_failed(ConnectionResetError(), transport.get_extra_info("peername"), runtime)
        return
    channel = TlsChannel(runtime.loop)
    try:
        tls_transport = await runtime.loop.start_tls(
            transport, channel, runtime.tls.default, server_side=True,
            ssl_handshake_timeout=runtime.config.limits.header_timeout)
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError; so are resets and asyncio's timeout
        transport.abort()
        runtime.edge.handshake_failed(exc, transport.get_extra_info("peername"), runtime)
        return
    runtime.metrics.tls_handshakes += 1
    channel.connection_made(tls_transport)
    runtime.accept(channel, scheme=b"https")


class EdgeState:
    """What the TLS listeners share in one process: handshakes in progress and the failure log."""

    def __init__(self) -> None:
        self.handshakes: set[asyncio.Task] = set()
        self.failures = FailureLog()
        self.https_port: int | None = None  # the first TLS listener's bound port, for redirect_http

    def handshake_failed(self, exc: BaseException, peer, runtime) -> None:
        failure = classify(exc)
        runtime.metrics.tls_failures[failure.kind] += 1
        host = str(Address(peer[0], peer[1])) if peer else "?"
        line = self.failures.note(failure, host, runtime.loop.time())
        if line is not None:
            log.warning("%s", line)

    def close(self) -> None:
        for task in list(self.handshakes):
            task.cancel()


async def start_tls_listeners(runtime, start_listeners) -> list[asyncio.AbstractServer]:
    """Listen on ``[tls].listen`` (nothing when TLS is off); ``start_listeners`` is listener.py's binder."""
    if runtime.tls is None:
        return []
    servers = await start_listeners(runtime, runtime.tls.settings.listen, lambda: _Holding(runtime))
    for server in servers:
        for sock in server.sockets:
            runtime.edge.https_port = runtime.edge.https_port or sock.getsockname()[1]
    log.info("TLS certificates: %s", describe(runtime.tls))
    return servers


async def follow_reloads(runtime, requests: asyncio.Queue, load) -> None:
    """Re-read the certificates each time a reload is asked for (SIGHUP in a single process).

    ``load(path)`` is config.load: the whole file is checked as at start, and
    a file that does not load leaves everything as it was. Only ``[tls]``
    takes effect here; any other change is reported as needing a restart.
    """
    while True:
        await requests.get()
        try:
            fresh = load(runtime.config.path)
            certificates = load_certificates(fresh.tls, fresh.path) if fresh.tls is not None else None
        except ConfigError as exc:  # keep serving with what we have
            log.error("reload failed, keeping the current certificates: %s", exc)
            continue
        if certificates is None or runtime.tls is None:
            log.warning("reload: a single proxy process re-reads only [tls] certificates%s; restart it to apply "
                        "other changes", "" if runtime.tls is None and certificates is None
                        else ", and [tls] cannot be added or removed without a restart")
            continue
        if fresh.tls.listen != runtime.tls.settings.listen:
            log.warning("reload: [tls].listen changed: that needs a restart; the new certificates apply to "
                        "the current addresses")
        runtime.tls = certificates
        log.info("reloaded TLS certificates: %s", describe(certificates))
        if _without_tls(fresh) != _without_tls(runtime.config):
            log.warning("reload: settings outside [tls] changed; a single proxy process applies them only "
                        "after a restart")


def _without_tls(config):
    return dataclasses.replace(config, tls=None)
