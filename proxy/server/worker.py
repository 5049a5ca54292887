"""What every connection of one worker process shares, one object per concern.

``Worker`` only groups them; each part is small and typed, and a connection
uses the parts it needs:

* ``Connections``: the open client connections, counted as they come and go
  (the status page reads counters, it never walks the connections), and the
  graceful stop.
* ``RequestLog``: the access log and the metrics, fed the same record.
* ``decider`` (http/decide.py), ``files`` (the open-file cache), ``caches``
  (the response caches, server/caching.py), ``groups``
  (upstream groups and their pools), ``timers`` (the shared deadline timer),
  ``stamp`` (the headers the proxy adds), ``edge`` (TLS state).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from time import perf_counter

from ..accesslog import AccessLog
from ..config import Address, Config, Status, acme_sites
from ..http import static
from ..http.decide import ConnFacts, Decider
from ..http.headers import Stamp, request_id
from ..http.responses import Clock
from ..metrics import Metrics, merge, worker_view
from ..tls import Certificates, load_certificates, sni_name
from ..upstream.group import UpstreamGroup
from .acme import AcmeEdge
from .board import PUBLISH_INTERVAL, Board
from .caching import Caches
from .client import DRAIN_IDLE
from .timers import Deadlines
from .tls import EdgeState
from .zones import Zones

log = logging.getLogger("proxy")


class Connections:
    """The client connections of this worker, and how many are in the middle of a request."""

    __slots__ = ("loop", "open", "active", "refused", "closing", "max_connections", "_emptied")

    def __init__(self, loop, max_connections: int) -> None:
        self.loop = loop
        self.open: set = set()
        self.active = 0  # requests in progress (a connection counts while it handles one)
        self.refused = 0  # connections answered 503 at max_connections
        self.closing = False
        self.max_connections = max_connections
        self._emptied: asyncio.Future | None = None

    def __repr__(self) -> str:
        return f"<Connections open={len(self.open)} active={self.active} closing={self.closing}>"

    def add(self, conn) -> None:
        self.open.add(conn)

    def discard(self, conn) -> None:
        self.open.discard(conn)
        if not self.open and self._emptied is not None and not self._emptied.done():
            self._emptied.set_result(None)

    def at_capacity(self, handshakes: int) -> bool:
        """``[server] max_connections`` reached, counting TLS handshakes in progress (they hold memory
        too); counts the refusal the caller is about to make, and logs the first and every 1000th."""
        if len(self.open) + handshakes < self.max_connections:
            return False
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("max_connections (%d) reached: new connections are refused (%d so far)",
                        self.max_connections, self.refused)
        return True

    async def drain(self, grace: float, keepalive_timeout: float) -> None:
        """Close idle connections soon and wait up to ``grace`` seconds for busy ones.

        An idle keep-alive connection is not closed at once: a client may be
        sending its next request on it at this very moment, and a close would
        make that request fail. It gets ``DRAIN_IDLE`` seconds; a request that
        arrives meanwhile is answered with Connection: close.
        """
        self.closing = True
        linger = 0.0 if grace == 0 else min(DRAIN_IDLE, keepalive_timeout)
        for conn in list(self.open):
            conn.stopping(linger)
        if not self.open:
            return
        self._emptied = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._emptied), grace)
        except TimeoutError:
            log.warning("grace period over: closing %d connection(s) still in use", len(self.open))
            for conn in list(self.open):
                conn.abort()
            try:
                await asyncio.wait_for(asyncio.shield(self._emptied), 1.0)
            except TimeoutError:
                pass


class RequestLog:
    """Every finished request goes here once: counted in the metrics and written to the access log."""

    __slots__ = ("access", "metrics", "writes")

    def __init__(self, access: AccessLog, metrics: Metrics, writes: bool = True) -> None:
        self.access = access
        self.metrics = metrics
        self.writes = writes  # False with [log] access = "off": no record is built at all

    def __repr__(self) -> str:
        return f"<RequestLog {self.access!r}>"

    def write(self, exchange, client_ip: str) -> None:
        """``client_ip``: the client's address as logged (after [server] trusted_proxies)."""
        now = perf_counter()
        if self.writes:
            record = exchange.record(client_ip, now)
            self.metrics.observe(record)
            self.access.write(record)
        else:
            self.metrics.count(exchange.route, exchange.status, now - exchange.started, exchange.tunnel is not None)


