"""One TCP connection as an asyncio Protocol: received chunks in, writes out, with flow control.

This is the only class that receives bytes from the event loop. It is leaner
than asyncio's StreamReader (no copy into a shared buffer, no line reading):
chunks are handed to the sans-IO layer as they arrived. Reading pauses when
more than ``READ_HIGH_WATER`` bytes are waiting, and writers wait on
``drain`` while the transport's buffer is over its high-water mark, so a slow
peer on either side costs bounded memory.

Timeouts are deadlines on the waits (one timer per wait that actually
blocks), and surface as ``TimeoutError``; a lost connection as
``ConnectionError``. Callers translate both at the edge (see forward.py).
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Callable

READ_HIGH_WATER = 256 * 1024
WRITE_HIGH_WATER = 64 * 1024


def expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Channel(asyncio.Protocol):
    __slots__ = ("loop", "transport", "_chunks", "_buffered", "_eof", "_lost", "_read_paused",
                 "_write_paused", "_waiter", "_drain_waiter", "_closed_waiter", "on_resume", "on_lost", "peer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._waiter: asyncio.Future | None = None
        self._drain_waiter: asyncio.Future | None = None
        self._closed_waiter: asyncio.Future | None = None
        self.on_resume: Callable[[], None] | None = None  # called when the peer takes bytes again
        self.on_lost: Callable[[], None] | None = None
        self.peer: tuple = ("", 0)

    def __repr__(self) -> str:
        state = "lost" if self._lost else "eof" if self._eof else "open"
        return f"<Channel {self.peer[0]}:{self.peer[1]} {state} buffered={self._buffered}>"

    # --- asyncio.Protocol callbacks ---

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername") or ("", 0)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep the write side open: a half-closed client still gets its answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = True
        self._wake_reader()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost"))
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_resume is not None:
            self.on_resume()

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- used by handlers ---

    @property
    def at_eof(self) -> bool:
        """The peer sent FIN (or the connection is gone) and every chunk was read."""
        return self._eof and not self._chunks

    @property
    def lost(self) -> bool:
        return self._lost

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    @property
    def has_data(self) -> bool:
        return bool(self._chunks)

    def take(self) -> bytes:
        """A chunk that already arrived, or b"" at EOF. Only call when has_data or at_eof."""
        if not self._chunks:
            return b""
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._read_paused and self._buffered < READ_HIGH_WATER // 4:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    async def recv(self, timeout: float) -> bytes:
        """The next chunk; b"" at EOF; TimeoutError when nothing comes for ``timeout`` seconds."""
        if not self._chunks and not self._eof:
            waiter = self._waiter = self.loop.create_future()
            timer = self.loop.call_later(timeout, expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self.take()

    def write(self, data) -> None:
        if not self._lost:
            self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        """Wait until the transport's buffer is below its high-water mark.

        Raises ConnectionResetError once the transport is closing: a failed send
        closes it at once but reports connection_lost only on the next turn of
        the loop, and a writer that never has to wait would otherwise go on
        writing into a dead connection without ever yielding.
        """
        if self._lost or self.transport.is_closing():
            raise ConnectionResetError("connection lost")
        if not self._write_paused:
            return
        waiter = self._drain_waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._drain_waiter = None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def close_and_wait(self, timeout: float) -> None:
        """Close after the buffered bytes are sent; abort if the peer takes longer than ``timeout``.

        A process about to exit must wait for this: transport.close() only
        schedules the flush, and exiting first would cut the last answer.
        """
        self.close()
        if self._lost or self.transport is None:
            return
        waiter = self._closed_waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, expire, waiter)
        try:
            await waiter
        except TimeoutError:
            self.abort()
        finally:
            timer.cancel()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def write_eof(self) -> None:
        if self.transport is not None and not self._lost and self.transport.can_write_eof():
            try:
                self.transport.write_eof()
            except OSError:
                pass
