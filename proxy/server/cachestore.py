"""Where the response cache keeps its entries: a memory tier per worker, a disk tier the workers share.

The rules (http/cache.py) say what may be stored and when it may be used;
this module only keeps bytes and finds them again, and the shell
(server/caching.py) moves them.

* ``MemoryTier``: a dict in least-recently-used order with a byte budget
  (``[caches.NAME] memory``), one per worker. A hit costs two dict lookups
  and a move to the end.
* ``DiskTier``: one file per entry under ``path`` (the stored facts and
  headers, then the body), found through an SQLite index in the same folder
  that every worker opens (WAL mode: readers do not wait for writers). The
  index keeps each entry's size and when it was last used, and the running
  total, so staying under ``max_size`` means deleting the least recently
  used rows and their files, never walking the folder. Files are written
  under ``tmp/`` and renamed into place, so a reader in another worker sees
  a whole file or none; a file another worker is sending stays readable
  after it is replaced or removed (POSIX unlink). It survives restarts.
* ``Notices``: what one worker invalidates (an unsafe method, a purge) must
  leave every worker's memory tier too. Each worker posts to its own ring
  in a shared memory region made by the master before it forks; a lookup
  first compares one 8-byte word, the last notice's stamp, with what it saw
  last time, and only when it changed reads the new notices. Each ring has
  one writer, so no lock is needed; a reader that fell a whole ring behind
  empties its memory tier (it can only over-invalidate).
* ``Body``: a response on its way into the cache. At most ``SPILL`` bytes
  are held in memory when there is a disk tier (the rest goes to the file
  that becomes the entry); without one, up to ``max_entry_size``. Beyond
  ``max_entry_size`` it is abandoned: the client still gets every byte.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import sqlite3
import struct
import time
from dataclasses import asdict

from ..http.cache import Stored, born, fresh_until, variant

log = logging.getLogger("proxy")

SPILL = 256 * 1024  # bytes of a response being stored held in memory before they go to its file
MEMORY_SHARE = 8  # an entry larger than memory / MEMORY_SHARE lives on disk only
TOUCH_EVERY = 10.0  # seconds: how often a disk entry's last use is written while it is being hit
EVICT_TO = 0.95  # eviction goes below max_size by this much, so it does not run on every store
_PREFIX = struct.Struct("<4sIQ")  # magic, length of the facts, length of the body
_MAGIC = b"TTC1"


class Entry:
    """One stored response: its facts (``stored``), and its body in memory or in a disk tier file."""

    __slots__ = ("key", "full", "uri", "stored", "body", "length", "name", "offset", "used", "born", "fresh_until")

    def __init__(self, key: bytes, full: bytes, uri: bytes, stored: Stored, body: bytes | None, length: int,
                 name: str = "", offset: int = 0) -> None:
        self.key = key  # the request's key (CacheUse.key)
        self.full = full  # the key and the Vary values: what tells this entry from its siblings
        self.uri = uri
        self.stored = stored
        self.body = body  # None: only on disk, ``length`` bytes at ``offset`` of file ``name``
        self.length = length
        self.name = name
        self.offset = offset
        self.used = 0.0  # when the disk tier last recorded a use
        self.born = born(stored)  # http/cache.py: its age is now - born, and it is fresh until fresh_until
        self.fresh_until = fresh_until(stored)

    def __repr__(self) -> str:
        where = "memory" if self.body is not None else f"disk:{self.name}"
        return f"<Entry {self.full!r} {self.stored.status} {self.length} bytes {where}>"

    @property
    def size(self) -> int:
        """What it costs the memory tier: the body, and its headers roughly."""
        return self.length + sum(len(n) + len(v) + 16 for n, v in self.stored.headers) + len(self.full) + 200


def full_key(key: bytes, names: tuple[bytes, ...], request_headers) -> bytes:
    """The key of the variant of ``key`` that a request selects (RFC 9111 4.1)."""
    return key + b"\x00" + variant(names, request_headers) if names else key


class MemoryTier:
    """Entries in least-recently-used order within a byte budget, and the Vary of each key."""

    __slots__ = ("budget", "bytes", "evictions", "_entries", "_vary", "_by_uri", "_by_key")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self.evictions = 0
        self._entries: collections.OrderedDict[bytes, Entry] = collections.OrderedDict()
        self._vary: dict[bytes, tuple[bytes, ...]] = {}
        self._by_uri: dict[bytes, set[bytes]] = {}
        self._by_key: dict[bytes, set[bytes]] = {}

    def __repr__(self) -> str:
        return f"<MemoryTier {len(self._entries)} entries {self.bytes}/{self.budget} bytes>"

    def __len__(self) -> int:
        return len(self._entries)

    def vary(self, key: bytes) -> tuple[bytes, ...] | None:
        return self._vary.get(key)

    def get(self, full: bytes) -> Entry | None:
        entry = self._entries.get(full)
        if entry is not None:
            self._entries.move_to_end(full)
        return entry

    def put(self, entry: Entry, names: tuple[bytes, ...]) -> bool:
        """Keep ``entry`` (False when it is too large for this tier), evicting the least recently used."""
        size = entry.size
        if entry.body is None or size > self.budget // MEMORY_SHARE:
            self.drop(entry.full)
            return False
        self.drop(entry.full)
        self._vary[entry.key] = names
        self._entries[entry.full] = entry
        self._by_uri.setdefault(entry.uri, set()).add(entry.full)
        self._by_key.setdefault(entry.key, set()).add(entry.full)
        self.bytes += size
        while self.bytes > self.budget:
            _, oldest = next(iter(self._entries.items()))
            self.drop(oldest.full)
            self.evictions += 1
        return True

    def drop(self, full: bytes) -> None:
        entry = self._entries.pop(full, None)
        if entry is None:
            return
        self.bytes -= entry.size
        for index, value in ((self._by_uri, entry.uri), (self._by_key, entry.key)):
            siblings = index.get(value)
            if siblings is not None:
                siblings.discard(full)
                if not siblings:
                    del index[value]
        if entry.key not in self._by_key:
            self._vary.pop(entry.key, None)

    def drop_uri(self, uri: bytes) -> int:
        fulls = list(self._by_uri.get(uri, ()))
        for full in fulls:
            self.drop(full)
        return len(fulls)

    def drop_key(self, key: bytes) -> int:
        """Every variant of ``key``; a key ending in ``*``: of every key it begins."""
        if key.endswith(b"*"):
            keys = [k for k in self._by_key if k.startswith(key[:-1])]
        else:
            keys = [key] if key in self._by_key else []
        fulls = [full for k in keys for full in list(self._by_key.get(k, ()))]
        for full in fulls:
            self.drop(full)
        return len(fulls)

    def clear(self) -> None:
        self._entries.clear()
        self._vary.clear()
        self._by_uri.clear()
        self._by_key.clear()
        self.bytes = 0


# --- the disk tier ------------------------------------------------------------------------------

_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS entries (
    full BLOB PRIMARY KEY, key BLOB NOT NULL, uri BLOB NOT NULL, name TEXT NOT NULL,
    size INTEGER NOT NULL, used REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_key ON entries (key);
CREATE INDEX IF NOT EXISTS entries_uri ON entries (uri);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
CREATE TABLE IF NOT EXISTS vary (key BLOB PRIMARY KEY, names BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS totals (one INTEGER PRIMARY KEY CHECK (one = 0), bytes INTEGER NOT NULL,
    entries INTEGER NOT NULL, evictions INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0, 0);
CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries
    BEGIN UPDATE totals SET bytes = bytes + NEW.size, entries = entries + 1; END;
CREATE TRIGGER IF NOT EXISTS entries_replaced AFTER UPDATE OF size ON entries
    BEGIN UPDATE totals SET bytes = bytes + NEW.size - OLD.size; END;
CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries
    BEGIN UPDATE totals SET bytes = bytes - OLD.size, entries = entries - 1; END;
"""


