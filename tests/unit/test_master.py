"""The master's decisions when a worker dies before it ever served, without forking."""

from __future__ import annotations

import signal
from pathlib import Path

from proxy import config
from proxy.server import master as master_module
from proxy.server.master import Master, Worker


def make_master(monkeypatch) -> tuple[Master, list]:
    cfg = config.from_dict({}, Path("/tmp/proxy.toml"))
    sent = []
    monkeypatch.setattr(master_module.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    return Master(cfg), sent


def test_a_worker_dying_at_first_start_stops_the_proxy_with_status_1(monkeypatch):
    master, sent = make_master(monkeypatch)
    master.generation = 1
    master.workers = {11: Worker(11, 1, -1, 0.0, 0), 12: Worker(12, 1, -1, 0.0, 1)}
    dead = master.workers.pop(11)
    master._failed_to_start(dead, 1 << 8)  # exit status 1
    assert master.exit_code == 1 and master.stopping
    assert sent == [(12, signal.SIGTERM)]


def test_a_new_generation_dying_at_start_keeps_the_old_one(monkeypatch):
    master, sent = make_master(monkeypatch)
    old_config = master.config
    master.generation = 2
    master._ready_generations = {1}
    master._previous = (old_config, None, 1)
    master.config = config.from_dict({"server": {"workers": 2}}, Path("/tmp/proxy.toml"))
    master.workers = {1: Worker(1, 1, -1, 0.0, 0, ready=True), 21: Worker(21, 2, -1, 0.0, 1),
                      22: Worker(22, 2, -1, 0.0, 2)}
    dead = master.workers.pop(21)
    master._failed_to_start(dead, 1 << 8)
    assert master.exit_code == 0 and not master.stopping
    assert sent == [(22, signal.SIGTERM)]  # the rest of the failed generation; the old worker is untouched
    assert master.config is old_config and master.generation == 1 and master._previous is None
