"""The response caches' counters across workers (proxy/metrics.py): answers and evictions add up and survive
a worker's departure, each worker's memory tier is its own, the shared disk tier counts once."""

from __future__ import annotations

from proxy.metrics import (NOTHING_RETIRED, master_view, merge, render_prometheus, retire, status_document)
from tests.unit.test_board import view


def cached(worker: dict, hits: int, misses: int, memory_bytes: int, disk_bytes: int | None = 5000) -> dict:
    disk = None if disk_bytes is None else {"bytes": disk_bytes, "entries": 2, "evictions": 1, "max_size": 10**6}
    worker["caches"] = {"api": {"statuses": {"HIT": hits, "MISS": misses},
                                "memory": {"bytes": memory_bytes, "entries": 1, "evictions": 3, "max_size": 1000},
                                "disk": disk}}
    return worker


def test_caches_add_up_across_workers_and_the_disk_tier_counts_once():
    merged = merge([cached(view(1, 5), 10, 2, 300), cached(view(2, 5), 7, 1, 200)])
    api = merged["caches"]["api"]
    assert (api["hits"], api["misses"]) == (17, 3)
    assert api["statuses"]["HIT"] == 17 and api["statuses"]["BYPASS"] == 0 and len(api["statuses"]) == 7
    assert api["memory"] == {"bytes": 500, "entries": 2, "evictions": 6, "max_size": 2000}
    assert api["disk"]["bytes"] == 5000  # shared by the workers: not doubled
    assert status_document(merged, "twotier")["caches"] == merged["caches"]


def test_answers_and_evictions_outlive_the_worker_that_counted_them():
    gone = cached(view(1, 5), 10, 2, 300)
    retired = retire(NOTHING_RETIRED, gone)
    merged = merge([cached(view(2, 5), 1, 1, 100), master_view(99, 50.0, retired)])
    api = merged["caches"]["api"]
    assert (api["hits"], api["misses"], api["memory"]["evictions"]) == (11, 3, 6)
    assert api["memory"]["bytes"] == 100  # what the departed worker held left with it
    assert merge([view(3, 1), master_view(99, 50.0, retired)])["caches"] == {}  # a cache no longer configured


def test_prometheus_series_for_the_caches():
    text = render_prometheus(merge([cached(view(1, 5), 4, 1, 300, disk_bytes=None)])).decode()
    assert 'proxy_cache_requests_total{cache="api",status="HIT"} 4' in text
    assert 'proxy_cache_bytes{cache="api",tier="memory"} 300' in text
    assert 'proxy_cache_evictions_total{cache="api",tier="memory"} 3' in text
    assert 'tier="disk"' not in text
    assert "# TYPE proxy_cache_entries gauge" in text
