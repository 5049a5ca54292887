"""Rate and connection limits in shared memory: every worker process counts in the same tables.

nginx keeps the state of ``limit_req`` and ``limit_conn`` in shared memory
zones, so a limit holds for the whole server however many workers it runs.
The same here: the master creates one region per ``[rate_limits.NAME]``
(and one for every route's ``conn_limit``) before it forks, so each worker
inherits the mapping, as it inherits the status board (board.py).

A region is a memfd (an unlinked temporary file where there is none) mapped
``MAP_SHARED``, holding a ``Table``: a hash index (open addressing, linear
probing, backward-shift deletion) over a fixed number of entries kept on a
doubly linked list in order of use, so at most ``max_keys`` keys are
remembered and, when a new key comes, the least recently used one is
forgotten (nginx does the same in its zones). Keys are stored as 64-bit
``hash()`` values: SipHash with a secret chosen at interpreter start,
shared by the master and the workers it forks, so a client cannot aim for a
collision.

Every operation takes the region's POSIX record lock (``lockf``): about
1.5 µs for the pair of system calls, paid only by routes that have a
limit. The kernel releases such a lock when its process dies, so a worker
killed in the middle of an update cannot leave the others waiting forever
(a semaphore would).

A reload (SIGHUP) keeps every region whose name and size the new
configuration still has, so a reload does not hand every client a fresh
burst; new workers and old ones count in the same tables while both run.
"""

from __future__ import annotations

import fcntl
import logging
import math
import mmap
import os
import tempfile
from typing import NamedTuple

log = logging.getLogger("proxy")
_lockf, LOCK_EX, LOCK_UN = fcntl.lockf, fcntl.LOCK_EX, fcntl.LOCK_UN

_MAGIC = 0x74776F7469657231  # "twotier1": the table in a region is initialised
_HEAD, _TAIL, _USED = 3, 4, 5  # slots of the header (int64s): magic, capacity, index size, head, tail, used
CONN_KEYS = 10000  # keys the conn_limit table remembers (all routes together)


def _index_size(capacity: int) -> int:
    """A power of two at least twice the capacity: the index is never more than half full."""
    return 1 << max(3, (capacity * 2 - 1).bit_length())


class Table:
    """An LRU map from 64-bit key hashes to two floats (``a``, ``b``), laid out in a buffer.

    Not locked by itself: the zone that owns it holds its region's lock around every call.
    """

    __slots__ = ("capacity", "mask", "header", "hashes", "a", "b", "index", "prev", "next")

    @staticmethod
    def size(capacity: int) -> int:
        return 64 + capacity * (8 + 8 + 8 + 4 + 4) + 4 * _index_size(capacity)

    def __init__(self, buffer, capacity: int) -> None:
        self.capacity = capacity
        slots = _index_size(capacity)
        self.mask = slots - 1
        view = memoryview(buffer)
        at = 64
        arrays = []
        for width, code, count in ((8, "q", capacity), (8, "d", capacity), (8, "d", capacity),
                                   (4, "i", slots), (4, "i", capacity), (4, "i", capacity)):
            arrays.append(view[at: at + width * count].cast(code))
            at += width * count
        self.header = view[:64].cast("q")
        self.hashes, self.a, self.b, self.index, self.prev, self.next = arrays
        if self.header[0] != _MAGIC:  # a new region (zero-filled): the master initialises it before forking
            header = self.header
            header[1], header[2], header[_HEAD], header[_TAIL], header[_USED] = capacity, slots, -1, -1, 0
            header[0] = _MAGIC

    def __repr__(self) -> str:
        return f"<Table {self.used}/{self.capacity} keys>"

    @property
    def used(self) -> int:
        return self.header[_USED]

    def find(self, key: int) -> int:
        """The entry of ``key``, or -1."""
        index, hashes, mask = self.index, self.hashes, self.mask
        i = key & mask
        while True:
            found = index[i]
            if not found:
                return -1
            if hashes[found - 1] == key:
                return found - 1
            i = (i + 1) & mask

    def touch(self, entry: int) -> None:
        """``entry`` becomes the most recently used."""
        if self.header[_HEAD] != entry:
            self._unlink(entry)
            self._link_first(entry)

    def insert(self, key: int) -> int:
        """A new entry for ``key`` (absent), its values 0; the least recently used key goes when full."""
        header = self.header
        used = header[_USED]
        if used < self.capacity:
            entry = used
            header[_USED] = used + 1
        else:
            entry = header[_TAIL]
            self._unindex(entry)
            self._unlink(entry)
        self.hashes[entry] = key
        self.a[entry] = 0.0
        self.b[entry] = 0.0
        index, mask = self.index, self.mask
        i = key & mask
        while index[i]:
            i = (i + 1) & mask
        index[i] = entry + 1
        self._link_first(entry)
        return entry

    def keys_in_use_order(self) -> list[int]:
        """The keys, most recently used first (for tests and repr)."""
        out, entry = [], self.header[_HEAD]
        while entry >= 0:
            out.append(self.hashes[entry])
            entry = self.next[entry]
        return out

    def _unindex(self, entry: int) -> None:
        """Remove ``entry`` from the index, shifting later entries of its probe run back (no tombstones)."""
        index, hashes, mask = self.index, self.hashes, self.mask
        i = hashes[entry] & mask
        while index[i] != entry + 1:
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            other = index[j]
            if not other:
                break
            home = hashes[other - 1] & mask
            # ``other`` may stay when its home slot lies cyclically in (i, j]
            if (i < home <= j) if i <= j else (home > i or home <= j):
                continue
            index[i] = other
            i = j
        index[i] = 0

    def _unlink(self, entry: int) -> None:
        before, after = self.prev[entry], self.next[entry]
        if before >= 0:
            self.next[before] = after
        else:
            self.header[_HEAD] = after
        if after >= 0:
            self.prev[after] = before
        else:
            self.header[_TAIL] = before

    def _link_first(self, entry: int) -> None:
        header = self.header
        first = header[_HEAD]
        self.prev[entry] = -1
        self.next[entry] = first
        if first >= 0:
            self.prev[first] = entry
        header[_HEAD] = entry
        if header[_TAIL] < 0:
            header[_TAIL] = entry


