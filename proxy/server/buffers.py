"""Bodies held between the two sides: memory first, a temporary file beyond a limit.

``RequestBody`` is the client's body, read completely before the upstream is
contacted (a Gunicorn sync worker must never wait on a slow upload).
``Spool`` is the upstream's response while the client is slower than the
upstream: the upstream is read at its own pace and released early, and the
client is fed from here whenever its socket has room (``resume_writing``),
with no extra task. Both hold at most their memory limit in RAM.
"""

from __future__ import annotations

import collections
import os
import tempfile
from typing import Callable

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

    @property
    def in_memory(self) -> bool:
        return self._fd is None

    def joined(self) -> bytes:
        """The whole body, when it is in memory."""
        return b"".join(self._chunks)

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

    ``push`` writes straight to the client's transport when nothing is
    queued and the transport has room; otherwise it queues, in memory up to
    ``memory_limit`` then in a temporary file up to ``file_limit``. When
    ``full`` the producer (the upstream connection) stops reading and
    registers ``on_room``; the client connection calls ``pump`` on every
    ``resume_writing``, which feeds the transport and calls the producer
    back once there is room again, and the ``when_flushed`` callback once
    everything is out.
    """

    __slots__ = ("client", "_memory", "_memory_size", "_fd", "_file_write", "_file_read",
                 "_memory_limit", "_file_limit", "_temp_dir", "on_room", "_flushed")

    def __init__(self, client, memory_limit: int, file_limit: int, temp_dir: str = "") -> None:
        self.client = client  # has ``transport`` and ``write_paused``
        self._memory: collections.deque[bytes] = collections.deque()
        self._memory_size = 0
        self._fd: int | None = None
        self._file_write = 0
        self._file_read = 0
        self._memory_limit = memory_limit
        self._file_limit = file_limit
        self._temp_dir = temp_dir
        self.on_room: Callable[[], None] | None = None
        self._flushed: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Spool memory={self._memory_size} file={self._file_write - self._file_read}>"

    @property
    def pending(self) -> int:
        return self._memory_size + self._file_write - self._file_read

    def push(self, data) -> None:
        if not data:
            return
        if not self.pending and not self.client.write_paused:
            self.client.transport.write(data)
            return
        if self._fd is None and (self._memory_size + len(data) <= self._memory_limit or not self._file_limit):
            self._memory.append(bytes(data))
            self._memory_size += len(data)
        else:
            if self._fd is None:
                self._fd = _temp_file(self._temp_dir)
            os.pwrite(self._fd, data, self._file_write)
            self._file_write += len(data)

    @property
    def full(self) -> bool:
        """Memory and file limits reached: the producer should stop until ``on_room`` is called."""
        if self._fd is None:
            return self._memory_size >= self._memory_limit and self._file_limit == 0
        return self._file_write - self._file_read >= self._file_limit

    def pump(self) -> None:
        """Feed the transport while it has room; then tell the producer and the waiter what changed."""
        client = self.client
        transport = client.transport
        while not client.write_paused and self.pending and not transport.is_closing():
            if self._memory:
                data = self._memory.popleft()
                self._memory_size -= len(data)
            else:
                # Never past what this fill wrote: the file is reused from its start, so bytes
                # beyond _file_write are an earlier fill's and must not be sent again.
                data = os.pread(self._fd, min(CHUNK, self._file_write - self._file_read), self._file_read)
                if not data:
                    break
                self._file_read += len(data)
                if self._file_read == self._file_write:
                    self._file_read = self._file_write = 0  # reuse the file from its start
            transport.write(data)
        if self.on_room is not None and not self.full:
            on_room, self.on_room = self.on_room, None
            on_room()
        if not self.pending and self._flushed is not None:
            flushed, self._flushed = self._flushed, None
            flushed()

    def when_flushed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every queued byte was handed to the transport."""
        if not self.pending:
            callback()
        else:
            self._flushed = callback

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._memory.clear()
        self._memory_size = 0
        self.on_room = self._flushed = None