class Worker:
    """The parts one worker process's connections share (see the module docstring)."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, board: Board | None = None,
                 slot: int | None = None, certificates: Certificates | None = None, zones: Zones | None = None,
                 notices=None, certificates_version: int = 0) -> None:
        self.config = config
        self.loop = loop
        self.board = board  # shared with the other workers, for whole-proxy status pages
        self.slot = slot
        self._published_final = False
        # Rate and connection limits: the master's shared zones, or this process's own.
        # ACME (server/acme.py): what this worker knows of the certificate manager's work; None without
        # acme = true sites. ``notices``: the master's shared counters (none without a master: then nothing
        # changes while the process runs).
        self.acme = AcmeEdge(config, notices, certificates_version) if acme_sites(config) else None
        self.decider = Decider(config, zones, challenges=self.acme.store.key_authorization if self.acme else None)
        self.timers = Deadlines(loop)
        self.groups = {name: UpstreamGroup(up, loop, self.timers, config.server.http_engine)
                       for name, up in config.upstreams.items()}
        self.log = RequestLog(AccessLog(config.log.access, config.log.format), Metrics(),
                              writes=config.log.access != "off")
        server = config.server
        self.files = static.OpenFileCache(server.open_file_cache_valid, server.open_file_cache_entries,
                                          server.open_file_cache_bytes)
        self.conns = Connections(loop, config.server.max_connections)
        self.caches = Caches(config.caches, board.notices if board is not None else None, slot)
        self.clock = Clock()
        # Edge (TLS): the certificates this process serves: built by the master once per generation and
        # inherited by its workers, or built here from the config. ``edge``: handshakes and their failures.
        self.tls = certificates if certificates is not None or config.tls is None else \
            load_certificates(config.tls, config.path)
        self.edge = EdgeState()
        self.server_name = config.server.name.encode()
        self.via = b"1.1 " + self.server_name
        # server_timing = "trusted" means the [status] allow networks (loopback when [status] is absent).
        self.stamp = Stamp(self.server_name, hsts=config.tls.hsts if config.tls is not None else "",
                           server_timing=config.server.server_timing, trusted=(config.status or Status()).allows)

    def __repr__(self) -> str:
        return f"<Worker {self.config.path} {self.conns!r}>"

    new_request_id = staticmethod(request_id)

    @property
    def metrics(self) -> Metrics:
        return self.log.metrics

    # --- the status pages ---

    def publish(self, final: bool = False) -> None:
        """Pin this worker's counters on the board, and again every PUBLISH_INTERVAL until it stops
        (a draining worker keeps publishing: its requests still count on the status page)."""
        if self.board is None or self._published_final:
            return
        payload = json.dumps(worker_view(self), separators=(",", ":")).encode()
        if not self.board.publish(self.slot, payload):
            log.warning("status board: this worker's view (%d bytes) does not fit its slot", len(payload))
        if final:
            self._published_final = True
        else:
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

    def conn_facts(self, transport, scheme: bytes, client_ip: str) -> ConnFacts:
        """What decide() needs to know of a new connection, for every protocol's connection_made.
        ``client_ip`` is the peer's address (or the one a PROXY header named)."""
        sni = sni_name(transport.get_extra_info("ssl_object")) if scheme == b"https" else None
        return ConnFacts(scheme, client_ip, self.local_host(transport), self.edge.https_port, sni)

    @staticmethod
    def local_host(transport) -> bytes:
        """Host for an HTTP/1.0 request that sent none: the address it reached us on ("localhost" for a
        unix socket)."""
        name = transport.get_extra_info("sockname") if transport is not None else None
        if isinstance(name, str):
            return b"localhost"
        if not name or not isinstance(name, tuple):
            return b""
        return str(Address(name[0], name[1])).encode()

    async def stop(self, grace: float) -> None:
        """Stop: let TLS handshakes finish, drain the connections, close the pools and the log."""
        self.conns.closing = True
        # A TLS handshake under way is a client that already connected: finish it and serve it.
        await self.edge.finish(min(grace, self.config.limits.header_timeout))
        await self.conns.drain(grace, self.config.limits.keepalive_timeout)
        for group in self.groups.values():
            group.close()
        self.caches.close()
        self.timers.close()
        self.log.access.close()
