"""An upstream group at run time: its servers (peers), their health, and who takes the next request.

A configured server given by IP literal is one peer. One given by host name
is every address the name resolves to, looked up again every
``resolve_interval``: new addresses become peers, vanished ones are drained
(no new requests; closed once their last request ends). That is what makes
``docker compose up --scale app=3`` and a Kubernetes headless Service spread
load with no configuration change.

A peer is available when it is not draining, active checks (if any) say up,
passive checks have not taken it out (``max_fails`` failures within
``fail_timeout`` rest it for ``fail_timeout``), and it is under
``max_conns``. Each change of a peer's state is logged once.

Active checks have the last word (HAProxy's rule): a peer that passive
checks rested comes back as soon as ``healthy_threshold`` probes in a row
succeed after its last failed try, rather than waiting out ``fail_timeout``.

``Peer.state`` is what the status page shows, one of ``STATES``.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import socket

from ..config import Address, ServerSpec, UnixAddress, Upstream, needs_lookup
from ..tls import client_context
from .balancer import POLICIES
from .health import HealthState, check_forever
from .pool import ServerPool, TlsTarget

log = logging.getLogger("proxy")


# What a peer is doing, for the status page and metrics (a tie between workers shows the later one):
#   up        taking requests, and the last one it was sent did not fail
#   failing   taking requests, but the last try (and maybe more) failed: a lone server is never rested
#             (there is nothing to send its load to), and below max_fails nobody is
#   failed    resting after max_fails failures within fail_timeout (passive health)
#   down      active health checks say so
#   draining  its address no longer resolves: no new requests, gone once the last one ends
STATES = ("up", "failing", "failed", "down", "draining")


class Peer:
    """One upstream address: its connection pool, counters and health."""

    __slots__ = ("spec", "address", "name", "pool", "group", "current_weight", "in_flight", "requests", "failures",
                 "fails", "fail_window", "failed_until", "failing", "health", "draining", "checker", "last_error")

    def __init__(self, spec: ServerSpec, address: "Address | UnixAddress", group: "UpstreamGroup") -> None:
        config = group.config
        self.spec = spec
        self.address = address
        self.name = str(address)  # as logs and the status page show it
        self.group = group
        self.pool = ServerPool(address, keepalive=config.keepalive, idle_timeout=config.idle_timeout,
                               connect_timeout=config.connect_timeout, loop=group.loop, timers=group.timers,
                               engine=group.engine, tls=group.tls_target(spec))
        self.current_weight = 0
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.fails = 0  # within the current fail_timeout window
        self.fail_window = 0.0
        self.failed_until = 0.0
        self.failing = 0  # failed tries since the last one that succeeded
        self.health = HealthState()
        self.draining = False
        self.checker: asyncio.Task | None = None
        self.last_error = ""

    def __repr__(self) -> str:
        return f"<Peer {self.group.name} {self.address} {self.state(self.group.loop.time())} in_flight={self.in_flight}>"

    @property
    def weight(self) -> int:
        return self.spec.weight

    def state(self, now: float) -> str:
        if self.draining:
            return "draining"
        if not self.health.up:
            return "down"
        if self.failed_until > now:
            return "failed"
        if self.failing:
            return "failing"
        return "up"

    def available(self, now: float) -> bool:
        return (not self.draining and self.health.up and self.failed_until <= now
                and (self.spec.max_conns == 0 or self.in_flight < self.spec.max_conns))


class UpstreamGroup:
    def __init__(self, config: Upstream, loop: asyncio.AbstractEventLoop, timers=None, engine: str = "auto") -> None:
        self.config = config
        self.name = config.name
        self.loop = loop
        self.timers = timers  # server.timers.Deadlines, for the pools' idle connections
        self.engine = engine  # the HTTP/1.1 engine of the pools' connections ([server] http_engine)
        self.policy = POLICIES[config.balance]
        self.peers: list[Peer] = []
        # Requests waiting for a server under max_conns (nginx Plus "queue"), oldest first.
        self.waiting: collections.deque = collections.deque()
        self._resolver: asyncio.Task | None = None
        self._contexts: dict = {}  # UpstreamTls -> ssl.SSLContext, one per settings for the whole group
        for spec in config.servers:
            if not needs_lookup(spec.address):
                self._add(spec, spec.address)

    def __repr__(self) -> str:
        return (f"<UpstreamGroup {self.name} {self.config.balance} peers={[str(p.address) for p in self.peers]} "
                f"queued={len(self.waiting)}>")

    # --- life cycle ---

    def tls_target(self, spec: ServerSpec) -> TlsTarget | None:
        """How to speak TLS to ``spec``'s addresses, or None for plain HTTP. The name checked is the one
        written (a host name stays the name when it resolves to several addresses)."""
        settings = self.config.tls_for(spec)
        if settings is None:
            return None
        context = self._contexts.get(settings)
        if context is None:
            context = self._contexts[settings] = client_context(settings, f"upstreams.{self.name}.tls", "proxy.toml")
        return TlsTarget(context, settings.server_name or spec.address.host)

    async def start(self) -> None:
        """Resolve host names once (so the first requests have servers), then keep them fresh."""
        named = [spec for spec in self.config.servers if needs_lookup(spec.address)]
        if named:
            await self.resolve(named)
            self._resolver = self.loop.create_task(self._resolve_forever(named))
        for peer in self.peers:
            self._start_checks(peer)

    def close(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
        for peer in self.peers:
            if peer.checker is not None:
                peer.checker.cancel()
            peer.pool.close()

    def _add(self, spec: ServerSpec, address: Address) -> Peer:
        peer = Peer(spec, address, self)
        self.peers.append(peer)
        return peer

    def _start_checks(self, peer: Peer) -> None:
        if self.config.health is not None and peer.checker is None:
            peer.checker = self.loop.create_task(check_forever(peer, self.config.health, self.probed))

    def probed(self, peer: Peer, error: str | None) -> None:
        """Apply one active probe's result (None: healthy) to ``peer``; ``check_forever`` calls this."""
        health = self.config.health
        now = self.loop.time()
        if peer.health.observe(error, health, now):
            if peer.health.up:
                log.info("upstream %s %s up: %d good health checks", self.name, peer.address, peer.health.good)
            else:
                log.warning("upstream %s %s down: %s", self.name, peer.address, peer.health.last_error)
        # Good probes are counted from the last failed try (failed() resets them): this many in a row
        # since then means the server answers again, so a passive rest ends and it is up, not failing.
        if peer.health.up and peer.health.good >= health.healthy_threshold:
            if peer.failed_until > now:
                log.info("upstream %s %s up: %d good health checks end its rest", self.name, peer.address,
                         peer.health.good)
            self._clear_failures(peer)

    # --- name resolution ---

    async def _resolve_forever(self, named: list[ServerSpec]) -> None:
        while True:
            await asyncio.sleep(self.config.resolve_interval)
            await self.resolve(named)

    async def resolve(self, named: list[ServerSpec]) -> None:
        for spec in named:
            host, port = spec.address.host, spec.address.port
            try:
                infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                if any(p.spec is spec and not p.draining for p in self.peers):
                    log.warning("upstream %s: cannot resolve %s (%s); keeping the last known addresses",
                                self.name, host, exc.strerror or exc)
                else:
                    log.warning("upstream %s: cannot resolve %s (%s); no servers for it yet",
                                self.name, host, exc.strerror or exc)
                continue
            found = {Address(info[4][0], info[4][1]) for info in infos}
            current = {p.address: p for p in self.peers if p.spec is spec and not p.draining}
            for address in sorted(found - current.keys()):
                peer = self._add(spec, address)
                self._start_checks(peer)
                log.info("upstream %s: %s resolves to %s: added", self.name, spec.address, address)
            for address in current.keys() - found:
                peer = current[address]
                peer.draining = True
                log.info("upstream %s: %s no longer resolves to %s: draining", self.name, spec.address, address)
        self._remove_drained()

    def _remove_drained(self) -> None:
        for peer in [p for p in self.peers if p.draining and p.in_flight == 0]:
            self.peers.remove(peer)
            if peer.checker is not None:
                peer.checker.cancel()
            peer.pool.close()

    # --- choosing and accounting ---

    def pick(self, key: bytes, tried: set) -> Peer | None:
        """The peer for the next try of a request, or None when no untried one is available."""
        now = self.loop.time()
        peers = self.peers
        if len(peers) == 1:  # one server (the usual app tier): no policy to consult
            peer = peers[0]
            return peer if peer not in tried and peer.available(now) else None

        def usable(peer) -> bool:
            return peer not in tried and peer.available(now)

        primary = [p for p in self.peers if not p.spec.backup]
        peer = self.policy(primary, usable, key)
        if peer is None:
            peer = self.policy([p for p in self.peers if p.spec.backup], usable, key)
        return peer

    def only_busy(self, tried: set) -> bool:
        """No peer can take a request now, but one that was not tried would if it were under max_conns:
        the request may wait in the queue (when the queue has room)."""
        if len(self.waiting) >= self.config.queue:
            return False
        now = self.loop.time()
        return any(p not in tried and p.spec.max_conns and p.in_flight >= p.spec.max_conns
                   and not p.draining and p.health.up and p.failed_until <= now for p in self.peers)

    def enqueue(self, waiter) -> None:
        self.waiting.append(waiter)

    def dequeue(self, waiter) -> None:
        try:
            self.waiting.remove(waiter)
        except ValueError:
            pass

    def has_other(self, tried: set) -> bool:
        """Some peer not tried yet is available (does not advance any policy's state)."""
        now = self.loop.time()
        return any(p not in tried and p.available(now) for p in self.peers)

    def failed(self, peer: Peer, reason: str) -> None:
        """Passive health: count a failed try against ``peer``."""
        peer.failures += 1
        peer.failing += 1
        peer.health.good = 0  # active checks speak for it again only with probes made since this failure
        peer.last_error = reason
        max_fails = self.config.max_fails
        if max_fails == 0 or len(self.peers) == 1:
            return  # as in nginx, a lone server is never rested: there is nothing to send its load to
        now = self.loop.time()
        if now - peer.fail_window > self.config.fail_timeout:
            peer.fails = 0
            peer.fail_window = now
        peer.fails += 1
        if peer.fails >= max_fails and peer.failed_until <= now:
            peer.failed_until = now + self.config.fail_timeout
            log.warning("upstream %s %s down: %s (%d failure(s) within %gs; resting %gs)", self.name,
                        peer.address, reason, peer.fails, self.config.fail_timeout, self.config.fail_timeout)

    def succeeded(self, peer: Peer) -> None:
        if peer.failed_until:
            log.info("upstream %s %s up: answered again", self.name, peer.address)
        self._clear_failures(peer)

    @staticmethod
    def _clear_failures(peer: Peer) -> None:
        peer.failed_until = 0.0
        peer.fails = 0
        peer.failing = 0

    def finished(self, peer: Peer) -> None:
        """A request to ``peer`` ended (either way); the oldest queued request may now get a server."""
        peer.in_flight -= 1
        if peer.draining and peer.in_flight == 0:
            self._remove_drained()
        if self.waiting:
            self.loop.call_soon(self.waiting.popleft().dequeued)

    def retry_after(self) -> int:
        """Seconds until some peer may be available again (for 503's Retry-After)."""
        now = self.loop.time()
        waits = [p.failed_until - now for p in self.peers if p.failed_until > now]
        return max(1, int(min(waits)) + 1) if waits else 1
