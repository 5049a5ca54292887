"""The cache's storage (proxy/server/cachestore.py): the memory tier, the disk tier, spilling bodies, and
the notices that carry invalidations from one worker to the others. Real files, no sockets."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from proxy import config
from proxy.http import cache as rules
from proxy.server import cachestore
from proxy.server.cachestore import Body, DiskTier, Entry, MemoryTier, Notices, Store

T0 = 1_800_000_000.0


def facts(*extra, cache_control: bytes = b"max-age=60") -> rules.Stored:
    result = rules.storable(200, b"OK", [], [(b"cache-control", cache_control), *extra], request_time=T0,
                            response_time=T0)
    assert type(result) is rules.Stored, result
    return result


def entry(key: bytes, body: bytes = b"x" * 100, uri: bytes | None = None) -> Entry:
    return Entry(key, key, uri or b"http://h" + key, facts(), body, len(body))


def settings(tmp_path: Path | None = None, **keys):
    if tmp_path is not None:
        keys["path"] = str(tmp_path / "cache")
    return config.from_dict({"caches": {"c": keys}}, Path("/tmp/proxy.toml")).caches["c"]


def body_of(data: bytes, disk=None, limit: int = 10**9) -> Body:
    body = Body(disk, limit)
    assert body.append(data)
    return body


# --- memory ----------------------------------------------------------------------------------

def test_memory_tier_evicts_the_least_recently_used_within_its_budget():
    size = entry(b"/0").size
    tier = MemoryTier(budget=(size + 10) * cachestore.MEMORY_SHARE)  # room for MEMORY_SHARE entries
    for i in range(cachestore.MEMORY_SHARE):
        assert tier.put(entry(b"/%d" % i), ())
    assert tier.get(b"/0") is not None  # now the most recently used
    tier.put(entry(b"/new"), ())
    assert tier.get(b"/1") is None and tier.get(b"/0") is not None and tier.evictions == 1
    assert len(tier) == cachestore.MEMORY_SHARE and tier.bytes <= tier.budget
    assert not tier.put(Entry(b"/d", b"/d", b"u", facts(), None, 10), ())  # a body on disk only: not here


def test_memory_tier_keeps_no_entry_larger_than_its_share():
    tier = MemoryTier(budget=8000)
    assert not tier.put(entry(b"/big", b"x" * 2000), ())
    assert tier.put(entry(b"/small", b"x" * 500), ())


def test_memory_tier_drops_by_uri_key_and_key_prefix():
    tier = MemoryTier(budget=10**6)
    tier.put(Entry(b"k1", b"k1\x00de", b"http://h/a", facts(), b"de", 2), (b"accept-language",))
    tier.put(Entry(b"k1", b"k1\x00fr", b"http://h/a", facts(), b"fr", 2), (b"accept-language",))
    tier.put(entry(b"k2", uri=b"http://h/b"), ())
    tier.put(entry(b"other", uri=b"http://h/c"), ())
    assert tier.vary(b"k1") == (b"accept-language",)
    assert tier.drop_uri(b"http://h/a") == 2 and tier.vary(b"k1") is None
    assert tier.drop_key(b"k*") == 1 and len(tier) == 1
    assert tier.drop_key(b"other") == 1 and tier.bytes == 0


# --- bodies on their way in ------------------------------------------------------------------

def test_a_body_is_abandoned_beyond_its_limit():
    body = Body(None, limit=10)
    assert body.append(b"12345") and body.append(b"12345")
    assert not body.append(b"1")
    assert body.size == 10 and body.memory_copy(100) is None


def test_a_body_spills_to_the_disk_tier_and_holds_little_memory(tmp_path):
    disk = DiskTier(str(tmp_path / "c"), 10**9, 1000)
    body = Body(disk, limit=10**7, spill=1000)
    for _ in range(100):
        assert body.append(b"y" * 1000)
    assert not body.in_memory and body._chunks == []
    assert len(os.listdir(disk.tmp)) == 1
    body.discard()
    assert os.listdir(disk.tmp) == []


# --- disk ------------------------------------------------------------------------------------

def test_disk_tier_round_trip_and_survives_reopening(tmp_path):
    path = str(tmp_path / "c")
    disk = DiskTier(path, 10**6, memory_share=50)
    stored = facts((b"etag", b'"v1"'), (b"content-type", b"text/plain"))
    small = disk.put(b"k", b"k", b"http://h/k", stored, body_of(b"hello"))
    large = disk.put(b"big", b"big", b"http://h/big", stored, body_of(b"z" * 100))
    assert small.body == b"hello" and large.body is None  # above memory_share: served from the file
    disk.close()
    again = DiskTier(path, 10**6, memory_share=50)
    found = again.get(b"k")
    assert found.body == b"hello" and found.stored == stored and found.uri == b"http://h/k"
    on_disk = again.get(b"big")
    with open(again.file(on_disk.name), "rb") as fh:
        fh.seek(on_disk.offset)
        assert fh.read(on_disk.length) == b"z" * 100
    assert again.view()["entries"] == 2 and again.vary(b"k") == ()


def test_disk_tier_stays_under_max_size_by_least_recent_use(tmp_path):
    clock = [T0]
    disk = DiskTier(str(tmp_path / "c"), max_size=10**6, memory_share=10**6, clock=lambda: clock[0])
    disk.put(b"0", b"0", b"u", facts(), body_of(b"x" * 1000))
    disk.max_size = int(disk.view()["bytes"] * 4.5)  # room for four entries
    for i in range(1, 4):
        clock[0] += 20
        disk.put(b"%d" % i, b"%d" % i, b"u", facts(), body_of(b"x" * 1000))
    clock[0] += 20
    assert disk.get(b"0") is not None  # used again: now the most recent
    clock[0] += 20
    disk.put(b"4", b"4", b"u", facts(), body_of(b"x" * 1000))
    clock[0] += 20
    disk.put(b"5", b"5", b"u", facts(), body_of(b"x" * 1000))
    view = disk.view()
    assert view["bytes"] <= disk.max_size and view["evictions"] >= 1
    assert disk.get(b"0") is not None and disk.get(b"1") is None
    names = [name for _, _, files in os.walk(disk.path) for name in files if len(name) == 40]
    assert len(names) == view["entries"]  # evicted entries' files are gone too


def test_a_missing_file_is_a_miss_and_forgotten(tmp_path):
    disk = DiskTier(str(tmp_path / "c"), 10**6, 10**6)
    made = disk.put(b"k", b"k", b"u", facts(), body_of(b"data"))
    os.unlink(disk.file(made.name))
    assert disk.get(b"k") is None and disk.view()["entries"] == 0


def test_a_refresh_rewrites_the_facts_and_keeps_the_body(tmp_path):
    disk = DiskTier(str(tmp_path / "c"), 10**6, 10)
    made = disk.put(b"k", b"k", b"u", facts(), body_of(b"the body, kept on disk"))
    newer = facts(cache_control=b"max-age=600")
    disk.refresh(made, newer)
    found = disk.get(b"k")
    assert found.stored.lifetime == 600
    with open(disk.file(found.name), "rb") as fh:
        fh.seek(found.offset)
        assert fh.read(found.length) == b"the body, kept on disk"
    assert disk.view()["entries"] == 1


# --- both tiers, and the notices between workers ---------------------------------------------

def test_store_selects_the_variant_and_finds_disk_entries_from_a_fresh_memory(tmp_path):
    store = Store(settings(tmp_path), Notices())
    varying = facts((b"vary", b"Accept-Language"))
    german = [(b"accept-language", b"de")]
    store.put(b"k", b"http://h/k", varying, body_of(b"Hallo", store.disk), german)
    store.put(b"k", b"http://h/k", varying, body_of(b"Bonjour", store.disk), [(b"accept-language", b"fr")])
    assert store.lookup(b"k", german).body == b"Hallo"
    assert store.lookup(b"k", [(b"accept-language", b"fr")]).body == b"Bonjour"
    assert store.lookup(b"k", [(b"accept-language", b"en")]) is None
    other_worker = Store(settings(tmp_path), Notices())  # its memory tier is empty: the disk answers
    assert other_worker.lookup(b"k", german).body == b"Hallo"
    assert len(other_worker.memory) == 1
    assert store.invalidate(b"http://h/k") == 2
    assert Store(settings(tmp_path), Notices()).lookup(b"k", german) is None
    store.close()
    other_worker.close()


def test_notices_reach_the_other_workers_memory_tiers():
    region = mmap.mmap(-1, cachestore.REGION_BYTES)
    one, two = Notices(region, 0), Notices(region, 1)
    seen = []
    two.apply = lambda kind, value: seen.append((kind, value))
    one.apply = lambda kind, value: pytest.fail("a worker's own notices are not applied again")
    two.check()
    assert seen == []
    one.post(cachestore.URI, b"c\x00http://h/a")
    one.post(cachestore.KEY, b"c\x00k*")
    two.check()
    assert seen == [(cachestore.URI, b"c\x00http://h/a"), (cachestore.KEY, b"c\x00k*")]
    two.check()
    assert len(seen) == 2
    for i in range(cachestore.NOTICE_RING + 1):  # a reader a whole ring behind empties its memory
        one.post(cachestore.URI, b"c\x00%d" % i)
    two.check()
    assert seen[-1] == (cachestore.CLEAR, b"")
    one.check()
    replacement = Notices(region, 0)  # a new worker in a slot carries on from its sequence
    replacement.post(cachestore.URI, b"c\x00http://h/z")
    two.check()
    assert seen[-1] == (cachestore.URI, b"c\x00http://h/z")


def test_a_store_applies_notices_for_its_own_cache_only():
    store = Store(settings(memory="1m"), Notices())
    store.put(b"k", b"http://h/k", facts(), body_of(b"v"), [])
    store.noticed(cachestore.URI, b"other\x00http://h/k")
    assert store.lookup(b"k", []) is not None
    store.noticed(cachestore.URI, b"c\x00http://h/k")
    assert store.lookup(b"k", []) is None


def test_a_broken_disk_tier_leaves_the_memory_tier_working(tmp_path, caplog):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "index.sqlite3").write_bytes(b"this is not a database" * 100)
    store = Store(settings(tmp_path), Notices())
    assert store.disk is None and "memory only" in caplog.text
    store.put(b"k", b"u", facts(), body_of(b"v"), [])
    assert store.lookup(b"k", []).body == b"v"


def test_disk_tier_failures_count_as_misses(tmp_path, caplog):
    store = Store(settings(tmp_path), Notices())
    store.put(b"k", b"u", facts(), body_of(b"v", store.disk), [])
    store.disk.db.close()  # what a broken index looks like from here: every call raises
    store.memory.clear()
    assert store.lookup(b"k", []) is None
    assert store.put(b"k2", b"u", facts(), body_of(b"w", store.disk), []) is None
    assert store.invalidate(b"u") == 0 and store.view()["disk"] is None
    assert caplog.text.count("the disk tier failed") == 1  # said once, not once per request


def test_claims_give_one_worker_a_key_and_expire(tmp_path):
    one = DiskTier(str(tmp_path / "c"), 10**6, 10)
    two = DiskTier(str(tmp_path / "c"), 10**6, 10)  # another worker's view of the same tier
    assert one.claim(b"k", stale_after=5) and not two.claim(b"k", stale_after=5)
    assert two.claimed(b"k", stale_after=5)
    one.unclaim(b"k")
    assert not two.claimed(b"k", stale_after=5) and two.claim(b"k", stale_after=5)
    os.utime(two._claim_file(b"k"), (1, 1))  # left by a worker that died long ago
    assert not one.claimed(b"k", stale_after=5) and one.claim(b"k", stale_after=5)
