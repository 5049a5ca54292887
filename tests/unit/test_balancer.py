"""Balancing policies over fake peers: no sockets, no clock."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from proxy.upstream import balancer


@dataclass(eq=False)
class FakePeer:
    name: str
    weight: int = 1
    in_flight: int = 0
    current_weight: int = 0
    up: bool = True


def everyone(peer) -> bool:
    return peer.up


def spread(policy, peers, picks=10_000, key=lambda i: b"", usable=everyone):
    counts = Counter()
    for i in range(picks):
        peer = policy(peers, usable, key(i))
        counts[peer.name if peer else None] += 1
    return counts


def assert_matches_weights(counts, peers, picks=10_000):
    total = sum(p.weight for p in peers if p.up)
    for peer in peers:
        expected = peer.weight / total if peer.up else 0.0
        assert abs(counts[peer.name] / picks - expected) <= 0.02, (peer.name, counts)


@pytest.mark.parametrize("weights", [(1, 1, 1), (5, 1, 1), (1, 2, 7), (3,), (10, 1)])
def test_round_robin_follows_weights(weights):
    peers = [FakePeer(f"s{i}", w) for i, w in enumerate(weights)]
    assert_matches_weights(spread(balancer.round_robin, peers), peers)


def test_round_robin_is_smooth():
    peers = [FakePeer("a", 5), FakePeer("b", 1), FakePeer("c", 1)]
    order = "".join(balancer.round_robin(peers, everyone).name for _ in range(7))
    assert order == "aabacaa"  # nginx's documented sequence for 5,1,1


def test_unusable_peers_are_skipped():
    peers = [FakePeer("a", 1), FakePeer("b", 3, up=False), FakePeer("c", 1)]
    for policy in balancer.POLICIES.values():
        counts = spread(policy, peers, key=lambda i: str(i).encode())
        assert counts["b"] == 0, policy
        assert counts["a"] + counts["c"] == 10_000


def test_no_usable_peer_gives_none():
    peers = [FakePeer("a", up=False)]
    for policy in balancer.POLICIES.values():
        assert policy(peers, everyone, b"x") is None
        assert policy([], everyone, b"x") is None


def test_least_conn_prefers_idle_servers_relative_to_weight():
    peers = [FakePeer("a", 1, in_flight=3), FakePeer("b", 1, in_flight=1), FakePeer("c", 4, in_flight=2)]
    assert balancer.least_conn(peers, everyone).name == "c"  # 2/4 < 1/1 < 3/1


def test_least_conn_ties_follow_weights():
    peers = [FakePeer("a", 1), FakePeer("b", 3)]
    assert_matches_weights(spread(balancer.least_conn, peers), peers)


def test_ip_hash_is_sticky_and_spreads_by_weight():
    peers = [FakePeer("a", 1), FakePeer("b", 1), FakePeer("c", 2)]
    first = {ip: balancer.ip_hash(peers, everyone, ip).name for ip in (b"10.0.0.%d" % i for i in range(50))}
    again = {ip: balancer.ip_hash(peers, everyone, ip).name for ip in first}
    assert first == again
    counts = spread(balancer.ip_hash, peers, key=lambda i: b"10.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255))
    assert_matches_weights(counts, peers)


def test_ip_hash_moves_only_the_clients_of_a_down_server():
    peers = [FakePeer("a"), FakePeer("b"), FakePeer("c")]
    keys = [b"192.168.1.%d" % i for i in range(200)]
    before = {k: balancer.ip_hash(peers, everyone, k).name for k in keys}
    peers[1].up = False
    after = {k: balancer.ip_hash(peers, everyone, k).name for k in keys}
    for k in keys:
        if before[k] != "b":
            assert after[k] == before[k]
        else:
            assert after[k] in ("a", "c")


def test_random_two_follows_weights_when_idle():
    peers = [FakePeer("a", 1), FakePeer("b", 2), FakePeer("c", 1)]

    def pick(peers, usable, key):
        return balancer.random_two(peers, usable, key, rng=rng)
    rng = random.Random(7)
    counts = spread(pick, peers)
    # Two choices with ties broken towards the first pick keep the weighted shares.
    assert_matches_weights(counts, peers)


def test_random_two_prefers_the_less_loaded_of_two():
    busy, idle = FakePeer("busy", in_flight=10), FakePeer("idle", in_flight=0)
    rng = random.Random(1)
    counts = spread(lambda p, u, k: balancer.random_two(p, u, k, rng=rng), [busy, idle], 4000)
    # Whenever both are drawn, the idle one wins; "busy" wins only when drawn twice (p = 1/4).
    assert abs(counts["busy"] / 4000 - 0.25) < 0.03, counts
