"""The response cache in the request path: answers from it, fills it, refreshes it, purges it.

``serve_cached`` carries out a ``Forward`` whose route has a cache
(``action.cache``, an http/cache.py ``CacheUse``):

* lookup: the store (server/cachestore.py) finds the entry the request
  selects. Fresh: it is the answer, written through the client's responder
  interface (``respond``, or ``start_response`` and a ``FileSender`` for a
  body on disk only), and no upstream is involved (HIT). Stale: while
  another request refreshes it, or when stale-while-revalidate allows, it
  is the answer too (UPDATING, STALE) and a background request refreshes it;
  otherwise it is revalidated with the upstream (a 304 refreshes it:
  REVALIDATED; a full answer replaces it: EXPIRED). None: the request goes
  upstream (MISS), and while it does, other requests for the same key wait
  for its answer instead of going too (``lock``: collapsed forwarding), until
  ``lock_timeout``. With a disk tier the fetching worker claims the key
  there, and the other workers' requests wait for the entry too (``Claimed``
  looks every CLAIM_POLL seconds).
* bypass and invalidate: the request goes upstream as any other; for an
  unsafe method a 2xx or 3xx answer invalidates the URI (RFC 9111 4.4).

A request that goes upstream goes through forward.py's ``Forwarding`` as
every forwarded request does, with a ``Relay`` standing where the client
would: the Forwarding talks to it as to its client (``start_response``,
``write``, ``finish``, ``fail``), and the client connection talks to it as
to its responder (``writable``, ``client_lost``). A ``Filling`` relay feeds
the response to the store as it passes it on, answers from the entry
instead when the upstream's answer is a 304 to the cache's own validators
or a failure that a stale entry may cover, and wakes the requests that
waited for it. Whatever the cache answers goes through the same responder
interface as everything else, so what applies to responses on the way out
(compression, HTTP/2 streams) applies to cached ones too: the store keeps
what the upstream sent.

What the cache did is the ``X-Cache-Status`` header (``status_header``),
``cache=`` in the access log, and the counters of the status pages.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter

from ..errors import UpstreamTimeout
from ..http import cache as rules
from ..http.exchange import Exchange
from .cachestore import Notices, Store
from .files import FileSender, may_sendfile
from .forward import Forwarding

log = logging.getLogger("proxy")

CLAIM_POLL = 0.02  # seconds between two looks at another worker's claim on a key
JSON = (b"content-type", b"application/json")
NO_STORE = (b"cache-control", b"no-store")


class Cache:
    """One ``[caches.NAME]`` in this worker: its store, the keys being fetched, and its counters."""

    __slots__ = ("settings", "store", "locks", "counts", "labels", "clock")

    def __init__(self, settings, notices: Notices, clock=time.time) -> None:
        self.settings = settings
        self.store = Store(settings, notices, clock)
        self.locks: dict[bytes, Fetching] = {}  # key -> what requests for it wait on (collapsed forwarding)
        self.counts: Counter[str] = Counter()  # X-Cache-Status -> answers
        header = settings.status_header.lower().encode()
        # X-Cache-Status -> the header saying it (none when off), made once.
        self.labels = {label: [(header, label.encode())] if header else [] for label in rules.STATUSES}
        self.clock = clock

    def __repr__(self) -> str:
        return f"<Cache {self.settings.name} fetching={len(self.locks)} {self.store!r}>"

    def answered(self, exchange, label: str) -> list[tuple[bytes, bytes]]:
        """Count the answer and note it in the access log; the header that says it (none when off)."""
        exchange.cache = label
        self.counts[label] += 1
        return self.labels[label]

    def view(self) -> dict:
        return {"statuses": dict(self.counts), **self.store.view()}


class Caches:
    """Every cache of one worker, and the notices they share with the other workers."""

    __slots__ = ("by_name", "notices")

    def __init__(self, settings, region=None, slot: int | None = None, clock=time.time) -> None:
        self.notices = Notices(region, slot)
        self.by_name = {name: Cache(cache, self.notices, clock) for name, cache in settings.items()}
        self.notices.apply = self._noticed

    def __repr__(self) -> str:
        return f"<Caches {', '.join(self.by_name) or 'none'}>"

    def _noticed(self, kind: int, value: bytes) -> None:
        for cache in self.by_name.values():
            cache.store.noticed(kind, value)

    def view(self) -> dict:
        return {name: cache.view() for name, cache in self.by_name.items()}

    def close(self) -> None:
        for cache in self.by_name.values():
            cache.store.close()


# --- carrying out a Forward with a cache ----------------------------------------------------------

def serve_cached(client, action) -> None:
    """Carry out ``action`` (a Forward whose ``cache`` is set) for the client's current request."""
    use = action.cache
    cache = client.w.caches.by_name[use.cache]
    mode = use.mode
    if mode == "lookup":
        lookup(client, cache, action, cache.settings.lock)
    elif mode == "invalidate":
        Invalidating(cache, client).start(action)
    else:
        Relay(cache, client, rules.BYPASS).start(action)


