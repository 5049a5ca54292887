"""The shared status board and the merge of worker views, without processes."""

from __future__ import annotations

import json
import os

from proxy.metrics import BUCKETS, merge, render_prometheus, status_document
from proxy.server.board import Board


def test_slots_round_trip_and_clear():
    board = Board(slots=4, slot_bytes=1024)
    a, b = board.take(), board.take()
    assert (a, b) == (0, 1)
    assert board.publish(a, b'{"x": 1}') and board.read(a) == b'{"x": 1}'
    assert board.read(b) is None
    assert not board.publish(b, b"x" * 2000)  # too big: refused, nothing half-written
    assert board.read(b) is None
    board.publish(a, b"second")
    assert board.read_all() == [b"second"]
    board.release(a)
    assert board.read(a) is None and board.take() == 0


def test_a_forked_child_writes_where_the_parent_reads():
    board = Board(slots=2, slot_bytes=1024)
    pid = os.fork()
    if pid == 0:
        board.publish(1, b"from the child")
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.read(1) == b"from the child"


def view(pid, requests, state="up", in_flight=0):
    return {
        "pid": pid, "published": 0, "started": 100.0 + pid,
        "connections": {"open": 2, "active": 1, "refused_at_max": 0},
        "process": {"open_fds": 10},
        "metrics": {"requests": [["/", 200, requests]],
                    "durations": {"/": {"sum": 0.5, "count": requests, "buckets": [requests] + [0] * (len(BUCKETS) - 1)}}},
        "upstreams": {"app": {"balance": "round_robin", "servers": [{
            "address": "10.0.0.1:8000", "configured_as": "app:8000", "state": state, "weight": 1,
            "backup": False, "max_conns": 0, "in_flight": in_flight, "requests": requests, "failures": 0,
            "idle_connections": 1, "connects": 1, "last_error": None, "last_check_seconds_ago": None}]}},
    }


def test_merge_adds_counters_and_votes_on_state():
    merged = merge([view(1, 5, "up", 1), view(2, 7, "failed", 2), view(3, 1, "failed")])
    assert merged["requests"] == [["/", 200, 13]]
    assert merged["durations"]["/"]["count"] == 13 and merged["durations"]["/"]["buckets"][0] == 13
    assert merged["connections"] == {"open": 6, "active": 3, "refused_at_max": 0}
    server = merged["upstreams"]["app"]["servers"][0]
    assert server["requests"] == 13 and server["in_flight"] == 3 and server["idle_connections"] == 3
    assert server["state"] == "failed" and server["states_by_worker"] == {"up": 1, "failed": 2}
    document = status_document(merged, "twotier")
    assert document["pid"] == 1 and document["requests"] == 13 and len(document["workers"]) == 3
    assert json.loads(json.dumps(document)) == document


def test_a_tie_shows_the_state_that_needs_attention():
    server = merge([view(1, 1, "up"), view(2, 1, "down")])["upstreams"]["app"]["servers"][0]
    assert server["state"] == "down"


def test_prometheus_rendering_of_the_merge():
    text = render_prometheus(merge([view(1, 5), view(2, 7)])).decode()
    assert 'proxy_requests_total{route="/",status="200"} 12' in text
    assert 'proxy_request_duration_seconds_bucket{route="/",le="+Inf"} 12' in text
    assert "proxy_workers 2" in text
    assert 'proxy_upstream_state{upstream="app",server="10.0.0.1:8000",state="up"} 1' in text
    for line in text.splitlines():
        assert line.startswith("#") or line.rsplit(" ", 1)[1].replace(".", "").isdigit(), line
