"""Balancing policies: plain functions that choose one server of a group.

Every policy has the same shape, ``choose(peers, usable, key) -> peer | None``:
``peers`` is the group's primary (or backup) servers in configuration order,
``usable(peer)`` says whether one may take this request now (not down, not
failed, under max_conns, not tried yet), and ``key`` is the client address
for ip_hash. A peer needs only ``weight`` and ``in_flight``; round robin also
keeps ``current_weight`` on it, exactly as nginx keeps it on its peers.

No sockets and no clock: the tests drive them 10,000 times over fake peers.
"""

from __future__ import annotations

import random as _random
import zlib
from typing import Callable, Protocol, Sequence


class PeerLike(Protocol):
    weight: int
    in_flight: int
    current_weight: int


Usable = Callable[[PeerLike], bool]


def round_robin(peers: Sequence[PeerLike], usable: Usable, key: bytes = b"") -> PeerLike | None:
    """Smooth weighted round robin (nginx's ngx_http_upstream_get_peer).

    Each pick adds every candidate's weight to its current weight, takes the
    largest, and subtracts the total from the winner: weights 5,1,1 give
    a a b a c a a rather than a a a a a b c.
    """
    best = None
    total = 0
    for peer in peers:
        if not usable(peer):
            continue
        peer.current_weight += peer.weight
        total += peer.weight
        if best is None or peer.current_weight > best.current_weight:
            best = peer
    if best is not None:
        best.current_weight -= total
    return best


def least_conn(peers: Sequence[PeerLike], usable: Usable, key: bytes = b"") -> PeerLike | None:
    """Fewest requests in flight relative to weight; ties go round robin (as nginx does)."""
    candidates = [p for p in peers if usable(p)]
    if not candidates:
        return None
    lowest = min(p.in_flight / p.weight for p in candidates)
    tied = [p for p in candidates if p.in_flight / p.weight == lowest]
    return round_robin(tied, lambda p: True)


def ip_hash(peers: Sequence[PeerLike], usable: Usable, key: bytes = b"") -> PeerLike | None:
    """The same client goes to the same server while it is usable.

    The hash picks a point on the weighted list of *all* peers, so one server
    going down moves only its own clients; when the chosen one is unusable the
    hash is stirred and tried again (nginx gives up after 20 and falls back to
    round robin, and so does this).
    """
    total = sum(p.weight for p in peers)
    if total == 0:
        return None
    digest = zlib.crc32(key)
    for _ in range(20):
        point = digest % total
        for peer in peers:
            point -= peer.weight
            if point < 0:
                break
        if usable(peer):
            return peer
        digest = (digest * 113 + 6271) & 0xFFFFFFFF
    return round_robin(peers, usable)


def random_two(peers: Sequence[PeerLike], usable: Usable, key: bytes = b"",
               rng: _random.Random = _random.Random()) -> PeerLike | None:
    """Power of two choices: two weighted random picks, the one with fewer requests in flight wins."""
    candidates = [p for p in peers if usable(p)]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    first, second = rng.choices(candidates, weights=[p.weight for p in candidates], k=2)
    if first is second:
        return first
    if second.in_flight * first.weight < first.in_flight * second.weight:
        return second
    return first


POLICIES: dict[str, Callable[..., PeerLike | None]] = {
    "round_robin": round_robin,
    "least_conn": least_conn,
    "ip_hash": ip_hash,
    "random": random_two,
}
