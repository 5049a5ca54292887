"""Listening sockets, bound once by the master and inherited by every worker.

Workers share the master's sockets rather than binding their own with
SO_REUSEPORT: with SO_REUSEPORT the kernel queues each new connection on one
worker's socket, and a worker that closes its socket during a reload or a
graceful stop resets whatever was queued on it. A shared socket has one
queue that any live worker drains, so reloads lose nothing.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import stat
import weakref

from ..config import Address, Listen, UnixAddress
from ..http.proxyproto import UNIX_CLIENT

log = logging.getLogger("proxy")

BACKLOG = 1024

_HINTS = {
    errno.EADDRINUSE: " (another process uses it: stop it, or change [server].listen)",
    errno.EACCES: " (ports below 1024 need privileges: use a higher port)",
    errno.EADDRNOTAVAIL: " (no interface of this machine has that address)",
}
_UNIX_HINTS = {
    errno.EACCES: " (the proxy's user may not create files in that folder)",
    errno.ENOENT: " (the folder does not exist)",
    errno.EROFS: " (that file system is read-only)",
}
# The unix socket files this process made: socket -> (path, device, inode), so that closing removes the file
# only while it is still the one made here, never a file another proxy has bound there since.
_made: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ListenError(OSError):
    """A listening socket could not be opened; ``strerror`` is the one-line reason."""


def _failed(exc: OSError, address, hints: dict) -> ListenError:
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return ListenError(exc.errno, f"cannot listen on {address}: {reason}{hints.get(exc.errno, '')}")


def bind(entry: Listen, backlog: int = BACKLOG) -> socket.socket:
    """A listening socket for one ``listen`` entry (ListenError with one line if it cannot be had)."""
    address = entry.address
    if type(address) is UnixAddress:
        return _bind_unix(address, entry.socket_mode, backlog)
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(errno.EINVAL, f"cannot listen on {address}: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Lets "[::]:8080" and "0.0.0.0:8080" both be listed, as nginx's ipv6only=on.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise _failed(exc, address, _HINTS) from None
    return sock


def _bind_unix(address: UnixAddress, mode: int, backlog: int) -> socket.socket:
    """Bind a unix socket file with exactly ``mode``, replacing one a stopped process left behind."""
    path = address.path
    _remove_stale(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The file is created with 0o777 minus the umask: set the umask so it is born with ``mode`` and is
        # never more open than asked, even for an instant. The master binds before it starts any thread.
        umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(umask)
        made = os.stat(path)
        _made[sock] = (path, made.st_dev, made.st_ino)
        os.chmod(path, mode)  # a default ACL on the folder may have widened it
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        close_listener(sock)
        raise _failed(exc, address, _UNIX_HINTS) from None
    return sock


def _remove_stale(address: UnixAddress) -> None:
    """A socket file nobody listens on (a proxy that was killed leaves one) is removed, as Gunicorn and
    nginx do; one a live process listens on, or a file that is not a socket, is left alone: an error."""
    path = address.path
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _failed(exc, address, _UNIX_HINTS) from None
    if not stat.S_ISSOCK(found.st_mode):
        raise ListenError(errno.EEXIST, f"cannot listen on {address}: a file that is not a socket is there "
                                        "(remove it, or choose another path)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        answer = probe.connect_ex(path)
    if answer != errno.ECONNREFUSED:  # 0: accepted; EAGAIN: a listener with a full queue
        raise ListenError(errno.EADDRINUSE, f"cannot listen on {address}: another process listens on it "
                                            "(stop it, or change [server].listen)")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _failed(exc, address, _UNIX_HINTS) from None
    log.info("%s: removed the socket file a stopped process left there", address)


def close_listener(sock: socket.socket) -> None:
    """Close a listening socket; a unix socket's file goes too, if it is still the one this process made
    (a worker closes the sockets it inherited with ``sock.close()``: the file is the master's)."""
    sock.close()
    made = _made.pop(sock, None)
    if made is None:
        return
    path, device, inode = made
    try:
        found = os.stat(path)
        if (found.st_dev, found.st_ino) == (device, inode):
            os.unlink(path)
    except OSError:
        pass


def chmod_listener(entry: Listen, sock: socket.socket) -> None:
    """Give a unix socket kept across a reload the mode its new listen entry asks for."""
    if type(entry.address) is UnixAddress:
        try:
            os.chmod(entry.address.path, entry.socket_mode)
        except OSError as exc:
            log.warning("%s: cannot change its mode to %o: %s", entry.address, entry.socket_mode, exc.strerror)


def keyed(entries) -> list[tuple[tuple, Listen]]:
    """Each listen entry with the key its socket is kept under across reloads: its address, and which
    occurrence of that address it is (only port 0 may be listed more than once, each a port of its own)."""
    seen: collections.Counter = collections.Counter()
    out = []
    for entry in entries:
        out.append(((entry.address, seen[entry.address]), entry))
        seen[entry.address] += 1
    return out


def bind_all(entries) -> list[tuple[Listen, socket.socket]]:
    """Bind every listen entry or none: on the first failure the others are closed again."""
    bound: list = []
    try:
        for entry in entries:
            bound.append((entry, bind(entry)))
    except ListenError:
        for _, sock in bound:
            close_listener(sock)
        raise
    return bound


def bound_address(sock: socket.socket) -> Address | UnixAddress:
    if sock.family == socket.AF_UNIX:
        return UnixAddress(sock.getsockname())
    host, port = sock.getsockname()[:2]
    return Address(host, port)


def describe_listener(entry: Listen, sock: socket.socket, scheme: str) -> str:
    """The "listening on" line: a URL for TCP, the socket file for unix, and the PROXY protocol if on."""
    address = bound_address(sock)
    where = f"{address} ({scheme})" if type(address) is UnixAddress else f"{scheme}://{address}/"
    return f"listening on {where}" + (" with the PROXY protocol" if entry.proxy_protocol else "")


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (nginx: worker_rlimit_nofile); returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            return soft
    return soft


def prepare(transport, high_water: int) -> None:
    """A new connection's transport: TCP_NODELAY (answers are written whole; Nagle's algorithm would only
    hold their last segment back) and the write buffer's high-water mark, past which its producer waits."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport.set_write_buffer_limits(high=high_water)


def peer_ip(transport) -> str:
    """The address of the other end: "unix:" for a unix socket's client (it has none; nginx's $remote_addr
    says the same), "" for a transport that has none."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return peer[0]
    sock = transport.get_extra_info("socket")
    return UNIX_CLIENT if sock is not None and sock.family == socket.AF_UNIX else ""