def _facts(entry_key: bytes, full: bytes, uri: bytes, stored: Stored) -> bytes:
    """An entry's facts as JSON (bytes as latin-1 text): readable by any later version of Python."""
    facts = asdict(stored)
    facts["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in stored.headers]
    for name in ("reason", "etag", "last_modified"):
        if facts[name] is not None:
            facts[name] = facts[name].decode("latin-1")
    facts["vary"] = [n.decode("latin-1") for n in stored.vary]
    facts.update(key=entry_key.decode("latin-1"), full=full.decode("latin-1"), uri=uri.decode("latin-1"))
    return json.dumps(facts, separators=(",", ":")).encode()


def _stored(facts: dict) -> Stored:
    fields = {name: facts[name] for name in Stored.__slots__}
    fields["headers"] = tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in facts["headers"])
    for name in ("reason", "etag", "last_modified"):
        if fields[name] is not None:
            fields[name] = fields[name].encode("latin-1")
    fields["vary"] = tuple(n.encode("latin-1") for n in facts["vary"])
    return Stored(**fields)


class DiskTier:
    """Entry files under ``path``, their SQLite index, and the ``max_size`` bound (module docstring)."""

    def __init__(self, path: str, max_size: int, memory_share: int, clock=time.time) -> None:
        self.path = path
        self.max_size = max_size
        self.in_memory_up_to = memory_share  # bodies up to this size are read into memory on a hit
        self.clock = clock
        self.tmp = os.path.join(path, "tmp")
        self.claims = os.path.join(path, "claims")
        os.makedirs(self.tmp, exist_ok=True)
        os.makedirs(self.claims, exist_ok=True)
        self.db = sqlite3.connect(os.path.join(path, "index.sqlite3"), timeout=5.0, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout = 5000")
        self.db.executescript(_SCHEMA)
        self.db.execute("PRAGMA synchronous = NORMAL")  # a crash may lose the last entries, never corrupt

    def __repr__(self) -> str:
        return f"<DiskTier {self.path} max_size={self.max_size}>"

    def close(self) -> None:
        self.db.close()

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @staticmethod
    def name_of(full: bytes) -> str:
        digest = hashlib.sha1(full).hexdigest()
        return f"{digest[:2]}/{digest[2:4]}/{digest}"

    # --- reading ---

    def vary(self, key: bytes) -> tuple[bytes, ...] | None:
        row = self.db.execute("SELECT names FROM vary WHERE key = ?", (key,)).fetchone()
        return None if row is None else tuple(n for n in row[0].split(b"\n") if n)

    def get(self, full: bytes) -> Entry | None:
        row = self.db.execute("SELECT name, used FROM entries WHERE full = ?", (full,)).fetchone()
        if row is None:
            return None
        name, used = row
        entry = self._read(name)
        if entry is None or entry.full != full:
            self.forget([(full, name)])
            return None
        entry.used = used
        self.touch(entry)
        return entry

    def _read(self, name: str) -> Entry | None:
        try:
            with open(self.file(name), "rb") as fh:
                prefix = fh.read(_PREFIX.size)
                magic, facts_length, body_length = _PREFIX.unpack(prefix)
                if magic != _MAGIC:
                    return None
                fh.seek(_PREFIX.size + body_length)
                facts = json.loads(fh.read(facts_length))
                body = None
                if body_length <= self.in_memory_up_to:
                    fh.seek(_PREFIX.size)
                    body = fh.read(body_length)
                    if len(body) != body_length:
                        return None
        except (OSError, ValueError, struct.error):
            return None
        try:
            stored = _stored(facts)
            key, full, uri = (facts[k].encode("latin-1") for k in ("key", "full", "uri"))
        except (KeyError, TypeError, ValueError):
            return None
        return Entry(key, full, uri, stored, body, body_length, name, _PREFIX.size)

    def touch(self, entry: Entry) -> None:
        """Record a use, at most every TOUCH_EVERY seconds per entry (eviction is by last use)."""
        now = self.clock()
        if now - entry.used >= TOUCH_EVERY:
            entry.used = now
            self.db.execute("UPDATE entries SET used = ? WHERE full = ?", (now, entry.full))

    # --- claims: which worker fetches a key (collapsed forwarding across workers) ---

    def _claim_file(self, key: bytes) -> str:
        return os.path.join(self.claims, hashlib.sha1(key).hexdigest())

    def claim(self, key: bytes, stale_after: float) -> bool:
        """Take the key for this worker (False: another holds it). A claim older than ``stale_after`` seconds
        was left by a worker that died, or belongs to a fetch that outlived lock_timeout: it is taken over."""
        name = self._claim_file(key)
        for _ in range(3):
            try:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
                return True
            except FileExistsError:
                try:
                    if time.time() - os.stat(name).st_mtime < stale_after:
                        return False
                    os.unlink(name)
                except FileNotFoundError:
                    pass  # let go of meanwhile: try again
        return False

    def claimed(self, key: bytes, stale_after: float) -> bool:
        try:
            return time.time() - os.stat(self._claim_file(key)).st_mtime < stale_after
        except FileNotFoundError:
            return False

    def unclaim(self, key: bytes) -> None:
        try:
            os.unlink(self._claim_file(key))
        except FileNotFoundError:
            pass

    # --- writing ---

    def new_file(self) -> tuple[int, str]:
        """A temporary file in the tier, with room for the prefix: a Body spills into it."""
        name = os.path.join(self.tmp, f"{os.getpid()}-{time.monotonic_ns()}")
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return fd, name

    def put(self, key: bytes, full: bytes, uri: bytes, stored: Stored, body: "Body") -> Entry | None:
        """Write the entry's file (the spilled body's file becomes it) and index it."""
        facts = _facts(key, full, uri, stored)
        name = self.name_of(full)
        try:
            fd, temporary = body.take_file(self)
            try:
                os.pwrite(fd, facts, _PREFIX.size + body.size)
                os.pwrite(fd, _PREFIX.pack(_MAGIC, len(facts), body.size), 0)
            finally:
                os.close(fd)
            final = self.file(name)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.rename(temporary, final)
        except OSError as exc:
            log.warning("cache %s: cannot write an entry: %s", self.path, exc.strerror or exc)
            body.discard()
            return None
        size = _PREFIX.size + body.size + len(facts)
        now = self.clock()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (full) DO UPDATE SET "
                       "key = excluded.key, uri = excluded.uri, name = excluded.name, size = excluded.size, "
                       "used = excluded.used", (full, key, uri, name, size, now))
            db.execute("INSERT INTO vary VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET names = excluded.names",
                       (key, b"\n".join(stored.vary)))
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise
        entry = Entry(key, full, uri, stored, body.memory_copy(self.in_memory_up_to), body.size, name, _PREFIX.size)
        entry.used = now
        self._evict()
        return entry

    def refresh(self, entry: Entry, stored: Stored) -> Entry | None:
        """New facts for an entry whose body is unchanged (a 304): a new file, renamed over the old."""
        try:
            fd = os.open(self.file(entry.name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        body = Body(self, entry.length, spill=0)
        try:
            offset = entry.offset
            while offset < entry.offset + entry.length:
                chunk = os.pread(fd, min(1024**2, entry.offset + entry.length - offset), offset)
                if not chunk:
                    body.discard()
                    return None
                body.append(chunk)
                offset += len(chunk)
        finally:
            os.close(fd)
        return self.put(entry.key, entry.full, entry.uri, stored, body)

    def _evict(self) -> None:
        """Remove the least recently used entries while the tier holds more than max_size."""
        db = self.db
        total = db.execute("SELECT bytes FROM totals").fetchone()[0]
        if total <= self.max_size:
            return
        goal = total - int(self.max_size * EVICT_TO)
        victims, freed = [], 0
        for full, name, size in db.execute("SELECT full, name, size FROM entries ORDER BY used LIMIT 1000"):
            victims.append((full, name))
            freed += size
            if freed >= goal:
                break
        self.forget(victims, evicted=True)

    def forget(self, rows: list[tuple[bytes, str]], evicted: bool = False) -> None:
        """Remove these (full key, file name) entries: their rows, then their files."""
        if not rows:
            return
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM entries WHERE full = ?", [(full,) for full, _ in rows])
            if evicted:
                db.execute("UPDATE totals SET evictions = evictions + ?", (len(rows),))
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise
        for _, name in rows:
            try:
                os.unlink(self.file(name))
            except FileNotFoundError:
                pass

    def drop(self, column: str, value: bytes, prefix: bool = False) -> int:
        """Remove every entry whose ``column`` ("uri" or "key") is ``value`` (or begins with it)."""
        if prefix:
            rows = [(f, n) for f, n, v in self.db.execute(f"SELECT full, name, {column} FROM entries")
                    if v.startswith(value)]
        else:
            rows = self.db.execute(f"SELECT full, name FROM entries WHERE {column} = ?", (value,)).fetchall()
        self.forget(rows)
        return len(rows)

    def view(self) -> dict:
        total, entries, evictions = self.db.execute("SELECT bytes, entries, evictions FROM totals").fetchone()
        return {"bytes": total, "entries": entries, "evictions": evictions, "max_size": self.max_size}


class Body:
    """A response body on its way into the cache (module docstring): memory, then the tier's file."""

    __slots__ = ("disk", "limit", "spill", "size", "_chunks", "_fd", "_name")

    def __init__(self, disk: DiskTier | None, limit: int, spill: int = SPILL) -> None:
        self.disk = disk
        self.limit = limit
        self.spill = spill if disk is not None else limit
        self.size = 0
        self._chunks: list[bytes] = []
        self._fd: int | None = None
        self._name = ""

    def __repr__(self) -> str:
        return f"<Body {self.size} bytes in {'a file' if self._fd is not None else 'memory'}>"

    def append(self, data) -> bool:
        """Keep ``data``; False once the body is over the limit (it is then discarded)."""
        size = self.size + len(data)
        if size > self.limit:
            self.discard()
            return False
        if self._fd is None and size > self.spill:
            try:
                self._fd, self._name = self.disk.new_file()
                os.pwrite(self._fd, b"".join(self._chunks), _PREFIX.size)
            except OSError as exc:
                log.warning("cache %s: cannot spill a response: %s", self.disk.path, exc.strerror or exc)
                self.discard()
                return False
            self._chunks = []
        if self._fd is not None:
            try:
                os.pwrite(self._fd, data, _PREFIX.size + self.size)
            except OSError:
                self.discard()
                return False
        else:
            self._chunks.append(bytes(data))
        self.size = size
        return True

    @property
    def in_memory(self) -> bool:
        return self._fd is None

    def joined(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks = [data]
        return data

    def take_file(self, disk: DiskTier) -> tuple[int, str]:
        """The file holding the body after the prefix's room (written now when it was in memory)."""
        if self._fd is None:
            self._fd, self._name = disk.new_file()
            os.pwrite(self._fd, self.joined(), _PREFIX.size)
        fd, name = self._fd, self._name
        self._fd, self._name = None, ""
        return fd, name

    def memory_copy(self, up_to: int) -> bytes | None:
        """The body as bytes when it is in memory and no larger than ``up_to`` (else None: on disk only)."""
        if self.size > up_to:
            return None
        if self._chunks or self.size == 0:
            return self.joined()
        return None

    def discard(self) -> None:
        self._chunks = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._name:
            try:
                os.unlink(self._name)
            except FileNotFoundError:
                pass
            self._name = ""


# --- notices between workers ---------------------------------------------------------------------

NOTICE_SLOTS = 256  # as many as the status board has
NOTICE_RING = 64  # notices kept per worker
NOTICE_BYTES = 256
_NOTICE = struct.Struct("<QBH")  # sequence, kind, length of the value
NOTICE_VALUE = NOTICE_BYTES - _NOTICE.size
_SEQS = struct.Struct(f"<{NOTICE_SLOTS}Q")
REGION_BYTES = 8 + _SEQS.size + NOTICE_SLOTS * NOTICE_RING * NOTICE_BYTES
URI, KEY, CLEAR = 1, 2, 3  # what a notice names: a URI, a key (or a key prefix ending in *), everything


class Notices:
    """The invalidations workers post to each other (module docstring). ``region``: the shared map
    (None: this process has nobody to tell); ``slot``: this worker's ring on it."""

    __slots__ = ("region", "slot", "_stamp", "_seen", "_sequence", "apply")

    def __init__(self, region=None, slot: int | None = None) -> None:
        self.region = region if slot is not None else None
        self.slot = slot
        self.apply = None  # (kind, value) -> None: set by the caches of this worker
        if self.region is None:
            return
        self._stamp = bytes(region[0:8])
        self._seen = list(_SEQS.unpack_from(region, 8))
        self._sequence = self._seen[slot]  # a slot's new owner carries on from where the last one stopped

    def __repr__(self) -> str:
        return f"<Notices slot={self.slot} shared={self.region is not None}>"

    def post(self, kind: int, value: bytes) -> None:
        region = self.region
        if region is None:
            return
        if len(value) > NOTICE_VALUE:
            kind, value = CLEAR, value[:0]
        self._sequence += 1
        sequence = self._sequence
        slot = self.slot
        at = 8 + _SEQS.size + (slot * NOTICE_RING + sequence % NOTICE_RING) * NOTICE_BYTES
        _NOTICE.pack_into(region, at, sequence, kind, len(value))
        region[at + _NOTICE.size: at + _NOTICE.size + len(value)] = value
        struct.pack_into("<Q", region, 8 + slot * 8, sequence)
        self._seen[slot] = sequence
        struct.pack_into("<Q", region, 0, slot << 48 | sequence)  # a value never written before

    def check(self) -> None:
        """Apply what other workers posted since the last check (one 8-byte comparison when nothing)."""
        region = self.region
        if region is None or region[0:8] == self._stamp:
            return
        self._stamp = bytes(region[0:8])  # read before the rings: a later post changes it again
        sequences = _SEQS.unpack_from(region, 8)
        apply = self.apply
        for slot, sequence in enumerate(sequences):
            seen = self._seen[slot]
            if sequence == seen or slot == self.slot:
                continue
            self._seen[slot] = sequence
            if sequence < seen or sequence - seen > NOTICE_RING:
                apply(CLEAR, b"")
                continue
            for number in range(seen + 1, sequence + 1):
                at = 8 + _SEQS.size + (slot * NOTICE_RING + number % NOTICE_RING) * NOTICE_BYTES
                written, kind, length = _NOTICE.unpack_from(region, at)
                if written != number:  # overwritten meanwhile: this reader is too far behind
                    apply(CLEAR, b"")
                    break
                apply(kind, bytes(region[at + _NOTICE.size: at + _NOTICE.size + length]))


# --- one cache: both tiers -------------------------------------------------------------------------

class Store:
    """The tiers of one ``[caches.NAME]`` in this worker: the memory tier first, then the disk tier.

    The disk tier's failures (an index another process holds locked for too long, a full or broken disk)
    are logged and taken as misses: a request never fails because the cache could not help it.
    """

    def __init__(self, settings, notices: Notices, clock=time.time) -> None:
        self.settings = settings
        self.name = settings.name
        self.notices = notices
        self.memory = MemoryTier(settings.memory)
        self.disk: DiskTier | None = None
        self._complained = 0.0
        if settings.path:
            try:
                self.disk = DiskTier(settings.path, settings.max_size, settings.memory // MEMORY_SHARE, clock)
            except (sqlite3.Error, OSError) as exc:
                log.error("cache %s: cannot open the disk tier in %s (%s): memory only", self.name, settings.path,
                          getattr(exc, "strerror", None) or exc)
        self._tag = settings.name.encode() + b"\x00"

    def __repr__(self) -> str:
        return f"<Store {self.name} {self.memory!r} {self.disk!r}>"

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()
            self.disk = None

    def _on_disk(self, default, method, *args):
        """A call to the disk tier, whose failure is logged (at most once a minute) and counts as ``default``."""
        try:
            return method(*args)
        except (sqlite3.Error, OSError) as exc:
            now = time.monotonic()
            if now - self._complained >= 60.0:
                self._complained = now
                log.warning("cache %s: the disk tier failed (%s); going on without it for this request",
                            self.name, getattr(exc, "strerror", None) or exc)
            return default

    def lookup(self, key: bytes, request_headers) -> Entry | None:
        """The entry a request selects: from memory, else from disk (then kept in memory too)."""
        self.notices.check()
        memory = self.memory
        names = memory.vary(key)
        if names is not None:
            entry = memory.get(full_key(key, names, request_headers) if names else key)
            if entry is not None:
                return entry
        return self.lookup_disk(key, request_headers)

    def lookup_disk(self, key: bytes, request_headers) -> Entry | None:
        disk = self.disk
        if disk is None:
            return None
        entry = self._on_disk(None, self._from_disk, disk, key, request_headers)
        if entry is not None and entry.body is not None:
            self.memory.put(entry, entry.stored.vary)
        return entry

    @staticmethod
    def _from_disk(disk: DiskTier, key: bytes, request_headers) -> Entry | None:
        names = disk.vary(key)
        return None if names is None else disk.get(full_key(key, names, request_headers))

    def new_body(self) -> Body:
        return Body(self.disk, self.settings.max_entry_size)

    def claim(self, key: bytes) -> bool:
        """This worker fetches ``key``; False when another worker's claim on the disk tier says it does.
        Without a disk tier (or when it fails) every worker fetches for itself."""
        if self.disk is None:
            return True
        return self._on_disk(True, self.disk.claim, key, self.settings.lock_timeout)

    def claimed(self, key: bytes) -> bool:
        return self.disk is not None and self._on_disk(False, self.disk.claimed, key, self.settings.lock_timeout)

    def unclaim(self, key: bytes) -> None:
        if self.disk is not None:
            self._on_disk(None, self.disk.unclaim, key)

    def put(self, key: bytes, uri: bytes, stored: Stored, body: Body, request_headers) -> Entry | None:
        full = full_key(key, stored.vary, request_headers)
        if self.disk is not None:
            entry = self._on_disk(None, self.disk.put, key, full, uri, stored, body)
        else:
            entry = Entry(key, full, uri, stored, body.joined(), body.size)
        if entry is not None:
            self.memory.put(entry, stored.vary)
        return entry

    def refresh(self, entry: Entry, stored: Stored) -> Entry | None:
        """The entry with new facts after a 304 (same body)."""
        if self.disk is not None:
            fresh = self._on_disk(None, self.disk.refresh, entry, stored)
        else:
            fresh = Entry(entry.key, entry.full, entry.uri, stored, entry.body, entry.length)
        if fresh is not None:
            self.memory.put(fresh, stored.vary)
        else:
            self.memory.drop(entry.full)
        return fresh

    def drop(self, entry: Entry) -> None:
        self.memory.drop(entry.full)
        if self.disk is not None:
            self._on_disk(None, self.disk.forget, [(entry.full, entry.name)])

    def invalidate(self, uri: bytes) -> int:
        """Every entry of ``uri``, in every tier and every worker."""
        count = self.memory.drop_uri(uri)
        if self.disk is not None:
            count = max(count, self._on_disk(0, self.disk.drop, "uri", uri))
        self.notices.post(URI, self._tag + uri)
        return count

    def purge(self, key: bytes) -> int:
        """Every entry of ``key`` (ending in *: of every key it begins), in every tier and every worker."""
        count = self.memory.drop_key(key)
        if self.disk is not None:
            prefix = key.endswith(b"*")
            count = max(count, self._on_disk(0, self.disk.drop, "key", key[:-1] if prefix else key, prefix))
        self.notices.post(KEY, self._tag + key)
        return count

    def noticed(self, kind: int, value: bytes) -> None:
        """Another worker's notice (Notices.check): only this worker's memory tier is left to update."""
        if kind == CLEAR:
            self.memory.clear()
            return
        tag, _, value = value.partition(b"\x00")
        if tag + b"\x00" != self._tag:
            return
        if kind == URI:
            self.memory.drop_uri(value)
        elif kind == KEY:
            self.memory.drop_key(value)

    def view(self) -> dict:
        memory = self.memory
        return {"memory": {"bytes": memory.bytes, "entries": len(memory), "evictions": memory.evictions,
                           "max_size": memory.budget},
                "disk": self._on_disk(None, self.disk.view) if self.disk is not None else None}
