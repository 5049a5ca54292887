"""An upstream group at run time: its servers' pools and which one takes the next request."""

from __future__ import annotations

import asyncio

from ..config import Upstream
from .pool import ServerPool


class UpstreamGroup:
    def __init__(self, config: Upstream, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.name = config.name
        self.servers = [
            ServerPool(address, keepalive=config.keepalive, idle_timeout=config.idle_timeout,
                       connect_timeout=config.connect_timeout, loop=loop)
            for address in config.servers
        ]
        self._next = 0

    def __repr__(self) -> str:
        return f"<UpstreamGroup {self.name} servers={[str(s.address) for s in self.servers]}>"

    def pick(self, tried: frozenset = frozenset()) -> ServerPool | None:
        """The next server in turn that this request has not tried yet."""
        count = len(self.servers)
        for _ in range(count):
            server = self.servers[self._next % count]
            self._next += 1
            if server not in tried:
                return server
        return None

    def close(self) -> None:
        for server in self.servers:
            server.close()
