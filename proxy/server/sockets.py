"""Listening sockets, bound once by the master and inherited by every worker.

Workers share the master's sockets rather than binding their own with
SO_REUSEPORT: with SO_REUSEPORT the kernel queues each new connection on one
worker's socket, and a worker that closes its socket during a reload or a
graceful stop resets whatever was queued on it. A shared socket has one
queue that any live worker drains, so reloads lose nothing.
"""

from __future__ import annotations

import errno
import os
import socket

from ..config import Address

BACKLOG = 1024

_HINTS = {
    errno.EADDRINUSE: " (another process uses it: stop it, or change [server].listen)",
    errno.EACCES: " (ports below 1024 need privileges: use a higher port)",
    errno.EADDRNOTAVAIL: " (no interface of this machine has that address)",
}


class ListenError(OSError):
    """A listening socket could not be opened; ``strerror`` is the one-line reason."""


def bind(address: Address, backlog: int = BACKLOG) -> socket.socket:
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
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise ListenError(exc.errno, f"cannot listen on {address}: {reason}{_HINTS.get(exc.errno, '')}") from None
    return sock


def bind_all(addresses) -> dict[Address, socket.socket]:
    """Bind every address or none: on the first failure the others are closed again."""
    bound: dict[Address, socket.socket] = {}
    try:
        for address in addresses:
            bound[address] = bind(address)
    except ListenError:
        for sock in bound.values():
            sock.close()
        raise
    return bound


def bound_address(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return Address(host, port)


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
    """The address of the other end ("" for a Unix socket or a transport that has none)."""
    peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) and peer else ""
