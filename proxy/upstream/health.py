"""Active health checks: one probe, the rule that turns probes into a state, and the loop.

Following Caddy's split (its health checker keeps the ticker apart from one
probe): ``probe`` performs a single GET and returns None or the reason it
failed; ``HealthState.observe`` applies a probe's result to the counters and
says whether the server changed state; ``check_forever`` repeats a probe and
hands each result to the group (``UpstreamGroup.probed``).
Tests run ``probe`` and ``observe`` directly, with no timer involved.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import h11

from ..config import Address, Health, UnixAddress, authority
from ..errors import tls_failure
from .pool import TlsTarget, open_connection


@dataclass
class HealthState:
    """Consecutive results of one server's probes, and whether it is considered up."""

    up: bool = True
    good: int = 0
    bad: int = 0
    last_error: str = ""
    last_check: float | None = None

    def observe(self, error: str | None, health: Health, now: float) -> bool:
        """Count one probe; True when this probe flipped the server up or down."""
        self.last_check = now
        if error is None:
            self.good += 1
            self.bad = 0
            if not self.up and self.good >= health.healthy_threshold:
                self.up = True
                return True
        else:
            self.bad += 1
            self.good = 0
            self.last_error = error
            if self.up and self.bad >= health.unhealthy_threshold:
                self.up = False
                return True
        return False


async def probe(address: "Address | UnixAddress", health: Health, host: str,
                tls: TlsTarget | None = None) -> str | None:
    """GET ``health.path`` once, over TCP, TLS or a unix socket as requests go; None when the status is
    expected, else why not."""
    try:
        async with asyncio.timeout(health.timeout):
            reader, writer = await _open(address, tls)
            try:
                conn = h11.Connection(h11.CLIENT)
                writer.write(conn.send(h11.Request(method="GET", target=health.path, headers=[
                    ("Host", host), ("User-Agent", "twotier-health-check"), ("Connection", "close")])))
                writer.write(conn.send(h11.EndOfMessage()))
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                        continue
                    if type(event) is h11.Response:
                        if event.status_code in health.expect_status:
                            return None
                        return f"health check got status {event.status_code}"
                    if type(event) is h11.ConnectionClosed:
                        return "health check: connection closed without a response"
            finally:
                writer.close()
    except TimeoutError:
        return f"health check timed out after {health.timeout:g}s"
    except ConnectionRefusedError:
        return "connection refused"
    except h11.RemoteProtocolError as exc:
        return f"health check: invalid response ({exc})"
    except OSError as exc:
        return tls_failure(exc) or exc.strerror or str(exc)


async def _open(address: "Address | UnixAddress", tls: TlsTarget | None):
    """asyncio.open_connection, for any kind of server address."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await open_connection(loop, lambda: protocol, address, tls)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def check_forever(peer, health: Health, observe) -> None:
    """Probe ``peer`` every ``health.interval`` seconds; ``observe(peer, error)`` applies each result
    (UpstreamGroup.probed: the state, its log lines, and the end of a passive rest)."""
    host = authority(peer.spec.address)
    while True:
        observe(peer, await probe(peer.address, health, host, peer.pool.tls))
        await asyncio.sleep(health.interval)
