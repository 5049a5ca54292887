"""A notice board in shared memory: each worker pins its counters, any worker reads them all.

With several workers, a status or metrics request reaches one of them, yet
the page must describe the whole proxy (a Prometheus counter that jumped
between two workers' values would look like constant resets). The master
maps an anonymous shared region before forking; every worker owns one slot
and writes a JSON view of its counters there every ``PUBLISH_INTERVAL``
seconds, and the worker that serves the page merges the others' slots with
its own live view. No locks: each slot is a seqlock (an odd sequence number
while its owner writes; a reader retries until it sees the same even number
before and after).

The master has a slot too. A worker that stops withdraws its view
(``clear``) but the payload stays readable with ``read_last`` until the
master ``release``s the slot: the master folds that last view into the
totals of retired workers it publishes, so counters survive a reload or a
worker's death instead of starting again at zero.

Beside the slots, ``notices`` is a region where the workers tell each other
what the response caches invalidated (server/cachestore.py ``Notices``).
"""

from __future__ import annotations

import mmap
import struct

from .cachestore import REGION_BYTES

SLOT_BYTES = 64 * 1024
SLOTS = 256
PUBLISH_INTERVAL = 1.0
_HEADER = struct.Struct("<QII")  # sequence, payload length (0: withdrawn), length of the last payload


class Board:
    def __init__(self, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES) -> None:
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._map = mmap.mmap(-1, slots * slot_bytes)  # anonymous and shared: inherited by forks
        self.notices = mmap.mmap(-1, REGION_BYTES)  # pages no worker writes to are never even allocated
        self._free = list(range(slots))

    def __repr__(self) -> str:
        return f"<Board {self.slots - len(self._free)}/{self.slots} slots in use>"

    # --- the master's side ---

    def take(self) -> int:
        """A free slot for a new worker (the lowest one)."""
        self._free.sort()
        return self._free.pop(0)

    def release(self, slot: int) -> None:
        """Forget a slot's payload, the last one included, and make the slot free again."""
        self._write_header(slot, 0, 0)
        self._free.append(slot)

    # --- a worker's side ---

    def publish(self, slot: int, payload: bytes) -> bool:
        """Write this worker's payload; False when it does not fit (nothing is written)."""
        if len(payload) > self.slot_bytes - _HEADER.size:
            return False
        base = slot * self.slot_bytes
        sequence, _, _ = _HEADER.unpack_from(self._map, base)
        _HEADER.pack_into(self._map, base, sequence + 1, 0, 0)  # odd: being written
        self._map[base + _HEADER.size: base + _HEADER.size + len(payload)] = payload
        _HEADER.pack_into(self._map, base, sequence + 2, len(payload), len(payload))
        return True

    def clear(self, slot: int) -> None:
        """Withdraw this worker's payload from ``read``; ``read_last`` still finds it."""
        base = slot * self.slot_bytes
        _, _, last = _HEADER.unpack_from(self._map, base)
        self._write_header(slot, 0, last)

    def _write_header(self, slot: int, length: int, last: int) -> None:
        base = slot * self.slot_bytes
        sequence, _, _ = _HEADER.unpack_from(self._map, base)
        _HEADER.pack_into(self._map, base, sequence + (2 if sequence % 2 == 0 else 1), length, last)

    # --- readers ---

    def read(self, slot: int) -> bytes | None:
        """A consistent copy of one slot's payload, or None when empty or being rewritten."""
        return self._read(slot, last=False)

    def read_last(self, slot: int) -> bytes | None:
        """The payload last published in this slot, even if withdrawn since (None once released)."""
        return self._read(slot, last=True)

    def _read(self, slot: int, last: bool) -> bytes | None:
        base = slot * self.slot_bytes
        for _ in range(5):
            before, length, last_length = _HEADER.unpack_from(self._map, base)
            if before % 2:
                continue
            size = last_length if last else length
            payload = bytes(self._map[base + _HEADER.size: base + _HEADER.size + size])
            after, _, _ = _HEADER.unpack_from(self._map, base)
            if after == before:
                return payload or None
        return None

    def read_all(self, exclude: int | None = None) -> list[bytes]:
        return [payload for slot in range(self.slots) if slot != exclude
                and (payload := self.read(slot)) is not None]
