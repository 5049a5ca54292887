"""Bodies held between the two sides: memory first, a temporary file beyond a limit.

``RequestBody`` is the client's body, read completely before the upstream is
contacted (a Gunicorn sync worker must never wait on a slow upload).
``Spool`` is the upstream's response while the client is slower than the
upstream: the upstream is read at its own pace and released early, and the
client is fed from here whenever its socket has room (``Channel.on_resume``),
with no extra task. Both hold at most their memory limit in RAM.
"""

from __future__ import annotations

import asyncio
import collections
import os
import tempfile

from .channel import Channel, expire

CHUNK = 64 * 1024


def _temp_file(temp_dir: str) -> int:
    fd, name = tempfile.mkstemp(prefix="twotier-", dir=temp_dir or None)
    os.unlink(name)  # nothing to clean up, whatever happens to the process
    return fd


class RequestBody:
    __slots__ = ("_chunks", "_memory", "size", "_fd", "_memory_limit", "_temp_dir")

    def __init__(self, memory_limit: int, temp_dir: str = "") -> None:
        self._chunks: list[bytes] = []
        self._memory = 0
        self.size = 0
        self._fd: int | None = None
        self._memory_limit = memory_limit
        self._temp_dir = temp_dir

    def __repr__(self) -> str:
        where = "file" if self._fd is not None else "memory"
        return f"<RequestBody {self.size} bytes in {where}>"

    @property
    def spilled(self) -> bool:
        return self._fd is not None

    def append(self, data: bytes) -> None:
        self.size += len(data)
        if self._fd is None and self._memory + len(data) <= self._memory_limit:
            self._chunks.append(data)
            self._memory += len(data)
            return
        if self._fd is None:
            self._fd = _temp_file(self._temp_dir)
            for chunk in self._chunks:
                os.write(self._fd, chunk)
            self._chunks = []
            self._memory = 0
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def chunks(self):
        """The body in order, at most CHUNK bytes at a time from the file."""
        if self._fd is None:
            yield from self._chunks
            return
        offset = 0
        while offset < self.size:
            data = os.pread(self._fd, CHUNK, offset)
            if not data:
                return
            offset += len(data)
            yield data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._chunks = []


class Spool:
    """Bytes for a client that is not reading as fast as they come.

    ``push`` writes straight to the socket when nothing is queued and the
    socket has room; otherwise it queues, in memory up to ``memory_limit``
    then in a temporary file up to ``file_limit``. ``room`` and ``flushed``
    are the two waits the producer may need.
    """

    __slots__ = ("channel", "_memory", "_memory_size", "_fd", "_file_write", "_file_read",
                 "_memory_limit", "_file_limit", "_temp_dir", "_progress", "peak")

    def __init__(self, channel: Channel, memory_limit: int, file_limit: int, temp_dir: str = "") -> None:
        self.channel = channel
        self._memory: collections.deque[bytes] = collections.deque()
        self._memory_size = 0
        self._fd: int | None = None
        self._file_write = 0
        self._file_read = 0
        self._memory_limit = memory_limit
        self._file_limit = file_limit
        self._temp_dir = temp_dir
        self._progress: asyncio.Future | None = None
        self.peak = 0

    def __repr__(self) -> str:
        return f"<Spool memory={self._memory_size} file={self._file_write - self._file_read}>"

    @property
    def pending(self) -> int:
        return self._memory_size + self._file_write - self._file_read

    def push(self, data: bytes) -> None:
        if not data:
            return
        if not self.pending and not self.channel.write_paused:
            self.channel.write(data)
            return
        if self.channel.on_resume is None:
            self.channel.on_resume = self._pump
        if self._fd is None and (self._memory_size + len(data) <= self._memory_limit or not self._file_limit):
            self._memory.append(data)
            self._memory_size += len(data)
        else:
            if self._fd is None:
                self._fd = _temp_file(self._temp_dir)
            os.pwrite(self._fd, data, self._file_write)
            self._file_write += len(data)
        self.peak = max(self.peak, self.pending)

    @property
    def full(self) -> bool:
        """Memory and file limits reached: the producer should wait for ``room``."""
        if self._fd is None:
            return self._memory_size >= self._memory_limit and self._file_limit == 0
        return self._file_write - self._file_read >= self._file_limit

    def _pump(self) -> None:
        channel = self.channel
        while not channel.write_paused and self.pending and not channel.lost:
            if self._memory:
                data = self._memory.popleft()
                self._memory_size -= len(data)
            else:
                data = os.pread(self._fd, CHUNK, self._file_read)
                if not data:
                    break
                self._file_read += len(data)
                if self._file_read == self._file_write:
                    self._file_read = self._file_write = 0  # reuse the file from its start
            channel.write(data)
        progress = self._progress
        if progress is not None and not progress.done():
            progress.set_result(None)

    async def _wait_progress(self, timeout: float) -> None:
        if self.channel.lost:
            raise ConnectionResetError("client went away")
        waiter = self._progress = self.channel.loop.create_future()
        lost_before = self.channel.on_lost
        self.channel.on_lost = self._pump
        timer = self.channel.loop.call_later(timeout, expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._progress = None
            self.channel.on_lost = lost_before
        if self.channel.lost:
            raise ConnectionResetError("client went away")

    async def room(self, timeout: float) -> None:
        """Wait while the spool is full; TimeoutError if the client takes nothing for ``timeout``."""
        while self.full:
            await self._wait_progress(timeout)

    async def flushed(self, timeout: float) -> None:
        """Wait until every queued byte was handed to the socket."""
        while self.pending:
            await self._wait_progress(timeout)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._memory.clear()
        self._memory_size = 0
        if self.channel.on_resume == self._pump:
            self.channel.on_resume = None