class Region:
    """One zone's shared memory and its lock: a memfd mapped MAP_SHARED (inherited by forked workers)."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create(f"twotier-{name}", os.MFD_CLOEXEC)
        else:  # not Linux: an unlinked temporary file does the same
            handle = tempfile.TemporaryFile()
            self.fd = os.dup(handle.fileno())
            handle.close()
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)

    def __repr__(self) -> str:
        return f"<Region {self.name} {self.size} bytes>"

    def __enter__(self) -> None:
        _lockf(self.fd, LOCK_EX)

    def __exit__(self, *exc) -> None:
        _lockf(self.fd, LOCK_UN)

    def close(self) -> None:
        """The master lets go of a region no configuration uses; workers that map it keep their mapping."""
        try:
            self.map.close()
        except BufferError:  # a Table of this process still views it: it goes with the process
            return
        os.close(self.fd)


# --- nginx's limit_req -------------------------------------------------------

class Verdict(NamedTuple):
    """What a rate limit says about one request: served (now, or after ``wait`` seconds) or refused
    (429, with ``retry_after`` seconds). A tuple: one is made per limited request."""

    allowed: bool
    wait: float = 0.0
    retry_after: int = 0
    excess: float = 0.0  # requests beyond the rate, this one included


_verdict = tuple.__new__


def limit_req(excess: float | None, elapsed: float, rate: float, burst: int, delay: int) -> Verdict:
    """nginx's leaky bucket (ngx_http_limit_req_module): ``excess`` requests beyond the rate were counted
    ``elapsed`` seconds ago (None: a key not seen before). The bucket leaks ``rate`` requests a second;
    a request that would leave more than ``burst`` in it is refused, and one that leaves more than
    ``delay`` is served once the extra has leaked away (``delay`` 0: never held back)."""
    if excess is None:
        now = 0.0
    else:
        now = excess - rate * elapsed + 1.0 if elapsed > 0.0 else excess + 1.0
        if now < 0.0:
            now = 0.0
    if now > burst:
        return _verdict(Verdict, (False, 0.0, max(1, math.ceil((now - burst) / rate)), now))
    # tuple.__new__ directly: a NamedTuple's own __new__ is a Python function, and this runs per request.
    return _verdict(Verdict, (True, (now - delay) / rate if delay and now > delay else 0.0, 0, now))


class RateZone:
    """One ``[rate_limits.NAME]``: its settings and the shared table of keys."""

    __slots__ = ("settings", "region", "table")

    def __init__(self, settings, region: Region) -> None:
        self.settings = settings
        self.region = region
        self.table = Table(region.map, settings.max_keys)

    def __repr__(self) -> str:
        return f"<RateZone {self.settings.name} {self.table!r}>"

    def take(self, key: int, now: float) -> Verdict:
        """Count one request of ``key`` at ``now`` (time.monotonic(), the same clock in every process)."""
        settings = self.settings
        table = self.table
        fd = self.region.fd
        _lockf(fd, LOCK_EX)  # not ``with self.region``: this runs for every limited request
        try:
            entry = table.find(key)
            if entry < 0:
                verdict = limit_req(None, 0.0, settings.rate, settings.burst, settings.delay)
                entry = table.insert(key)
            else:
                table.touch(entry)
                verdict = limit_req(table.a[entry], now - table.b[entry], settings.rate, settings.burst,
                                    settings.delay)
            if verdict.allowed:  # as in nginx, a refused request is not counted
                table.a[entry] = verdict.excess
                table.b[entry] = now
        finally:
            _lockf(fd, LOCK_UN)
        return verdict


class ConnZone:
    """Requests in progress per key, for every route's ``conn_limit`` (nginx limit_conn)."""

    __slots__ = ("region", "table")

    def __init__(self, region: Region) -> None:
        self.region = region
        self.table = Table(region.map, CONN_KEYS)

    def __repr__(self) -> str:
        return f"<ConnZone {self.table!r}>"

    def acquire(self, key: int, limit: int) -> bool:
        table = self.table
        with self.region:
            entry = table.find(key)
            if entry < 0:
                entry = table.insert(key)
            else:
                table.touch(entry)
            if table.a[entry] >= limit:
                return False
            table.a[entry] += 1.0
        return True

    def release(self, key: int) -> None:
        table = self.table
        with self.region:
            entry = table.find(key)
            if entry >= 0 and table.a[entry] > 0:  # gone (forgotten, or reset): nothing to give back
                table.a[entry] -= 1.0

    def count(self, key: int) -> int:
        with self.region:
            entry = self.table.find(key)
            return 0 if entry < 0 else int(self.table.a[entry])

    def reset(self) -> None:
        """Forget every count: after a worker died, the requests it held can no longer end. The others'
        counts go too (their ends then find nothing to give back), so limits are lenient for a moment
        rather than stuck."""
        table = self.table
        with self.region:
            for entry in range(table.used):
                table.a[entry] = 0.0