def lookup(client, cache: Cache, action, lock: bool) -> None:
    """Answer from the entry the request selects, or fetch it (see the module docstring)."""
    use = action.cache
    headers = client.exchange.head.headers
    store = cache.store
    now = cache.clock()
    entry = store.lookup(use.key, headers)
    if entry is not None:
        if now < entry.fresh_until and not use.revalidate:
            serve(client, cache, entry, rules.HIT, now, action)
            return
        if store.disk is not None:  # another worker may have refreshed it since this one kept it in memory
            other = store.lookup_disk(use.key, headers)
            if other is not None and other.stored.response_time > entry.stored.response_time:
                entry = other
                if now < entry.fresh_until and not use.revalidate:
                    serve(client, cache, entry, rules.HIT, now, action)
                    return
        state = rules.freshness(entry.stored, now, revalidate=use.revalidate, use_stale=cache.settings.use_stale)
        fetching = cache.locks.get(entry.full)
        if state is rules.STALE_WHILE_REVALIDATE:
            refresh = fetching is None and store.claim(entry.full)
            if refresh:
                Filling(cache, None, use, entry, background_of=client).start(action)
            serve(client, cache, entry, rules.STALE if refresh else rules.UPDATING, now, action)
            return
        key = entry.full
    else:
        key = use.key
        fetching = cache.locks.get(key)
    if not lock:
        Filling(cache, client, use, entry).start(action)
        return
    if fetching is None and not store.claim(key):
        fetching = Claimed(cache, key, client.w)  # another worker fetches it
    if fetching is not None:
        fetching.wait(Waiter(cache, client, action))
        return
    if entry is None and store.disk is not None:
        entry = store.lookup_disk(use.key, headers)  # stored by another worker between the look and the claim?
        if entry is not None and now < entry.fresh_until and not use.revalidate:
            store.unclaim(key)
            serve(client, cache, entry, rules.HIT, now, action)
            return
    Filling(cache, client, use, entry, lock_key=key).start(action)


