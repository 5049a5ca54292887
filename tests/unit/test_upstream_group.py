"""Group state without sockets: availability, backups, passive and active health, resolution."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy import config
from proxy.upstream.group import UpstreamGroup
from proxy.upstream.health import HealthState


class FakeLoop:
    """Just enough of a loop for UpstreamGroup's bookkeeping: a clock we move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def group_of(servers: str, extra: str = "") -> tuple[UpstreamGroup, FakeLoop]:
    cfg = config.from_dict(__import__("tomllib").loads(f"[upstreams.app]\nservers = {servers}\n{extra}"),
                           Path("/tmp/proxy.toml"))
    loop = FakeLoop()
    return UpstreamGroup(cfg.upstreams["app"], loop), loop


def names(group, picks=30, key=b"k"):
    return [str(group.pick(key, set()).address) for _ in range(picks)]


def test_backup_only_when_no_primary_is_available():
    group, loop = group_of('["127.0.0.1:1", {address = "127.0.0.1:2", backup = true}]')
    assert set(names(group)) == {"127.0.0.1:1"}
    group.peers[0].health.up = False
    assert set(names(group)) == {"127.0.0.1:2"}
    group.peers[1].health.up = False
    assert group.pick(b"k", set()) is None


def test_tried_peers_are_skipped():
    group, _ = group_of('["127.0.0.1:1", "127.0.0.1:2"]')
    first = group.pick(b"k", set())
    second = group.pick(b"k", {first})
    assert second is not first
    assert group.pick(b"k", {first, second}) is None


def test_max_conns_makes_a_server_unavailable():
    group, _ = group_of('[{address = "127.0.0.1:1", max_conns = 2}, "127.0.0.1:2"]')
    group.peers[0].in_flight = 2
    assert set(names(group)) == {"127.0.0.1:2"}


def test_passive_failures_rest_a_server_for_fail_timeout():
    group, loop = group_of('["127.0.0.1:1", "127.0.0.1:2"]', "max_fails = 2\nfail_timeout = 10.0")
    bad = group.peers[0]
    group.failed(bad, "connection refused")
    assert bad.state(loop.now) == "failing" and bad.available(loop.now)  # one failure of two allowed
    loop.now += 11  # the window passes: the count starts again
    group.failed(bad, "connection refused")
    assert bad.state(loop.now) == "failing" and bad.available(loop.now)
    group.failed(bad, "connection refused")
    assert bad.state(loop.now) == "failed"
    assert set(names(group)) == {"127.0.0.1:2"}
    loop.now += 10.5
    assert bad.available(loop.now)
    group.succeeded(bad)
    assert bad.failed_until == 0.0 and bad.fails == 0


def test_a_lone_server_is_never_rested():
    group, loop = group_of('["127.0.0.1:1"]')
    for _ in range(5):
        group.failed(group.peers[0], "refused")
    assert group.peers[0].available(loop.now)
    assert group.peers[0].failures == 5


def test_retry_after_says_when_a_server_returns():
    group, loop = group_of('["127.0.0.1:1", "127.0.0.1:2"]', "fail_timeout = 30.0")
    for peer in group.peers:
        group.failed(peer, "refused")
    assert group.pick(b"k", set()) is None
    assert 29 <= group.retry_after() <= 31


def test_health_state_needs_thresholds_to_flip():
    health = config.Health(healthy_threshold=2, unhealthy_threshold=3)
    state = HealthState()
    flips = [state.observe("refused", health, t) for t in range(3)]
    assert flips == [False, False, True] and not state.up
    assert state.last_error == "refused"
    flips = [state.observe(None, health, t) for t in range(2)]
    assert flips == [False, True] and state.up
    # A single bad probe among good ones changes nothing.
    assert not state.observe("refused", health, 9) and state.up
    assert not state.observe(None, health, 10) and state.up