class Zones:
    """The regions one proxy needs: created by the master (or by ``serve`` alone), kept across reloads."""

    def __init__(self) -> None:
        self._regions: dict[tuple, Region] = {}
        self._open: dict[tuple, object] = {}  # this process's views of them (workers)

    def __repr__(self) -> str:
        return f"<Zones {sorted(name for _, name, _ in self._regions)}>"

    @staticmethod
    def _wanted(config) -> dict[tuple, int]:
        wanted = {("rate", name, zone.max_keys): zone.max_keys for name, zone in config.rate_limits.items()}
        if any(route.conn_limit for route in config.all_routes()):
            wanted[("conn", "conn_limit", CONN_KEYS)] = CONN_KEYS
        return wanted

    def prepare(self, config) -> None:
        """Create the regions ``config`` needs that do not exist yet (before workers are forked)."""
        for key, capacity in self._wanted(config).items():
            if key not in self._regions:
                if any(k[:2] == key[:2] for k in self._regions):
                    log.info("rate_limits.%s: max_keys changed: its counts start again", key[1])
                region = Region(Table.size(capacity), key[1])
                Table(region.map, capacity)  # initialised here, once, before any worker can see it
                self._regions[key] = region

    def keep_only(self, config) -> None:
        """Let go of the regions ``config`` does not use (once no worker of an older configuration is left
        to be replaced)."""
        wanted = self._wanted(config)
        for key in [k for k in self._regions if k not in wanted]:
            self._open.pop(key, None)
            self._regions.pop(key).close()

    def rate(self, settings) -> RateZone:
        key = ("rate", settings.name, settings.max_keys)
        zone = self._open.get(key)
        if zone is None or zone.settings != settings:
            zone = self._open[key] = RateZone(settings, self._region(key, settings.max_keys))
        return zone

    def conns(self) -> ConnZone:
        key = ("conn", "conn_limit", CONN_KEYS)
        zone = self._open.get(key)
        if zone is None:
            zone = self._open[key] = ConnZone(self._region(key, CONN_KEYS))
        return zone

    def forget_connections(self) -> None:
        """A worker died: reset the conn_limit counts (see ConnZone.reset)."""
        key = ("conn", "conn_limit", CONN_KEYS)
        if key in self._regions:
            self.conns().reset()

    def _region(self, key: tuple, capacity: int) -> Region:
        region = self._regions.get(key)
        if region is None:  # a process on its own (explain, tests, serve without a master)
            region = self._regions[key] = Region(Table.size(capacity), key[1])
        return region
