"""The shared status board and the merge of worker views, without processes."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from proxy.metrics import NOTHING_RETIRED, BUCKETS, master_view, merge, render_prometheus, retire, status_document
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


def test_a_cleared_slot_keeps_its_last_payload_for_the_master_until_released():
    board = Board(slots=2, slot_bytes=1024)
    slot = board.take()
    board.publish(slot, b"first")
    board.publish(slot, b"final")
    board.clear(slot)  # the worker withdraws its view as it stops
    assert board.read(slot) is None and board.read_all() == []
    assert board.read_last(slot) == b"final"
    board.release(slot)  # the master has folded it in
    assert board.read_last(slot) is None
    assert board.take() == slot and board.read_last(slot) is None  # a new worker starts from nothing


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


def with_edge(v, tunnels_open=1, total=4):
    return {**v, "edge": {"tunnels": {"open": tunnels_open, "total": total, "bytes_to_upstream": 10,
                                      "bytes_to_client": 20}, "tls": None}}


def test_the_master_keeps_the_counters_of_workers_that_left():
    # Generation 1 (pids 1 and 2) served 5 + 7 requests and was replaced by a reload; pid 3 has served 1 since.
    retired = retire(retire(NOTHING_RETIRED, with_edge(view(1, 5))), with_edge(view(2, 7)))
    merged = merge([with_edge(view(3, 1), total=1), master_view(99, 50.0, retired)])
    assert merged["requests"] == [["/", 200, 13]]
    assert merged["durations"]["/"]["count"] == 13 and merged["durations"]["/"]["buckets"][0] == 13
    assert [w["pid"] for w in merged["workers"]] == [3]  # the master is no worker
    assert merged["connections"] == {"open": 2, "active": 1, "refused_at_max": 0}  # only the live worker's
    server = merged["upstreams"]["app"]["servers"][0]
    assert (server["requests"], server["in_flight"], server["idle_connections"]) == (13, 0, 1)
    assert merged["edge"]["tunnels"] == {"open": 1, "total": 9, "bytes_to_upstream": 30, "bytes_to_client": 60}
    document = status_document(merged, "twotier")
    assert document["master_pid"] == 99 and document["pid"] == 3 and document["requests"] == 13
    assert document["started"] == datetime.fromtimestamp(50, timezone.utc).astimezone().isoformat(timespec="milliseconds")
    assert document["uptime_seconds"] > 1e9  # since the master's start (50 s after the epoch), not pid 3's
    assert "proxy_start_time_seconds 50.000" in render_prometheus(merged).decode()


def test_counters_of_a_server_no_longer_configured_are_left_out():
    gone = view(1, 5)
    gone["upstreams"]["app"]["servers"][0]["address"] = "10.0.0.9:8000"
    merged = merge([view(2, 1), master_view(99, 50.0, retire(NOTHING_RETIRED, gone))])
    assert [s["address"] for s in merged["upstreams"]["app"]["servers"]] == ["10.0.0.1:8000"]
    assert merged["upstreams"]["app"]["servers"][0]["requests"] == 1 and merged["requests"] == [["/", 200, 6]]


def test_without_a_master_the_workers_own_start_counts():
    merged = merge([view(1, 1), view(2, 1)])
    assert merged["master_pid"] is None and merged["started"] == 101.0
