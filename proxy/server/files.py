"""Static files to a client: found through the open-file cache, sent without holding them in memory.

``serve_static`` carries out a ``Static`` action: the cache (http/static.py)
says what the path names; a small file's bytes come from the cache and go
out with the head in one write; a larger one is opened and sent by a
``FileSender``, a chunk whenever the client's socket has room (called back
by ``resume_writing``, no task), copied or with ``sendfile(2)`` when
``[server] sendfile`` asks for it. Either way each wait is bounded by
``send_timeout`` (the connection's deadline), so a reader that stops costs
one idle connection and is then closed.
"""

from __future__ import annotations

import logging
import os

from ..errors import ClientError
from ..http import static
from ..http.responses import HTML, error_page

log = logging.getLogger("proxy")

# Chunked reads: growing to CHUNK_FAST while the client keeps up (fewer turns
# of the loop per megabyte), back to CHUNK_SLOW as soon as it does not, so a
# slow reader holds at most about that much of the file in user space.
CHUNK_FAST = 128 * 1024
CHUNK_SLOW = 32 * 1024
TURN_BYTES = 1024 * 1024  # written in one go before the other connections get the loop
SENDFILE_STEP = 1024 * 1024  # one sendfile(2) call at most; the kernel sends what the socket takes


def serve_static(client, action) -> None:
    """Answer the current request of ``client`` from ``action.route``'s folder."""
    w = client.w
    exchange = client.exchange
    head = exchange.head
    route = action.route
    exchange.handler = "static"
    files = w.files
    try:
        found = files.lookup(route, head.path, head.query, w.loop.time())
    except ClientError as exc:
        if exc.status == 404 and action.otherwise is not None:
            client.execute(action.otherwise)  # nginx try_files $uri @app
            return
        raise
    kind = type(found)
    if kind is static.Redirect:
        client.respond(301, [(b"location", found.location), HTML], error_page(301, w.server_name))
        return
    if kind is static.Listing:
        client.respond(200, [HTML], static.listing_page(found.folder, found.url_path, route.dotfiles))
        return
    accept = head.get(b"accept-encoding")
    variant = found.choose(accept)
    if found.compressible:  # compressed once and kept; a file too large for that is compressed as it is sent
        coding = static.coding_for(found, variant, route, head.headers, accept)
        if coding is not None:
            variant = files.encoded(route, head.path, found, coding) or variant
    plan = static.plan(variant, head.method, head.headers)
    status = plan.status
    if status == 412:
        raise ClientError("precondition failed", 412, keep_alive=True)
    if status == 416:
        client.respond(416, [HTML, *plan.headers], error_page(416, w.server_name))
        return
    body = plan.body
    if body is not None:  # cached bytes, or no body at all (HEAD, 304): one write, no open()
        # HEAD gets the length a GET would have; a 304 none.
        client.respond(status, _without_length(plan.headers), body,
                       length=plan.content_length if status != 304 else None)
        return
    try:
        fd = os.open(variant.path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        files.forget(route, head.path)
        raise ClientError("no such file", 404, keep_alive=True) from None
    except OSError:
        files.forget(route, head.path)
        raise ClientError("cannot open file", 403, keep_alive=True) from None
    try:
        info = os.fstat(fd)
        if not variant.matches(info):
            # Changed since it was looked up: the next request looks it up again, and this one
            # is answered for the file actually opened.
            files.forget(route, head.path)
            plan = static.plan(variant.restated(info), head.method, head.headers)
            if plan.status in (412, 416) or plan.body is not None:
                os.close(fd)
                fd = -1
                client.respond(plan.status, _without_length(plan.headers), plan.body or b"",
                               length=plan.content_length if plan.status not in (304, 412, 416) else None)
                return
        if len(plan.parts) == 1 and plan.content_length <= static.SMALL_FILE:
            offset, length = plan.parts[0]
            data = os.pread(fd, length, offset)
            if len(data) == length:
                client.respond(plan.status, _without_length(plan.headers), data)
                return
        client.start_response(plan.status, _without_length(plan.headers), plan.content_length)
        sender = FileSender(client, fd, plan.parts, may_sendfile(client))
        fd = -1  # the sender owns it now
        client.responder = sender
        sender.writable()
    finally:
        if fd >= 0:
            os.close(fd)


def _without_length(headers) -> list[tuple[bytes, bytes]]:
    """The plan's headers minus Content-Length (its last one when present): the client connection adds
    the framing itself."""
    if headers and headers[-1][0] == b"content-length":
        return list(headers[:-1])
    return [(name, value) for name, value in headers if name != b"content-length"]


def may_sendfile(client) -> bool:
    """Whether a FileSender may use sendfile(2), asked after ``start_response``: it is on, the bytes go from
    the file straight to the socket (not through an HTTP/2 stream's frames: ``takes_sendfile``), and the
    body is not compressed on its way (``client.encoder``: it must pass through ``client.write``)."""
    return client.w.config.server.sendfile and client.takes_sendfile and client.encoder is None


class FileSender:
    """Sends ``parts`` of an open file (``(offset, length)`` pairs, or bytes between multipart parts).

    Two ways, both driven by the client's ``resume_writing`` (no task): copying a chunk at a
    time through the transport, or (``[server] sendfile``, plain TCP) ``os.sendfile(2)`` straight
    from the file to the socket whenever the transport has nothing queued, so the bytes never
    enter user space. When the socket is full, sendfile cannot wait by itself: one chunk goes
    through the transport instead, and with the transport's high-water mark at 0 for the
    duration, any queued byte pauses the sender until the kernel took it (``resume_writing``),
    so the two ways never reorder bytes.
    """

    __slots__ = ("client", "fd", "parts", "index", "offset", "end", "buffer", "chunk", "out_fd", "limits")

    def __init__(self, client, fd: int, parts: tuple, sendfile: bool) -> None:
        self.client = client
        self.fd = fd
        self.parts = parts
        self.index = -1
        self.offset = self.end = 0
        self.buffer: memoryview | None = None
        self.chunk = CHUNK_SLOW
        self.out_fd = -1
        transport = client.transport
        if sendfile and transport.get_extra_info("sslcontext") is None:  # TLS must encrypt in user space
            sock = transport.get_extra_info("socket")
            if sock is not None:
                self.out_fd = sock.fileno()
                self.limits = transport.get_write_buffer_limits()  # (low, high), given back by close()
                transport.set_write_buffer_limits(high=0)

    def __repr__(self) -> str:
        how = "sendfile" if self.out_fd >= 0 else "copy"
        return f"<FileSender fd={self.fd} {how} part={self.index}/{len(self.parts)} at={self.offset}/{self.end}>"

    def _next_part(self) -> bool:
        """Move to the next file region (writing byte parts on the way); False when none is left."""
        client = self.client
        while self.offset >= self.end:
            self.index += 1
            if self.index >= len(self.parts):
                return False
            part = self.parts[self.index]
            if type(part) is bytes:
                client.write(part)
                client.exchange.body_bytes += len(part)
                continue
            self.offset, length = part
            self.end = self.offset + length
        return True

    def writable(self) -> None:
        """Send while the client's socket has room; called again by resume_writing."""
        if self.fd < 0:
            return
        client = self.client
        transport = client.transport
        budget = TURN_BYTES
        while not client.write_paused:
            if budget <= 0:
                # A fast reader of a large file would otherwise keep the loop to itself.
                client.w.loop.call_soon(self.writable)
                return
            if not self._next_part():
                self._done()
                return
            if transport.is_closing():
                return
            if self.out_fd >= 0 and not transport.get_write_buffer_size():
                budget -= self._sendfile(transport)
            else:
                budget -= self._copy(transport)

    def _sendfile(self, transport) -> int:
        """One sendfile(2) of up to SENDFILE_STEP bytes; when the socket is full, one chunk through the
        transport instead (see the class docstring). Returns the bytes handed over."""
        try:
            sent = os.sendfile(self.out_fd, self.fd, self.offset, min(SENDFILE_STEP, self.end - self.offset))
        except (BlockingIOError, InterruptedError):
            return self._copy(transport)
        except OSError:  # the client went away under us: connection_lost follows
            self.client.abort()
            self.close()
            return 0
        if not sent:
            log.warning("%s shrank while it was being sent", self.client.exchange.head.path)
            self.client.abort()
            self.close()
            return 0
        self.offset += sent
        self.client.exchange.body_bytes += sent
        return sent

    def _copy(self, transport) -> int:
        """One chunk, read into a reused buffer.

        A fresh ``bytes`` per chunk costs an allocation the size of the chunk
        (above malloc's mmap threshold: mapped, faulted in, unmapped each time),
        which measured as half the CPU of a 1 MiB file. Chunks grow to
        CHUNK_FAST while the client takes everything at once and drop to
        CHUNK_SLOW while bytes stay queued. The buffer is replaced when the
        transport may still hold a view of it (Python 3.12 and uvloop queue
        views of what they cannot send at once), and let go while we wait for a
        slow client, so waiting holds no file data beyond the transport's queue.
        """
        end = self.end
        if self.buffer is None:
            self.buffer = memoryview(bytearray(min(CHUNK_FAST, end - self.offset)))
        self.chunk = min(self.chunk * 2, CHUNK_FAST) if transport.get_write_buffer_size() == 0 else CHUNK_SLOW
        want = min(self.chunk, end - self.offset, len(self.buffer))
        got = os.preadv(self.fd, [self.buffer[:want]], self.offset)
        if not got:
            log.warning("%s shrank while it was being sent", self.client.exchange.head.path)
            self.client.abort()
            self.close()
            return 0
        self.client.write(self.buffer[:got])
        self.client.exchange.body_bytes += got
        self.offset += got
        if self.client.write_paused or transport.get_write_buffer_size():
            self.buffer = None
        return got

    def _done(self) -> None:
        self.close()
        self.client.finish()

    def client_lost(self) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.buffer = None
        if self.out_fd >= 0:
            self.out_fd = -1
            transport = self.client.transport
            if not transport.is_closing():
                low, high = self.limits
                transport.set_write_buffer_limits(high=high, low=low)