def test_host_names_become_one_peer_per_address_and_vanished_ones_drain():
    async def scenario():
        group, _ = group_of('["localhost:9"]', "")
        group.loop = asyncio.get_running_loop()
        results = [{("127.0.0.1", 9), ("127.0.0.2", 9)}, {("127.0.0.2", 9), ("127.0.0.3", 9)}]

        async def fake_getaddrinfo(host, port, type=0):
            return [(2, 1, 6, "", address) for address in sorted(results.pop(0))]
        group.loop.getaddrinfo = fake_getaddrinfo  # type: ignore[method-assign]
        spec = group.config.servers[0]
        await group.resolve([spec])
        assert sorted(str(p.address) for p in group.peers) == ["127.0.0.1:9", "127.0.0.2:9"]
        group.peers[0].in_flight = 1  # a request is still running on 127.0.0.1
        await group.resolve([spec])
        states = {str(p.address): p.draining for p in group.peers}
        assert states == {"127.0.0.1:9": True, "127.0.0.2:9": False, "127.0.0.3:9": False}
        assert all(str(group.pick(b"k", set()).address) != "127.0.0.1:9" for _ in range(10))
        group.finished(group.peers[0])  # its last request ends: it is removed
        assert sorted(str(p.address) for p in group.peers) == ["127.0.0.2:9", "127.0.0.3:9"]
        group.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("policy", ["round_robin", "least_conn", "ip_hash", "random"])
def test_every_policy_works_through_the_group(policy):
    group, _ = group_of('["127.0.0.1:1", {address = "127.0.0.1:2", weight = 3}]', f'balance = "{policy}"')
    picked = {str(group.pick(b"10.0.0.%d" % i, set()).address) for i in range(200)}
    assert picked == {"127.0.0.1:1", "127.0.0.1:2"}


def test_a_lone_server_whose_tries_fail_is_failing_not_up():
    group, loop = group_of('["127.0.0.1:1"]')
    peer = group.peers[0]
    group.failed(peer, "connection refused")
    assert peer.state(loop.now) == "failing" and peer.available(loop.now)  # never rested, but not "up"
    group.succeeded(peer)
    assert peer.state(loop.now) == "up"


def test_below_max_fails_a_failed_try_shows_as_failing_and_after_a_rest_too():
    group, loop = group_of('["127.0.0.1:1", "127.0.0.1:2"]', "max_fails = 2\nfail_timeout = 10.0")
    bad = group.peers[0]
    group.failed(bad, "connection refused")
    assert bad.state(loop.now) == "failing"
    group.failed(bad, "connection refused")
    assert bad.state(loop.now) == "failed"
    loop.now += 10.5  # the rest is over, but nothing has succeeded since
    assert bad.state(loop.now) == "failing" and bad.available(loop.now)


HEALTH = "max_fails = 1\nfail_timeout = 60.0\n[upstreams.app.health]\nhealthy_threshold = 2\nunhealthy_threshold = 2\n"


def test_active_checks_end_a_passive_rest():
    # HAProxy's rule: once the probes say up, the server is up, whatever fail_timeout has left.
    group, loop = group_of('["127.0.0.1:1", "127.0.0.1:2"]', HEALTH)
    bad = group.peers[0]
    group.probed(bad, None)
    group.probed(bad, None)  # healthy before the failure: these probes do not count for what follows
    group.failed(bad, "connection refused")
    assert bad.state(loop.now) == "failed" and set(names(group)) == {"127.0.0.1:2"}
    loop.now += 2
    group.probed(bad, None)
    assert bad.state(loop.now) == "failed"  # one good probe of two
    loop.now += 2
    group.probed(bad, None)
    assert bad.state(loop.now) == "up" and bad.available(loop.now)  # 56 s before fail_timeout would end it
    assert set(names(group)) == {"127.0.0.1:1", "127.0.0.1:2"}


def test_a_failed_probe_restarts_the_count_that_ends_a_rest():
    group, loop = group_of('["127.0.0.1:1", "127.0.0.1:2"]', HEALTH)
    bad = group.peers[0]
    group.failed(bad, "connection refused")
    for error in (None, "refused", None):
        group.probed(bad, error)
    assert bad.state(loop.now) == "failed"
    group.probed(bad, None)
    assert bad.state(loop.now) == "up"


def test_active_checks_that_take_a_server_down_outrank_failing():
    group, loop = group_of('["127.0.0.1:1"]', HEALTH)
    peer = group.peers[0]
    group.failed(peer, "connection refused")
    group.probed(peer, "connection refused")
    group.probed(peer, "connection refused")
    assert peer.state(loop.now) == "down" and not peer.available(loop.now)
    group.probed(peer, None)
    group.probed(peer, None)
    assert peer.state(loop.now) == "up"
