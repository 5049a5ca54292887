"""File bodies to a client: ``loop.sendfile`` or chunked reads, never the whole file in memory.

``[server] sendfile`` picks the method (see docs/configuration.md for the
measurement). Either way each step waits at most ``send_timeout`` for the
client to take bytes, so a reader that stops costs one idle connection and is
then closed.
"""

from __future__ import annotations

import asyncio
import logging
import os

import h11

# Chunked reads: growing to CHUNK_FAST while the client keeps up (fewer turns
# of the loop per megabyte), back to CHUNK_SLOW as soon as it does not, so a
# slow reader holds at most about that much of the file in user space.
CHUNK_FAST = 128 * 1024
CHUNK_SLOW = 32 * 1024
SENDFILE_STEP = 4 * 1024 * 1024
SENDFILE_MIN_STEP = 64 * 1024

_NO_SENDFILE: set[type] = set()  # event loop classes found without loop.sendfile



log = logging.getLogger("proxy")


class Region:
    """Stands in for ``length`` bytes of the file in an h11 Data event.

    h11 only needs len() to keep Content-Length framing honest; with
    ``send_with_data_passthrough`` the bytes themselves never pass through it.
    """

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


async def send_file(handler, fd: int, parts: tuple, exchange) -> None:
    channel = handler.channel
    conn = handler.conn
    runtime = handler.runtime
    timeout = runtime.config.limits.send_timeout
    use_sendfile = runtime.config.server.sendfile
    for part in parts:
        if type(part) is bytes:
            channel.write(conn.send(h11.Data(data=part)))
            exchange.body_bytes += len(part)
            continue
        offset, length = part
        conn.send_passthrough(h11.Data(data=Region(length)))  # framing: Content-Length, adds no bytes
        if use_sendfile and type(runtime.loop) not in _NO_SENDFILE:
            try:
                await _sendfile(runtime.loop, channel, fd, offset, length, timeout)
            except NotImplementedError:
                # uvloop has no loop.sendfile; it raises before sending anything, so copy instead.
                _NO_SENDFILE.add(type(runtime.loop))
                log.warning("this event loop (%s) cannot sendfile: [server] sendfile is ignored, files "
                            "are copied in chunks", type(runtime.loop).__module__)
                await _copy(channel, fd, offset, length, timeout)
        else:
            await _copy(channel, fd, offset, length, timeout)
        exchange.body_bytes += length
    channel.write(conn.send(h11.EndOfMessage()))


async def _copy(channel, fd: int, offset: int, length: int, timeout: float) -> None:
    """Read into a reused buffer and write views of it.

    A fresh ``bytes`` per chunk costs an allocation the size of the chunk
    (above malloc's mmap threshold: mapped, faulted in, unmapped each time),
    which measured as half the CPU of a 1 MiB file. Chunks grow to
    CHUNK_FAST while the client takes everything at once and drop to
    CHUNK_SLOW while bytes stay queued. The buffer is replaced when the
    transport may still hold a view of it (Python 3.12 and uvloop queue
    views of what they cannot send at once), and let go while we wait for a
    slow client, so waiting holds no file data beyond the transport's queue.
    """
    end = offset + length
    transport = channel.transport
    buffer = None
    chunk = CHUNK_SLOW
    while offset < end:
        if buffer is None:
            buffer = memoryview(bytearray(min(CHUNK_FAST, end - offset)))
        chunk = min(chunk * 2, CHUNK_FAST) if transport.get_write_buffer_size() == 0 else CHUNK_SLOW
        got = os.preadv(fd, [buffer[:min(chunk, end - offset)]], offset)
        if not got:
            raise ConnectionAbortedError("file shrank while it was being sent")
        channel.write(buffer[:got])
        offset += got
        if channel.write_paused or transport.get_write_buffer_size():
            buffer = None
        await channel.drain(timeout)


async def _sendfile(loop, channel, fd: int, offset: int, length: int, timeout: float) -> None:
    """loop.sendfile in steps sized so each should take a second (or a quarter of send_timeout, if
    less) at the client's last pace:
    ``send_timeout`` then means time without progress (as nginx's send_timeout does), not time
    for a fixed amount, which a slow but steady reader of a large file would exceed."""
    with open(fd, "rb", closefd=False) as file:
        end = offset + length
        step = SENDFILE_MIN_STEP
        while offset < end:
            began = loop.time()
            async with asyncio.timeout(timeout):
                sent = await loop.sendfile(channel.transport, file, offset, min(step, end - offset))
            if sent == 0:
                raise ConnectionAbortedError("file shrank while it was being sent")
            offset += sent
            rate = sent / max(loop.time() - began, 1e-3)  # bytes per second at the client's pace
            step = int(min(max(rate * min(1.0, timeout / 4), SENDFILE_MIN_STEP), SENDFILE_STEP))