def serve(client, cache: Cache, entry, label: str, now: float, action) -> None:
    """Answer the client's request from ``entry``: a 304 when its own conditions hold (RFC 9111 4.3.2)."""
    stored = entry.stored
    exchange = client.exchange
    head = exchange.head
    not_modified = rules.not_modified(stored, head.headers)
    fd = -1
    if entry.body is None and not not_modified and head.method != b"HEAD":
        store = cache.store
        try:
            fd = os.open(store.disk.file(entry.name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # removed since it was looked up (evicted, or purged by another worker)
            store.drop(entry)
            lookup(client, cache, action, False)
            return
    exchange.handler = "cache"
    extra = [(b"age", rules.age_value(entry.born, now)), *cache.answered(exchange, label)]
    if not_modified:
        client.respond(304, [*rules.not_modified_headers(stored), *extra], b"", length=entry.length)
        return
    headers = [*stored.headers, *extra]
    if fd < 0:
        client.respond(stored.status, headers, entry.body or b"", length=entry.length)
        return
    client.start_response(stored.status, headers, entry.length)  # first: it decides whether the body is coded
    sender = FileSender(client, fd, ((entry.offset, entry.length),), may_sendfile(client))
    client.responder = sender
    sender.writable()


def _not_modified(client, cache: Cache, stored, label: str, now: float) -> None:
    """A 304 for the client's conditional request, from the facts of what the upstream just sent."""
    extra = [(b"age", rules.age_value(rules.born(stored), now)), *cache.answered(client.exchange, label)]
    client.respond(304, [*rules.not_modified_headers(stored), *extra], b"")


# --- between a Forwarding and the client ---------------------------------------------------------

class Relay:
    """What a Forwarding takes for its client, and the client for its responder: passes everything on,
    adding the cache's status header (BYPASS). Subclasses look at what passes."""

    __slots__ = ("cache", "client", "w", "exchange", "client_ip", "scheme", "forwarding", "label", "labelled")

    def __init__(self, cache: Cache, client, label: str = rules.MISS) -> None:
        self.cache = cache
        self.client = client
        self.label = label
        self.labelled = False
        self.forwarding: Forwarding | None = None
        if client is not None:
            self.w = client.w
            self.exchange = client.exchange
            self.client_ip = client.client_ip
            self.scheme = client.scheme

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} {self.forwarding!r}>"

    def start(self, action, head=None) -> None:
        client = self.client
        self.forwarding = Forwarding(self, action, client.body if client is not None else None, head)
        if client is not None:
            client.responder = self
        self.forwarding.start()

    @property
    def spool(self):
        client = self.client
        return client.spool if client is not None else None

    def _label(self) -> list[tuple[bytes, bytes]]:
        if self.labelled:
            return []
        self.labelled = True
        return self.cache.answered(self.exchange, self.label)

    # --- the Forwarding's side (its client) ---

    def start_response(self, status: int, headers, length, reason: bytes = b"", spool=None) -> None:
        headers += self._label()
        self.client.start_response(status, headers, length, reason=reason, spool=spool)

    def write(self, data) -> None:
        self.client.write(data)

    def finish(self) -> None:
        self.client.finish()

    def fail(self, error) -> None:
        self._label()
        self.client.fail(error)

    def crashed(self) -> None:
        if self.client is not None:
            self.client.crashed()

    # --- the client's side (its responder) ---

    def writable(self) -> None:
        self.forwarding.writable()

    def client_lost(self) -> None:
        self.forwarding.client_lost()


class Invalidating(Relay):
    """An unsafe method: a non-error answer invalidates what it changed, in every tier and worker."""

    __slots__ = ()

    def __init__(self, cache: Cache, client) -> None:
        super().__init__(cache, client, "")

    def _label(self) -> list[tuple[bytes, bytes]]:
        return []

    def start_response(self, status: int, headers, length, reason: bytes = b"", spool=None) -> None:
        head = self.exchange.head
        if rules.invalidates(head.method, status):
            use = self.forwarding.action.cache
            host = self.forwarding.action.host
            for uri in rules.invalidated_uris(use.uri, self.scheme, host, headers):
                self.cache.store.invalidate(uri)
        super().start_response(status, headers, length, reason, spool)


class Fetching:
    """What requests for one key wait on (collapsed forwarding): a request of this worker fetching it
    (``Filling``), or another worker's claim on the disk tier (``Claimed``). Needs ``cache``, ``w``,
    ``lock_key`` and ``waiters``; ``claimed``: this worker holds the disk tier's claim on the key."""

    __slots__ = ()

    def wait(self, waiter: "Waiter") -> None:
        self.waiters.append(waiter)
        waiter.filling = self
        waiter.client.responder = waiter
        waiter.client.w.timers.arm(waiter, self.cache.settings.lock_timeout)

    def _release(self, lock: bool, stale=None) -> None:
        """Nobody waits on this key any longer. The waiters look again (``lock``: and may wait again,
        after a success), are answered from ``stale``, or go upstream each."""
        locks = self.cache.locks
        if self.lock_key is not None and locks.get(self.lock_key) is self:
            del locks[self.lock_key]
            if self.claimed:
                self.cache.store.unclaim(self.lock_key)
        waiters, self.waiters = self.waiters, []
        if waiters:
            self.w.loop.call_soon(_wake, waiters, lock, stale)


class Claimed(Fetching):
    """Another worker claimed the key on the disk tier: the requests here wait until its claim is gone
    (its entry is then on disk for them to find), each for lock_timeout at most."""

    __slots__ = ("cache", "w", "lock_key", "waiters", "deadline", "queued")
    claimed = False

    def __init__(self, cache: Cache, key: bytes, w) -> None:
        self.cache = cache
        self.w = w
        self.lock_key = key
        self.waiters: list[Waiter] = []
        self.deadline = self.queued = 0.0
        cache.locks[key] = self
        w.timers.arm(self, CLAIM_POLL)

    def __repr__(self) -> str:
        return f"<Claimed {self.lock_key!r} waiters={len(self.waiters)}>"

    def expired(self) -> None:
        if self.waiters and self.cache.store.claimed(self.lock_key):
            self.w.timers.arm(self, CLAIM_POLL)
            return
        self._release(lock=True)


class Filling(Relay, Fetching):
    """The request that fetches (or revalidates) an entry: relays the answer and stores it on the way.

    ``entry``: the stale entry being revalidated or replaced (None on a miss). ``lock_key``: the key
    other requests wait on while this one fetches it (None: nobody waits). ``background_of``: a
    refresh nobody waits for, made on behalf of that client's request (stale-while-revalidate).
    """

    __slots__ = ("use", "entry", "lock_key", "claimed", "waiters", "head_only", "request_head", "request_time",
                 "body", "stored", "outcome", "swallow", "started")

    def __init__(self, cache: Cache, client, use, entry, lock_key: bytes | None = None, background_of=None) -> None:
        super().__init__(cache, client, rules.EXPIRED if entry is not None else rules.MISS)
        if client is None:  # a background refresh: its own bookkeeping, never logged
            origin = background_of
            self.w = origin.w
            self.client_ip = origin.client_ip
            self.scheme = origin.scheme
            self.exchange = Exchange(origin.exchange.head, origin.exchange.request_id)
            lock_key = entry.full
            self.labelled = True
        self.use = use
        self.entry = entry
        self.lock_key = lock_key
        self.claimed = lock_key is not None  # lookup() claimed it (a no-op without a disk tier)
        self.waiters: list[Waiter] = []
        head = self.exchange.head
        self.head_only = head.method == b"HEAD"
        # Sent upstream: a GET (a HEAD is answered from the GET's entry, as nginx's proxy_cache_convert_head),
        # without the client's conditions (the cache needs the whole answer; it answers them itself), with
        # the entry's validators when there is one.
        headers = [(n, v) for n, v in head.headers if n not in rules.CONDITIONAL]
        if entry is not None:
            headers += rules.validators(entry.stored)
        self.request_head = head._replace(method=b"GET", headers=headers)
        self.request_time = 0.0
        self.body = None
        self.stored = None
        self.outcome = None  # (label, entry or Stored) to answer from once the upstream is done
        self.swallow = False  # the upstream's answer is not for the client
        self.started = False  # the client's answer has begun

    def start(self, action, head=None) -> None:
        if self.lock_key is not None:
            self.cache.locks[self.lock_key] = self
        self.request_time = self.cache.clock()
        super().start(action, self.request_head)

    # --- the upstream's answer ---

    def start_response(self, status: int, headers, length, reason: bytes = b"", spool=None) -> None:
        cache = self.cache
        settings = cache.settings
        now = cache.clock()
        entry = self.entry
        if status == 304 and entry is not None and rules.validators(entry.stored):
            refreshed = rules.refreshed(entry.stored, headers, request_time=self.request_time, response_time=now,
                                        default_ttl=settings.default_ttl)
            self.swallow = True
            if type(refreshed) is str:
                log.info("cache %s: %s: %s", settings.name, self.use.uri.decode("latin-1"), refreshed)
                cache.store.drop(entry)
                self.outcome = (rules.MISS, None)  # answered by a new request without validators
            else:
                self.outcome = (rules.REVALIDATED, cache.store.refresh(entry, refreshed) or entry)
            return
        condition = rules.STATUS_CONDITIONS.get(status)
        if condition is not None and entry is not None and \
                rules.stale_on_error(entry.stored, now, condition, settings.use_stale):
            self.swallow = True
            self.outcome = (rules.STALE, entry)
            return
        if not self.use.no_store:
            stored = rules.storable(status, reason, self.request_head.headers, headers,
                                    request_time=self.request_time, response_time=now, default_ttl=settings.default_ttl)
            if type(stored) is str:
                if entry is not None:
                    cache.store.drop(entry)  # what the upstream says now about this URI wins
            else:
                self.stored = stored
                self.body = cache.store.new_body()
        client = self.client
        if client is None:
            return
        if self.stored is not None and rules.not_modified(self.stored, client.exchange.head.headers):
            self.swallow = True  # the client's own conditions hold: a 304, once the entry is stored
            self.outcome = (self.label, self.stored)
            return
        self.started = True
        headers += self._label()
        client.start_response(status, headers, length, reason=reason, spool=spool)

    def write(self, data) -> None:
        body = self.body
        if body is not None and not body.append(data):
            self.body = None  # larger than max_entry_size: relayed, not stored
        client = self.client
        if client is None or self.swallow or self.head_only:
            if client is not None:
                self.exchange.body_bytes -= len(data)  # the Forwarding counts what reaches the client
            if self.body is None:  # nobody wants the rest: the upstream's connection is let go
                self.forwarding.client_lost()
                self.finish()
            return
        client.write(data)

    def finish(self) -> None:
        stored_entry = self._store()
        client = self.client
        outcome = self.outcome
        action = self.forwarding.action
        if outcome is not None and outcome[1] is None:  # the 304 was for another representation: ask again
            if client is None:
                self._release(lock=False)
                return
            again = Filling(self.cache, client, self.use, None, self.lock_key)
            again.waiters, self.waiters = self.waiters, []
            again.claimed, self.claimed = self.claimed, False
            again.start(action)
            return
        self._release(lock=stored_entry is not None or (outcome is not None and outcome[0] == rules.REVALIDATED),
                      stale=outcome[1] if outcome is not None and outcome[0] == rules.STALE else None)
        if client is None:
            return
        if outcome is None:
            client.finish()
            return
        label, facts = outcome
        if type(facts) is rules.Stored:
            _not_modified(client, self.cache, facts, label, self.cache.clock())
        else:
            serve(client, self.cache, facts, label, self.cache.clock(), action)

    def _store(self):
        body, self.body = self.body, None
        if body is None:
            return None
        try:
            return self.cache.store.put(self.use.key, self.use.uri, self.stored, body,
                                        self.request_head.headers)
        finally:
            body.discard()

    def fail(self, error) -> None:
        if self.body is not None:
            self.body.discard()
            self.body = None
        entry = self.entry
        client = self.client
        if self.outcome is not None and self.outcome[1] is not None:
            self.finish()  # the answer comes from the cache anyway
            return
        condition = "timeout" if isinstance(error, UpstreamTimeout) else "error"
        now = self.cache.clock()
        if entry is not None and not self.started and \
                rules.stale_on_error(entry.stored, now, condition, self.cache.settings.use_stale):
            self._release(lock=False, stale=entry)
            if client is not None:
                serve(client, self.cache, entry, rules.STALE, now, self.forwarding.action)
            return
        self._release(lock=False)
        if client is not None:
            self._label()
            client.fail(error)

    def crashed(self) -> None:
        if self.body is not None:
            self.body.discard()
            self.body = None
        self._release(lock=False)
        super().crashed()

    def client_lost(self) -> None:
        """The client went away: the answer is still fetched when the cache or others want it."""
        self.client = None
        if self.body is not None or self.waiters or self.outcome is not None:
            self.forwarding.detached()
            return
        self.forwarding.client_lost()
        self._release(lock=False)



def _wake(waiters: list["Waiter"], lock: bool, stale) -> None:
    for waiter in waiters:
        waiter.resume(lock, stale)


class Waiter:
    """A request waiting for another to fetch what it wants (collapsed forwarding, nginx proxy_cache_lock)."""

    __slots__ = ("cache", "client", "action", "filling", "deadline", "queued")

    def __init__(self, cache: Cache, client, action) -> None:
        self.cache = cache
        self.client = client
        self.action = action
        self.filling: Fetching | None = None
        self.deadline = 0.0
        self.queued = 0.0

    def __repr__(self) -> str:
        return f"<Waiter {self.action.cache.key!r}>"

    def resume(self, lock: bool, stale) -> None:
        if self.filling is None:
            return  # timed out or gone already
        self.filling = None
        client = self.client
        client.w.timers.disarm(self)
        client.responder = None
        try:
            if stale is not None:
                serve(client, self.cache, stale, rules.STALE, self.cache.clock(), self.action)
            else:
                lookup(client, self.cache, self.action, lock)
        except Exception:
            client.crashed()  # a bug: logged with its traceback, this connection cut (as in data_received)

    def expired(self) -> None:
        """lock_timeout: go upstream without waiting longer (the answer is not stored, as nginx does)."""
        self._leave()
        client = self.client
        use = self.action.cache._replace(no_store=True)
        Filling(self.cache, client, use, None).start(self.action._replace(cache=use))

    def client_lost(self) -> None:
        self._leave()

    def writable(self) -> None:
        pass

    def _leave(self) -> None:
        filling, self.filling = self.filling, None
        self.client.w.timers.disarm(self)
        if filling is not None and self in filling.waiters:
            filling.waiters.remove(self)


# --- purging --------------------------------------------------------------------------------------

def purge(client, action) -> None:
    """A Purge: remove the URI's or the key's entries from the named caches, in every tier and worker.
    200 with the count this worker and the disk tier held, or 404 when they held none."""
    caches = client.w.caches.by_name
    count = 0
    for name in action.caches:
        store = caches[name].store
        count += store.invalidate(action.uri) if action.uri else store.purge(action.key)
    body = json.dumps({"purged": count}).encode() + b"\n"
    client.exchange.handler = "local"
    client.respond(200 if count else 404, [JSON, NO_STORE], body)
