"""A worker's own copy of values, for stale-if-error answers (RFC 5861's idea).

When Redis cannot answer, a Get that allows staleness is answered from here: the
value this worker last learned for the key, if it is no older than the caller's
allowance and the key's TTL has not run out. The copy is never consulted while
Redis answers; it is fed only with what is known for sure:

- this worker's own acknowledged writes (the value and its TTL are known);
- reads that asked for the TTL too (GET and PTTL, made only for calls that carry
  an allowance, so callers without one pay nothing);

and it drops a key on this worker's deletes, on a write whose outcome is unknown,
and on a read that finds the key gone.

Ordering. Calls run on many threads and Redis applies them in its own order, so a
read that started before a write or delete finished may bring back the old value
after the write was recorded. Each change therefore leaves a mark (the time it
finished) in a small fixed table indexed by the key's hash: a value learned by a
read that began before the mark is not kept, and a write that overlapped another
change of the same slot is dropped instead of kept. Two keys sharing a slot only
cost a value not kept (never a wrong answer), and the table's size is fixed.

Times are the injectable monotonic clock's. A value's age counts from when its
read or write was *sent* (it was true at some point after that), and its TTL from
then too: both err towards older, never towards serving past the key's TTL.

Bounded by bytes: keys, values and a fixed overhead per entry. The copy counts
against no other limit (it is extra memory per worker, CACHEGATE_STALE_COPY_BYTES).
The key is the full Redis key, the tenant's namespace included, so a tenant is only
ever answered from its own keys.

Shared fairly. With tenants (`owner_of` names the tenant of a key), each tenant's
entries are kept in their own LRU order, and when the copy is full the tenant that
holds the most bytes gives up its least recently used entry. So one tenant writing
without pause can fill the room others leave, but never push out a tenant that holds
less than it does: a tenant within its fair share (the copy divided among the tenants
that use it) keeps its entries. A tenant alone may use all of it. Without tenants
there is one owner and one LRU order.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ENTRY_OVERHEAD_BYTES", "StaleCopy", "StaleCopyStats", "StaleValue"]

# What an entry costs besides its key and value bytes: the dict slot and link, the
# tuple, two floats, and the headers of the key and value objects (rounded up).
ENTRY_OVERHEAD_BYTES = 200
# An entry larger than this share of the bound is not kept: one value must not
# push out everything else.
LARGEST_ENTRY_SHARE = 8
# Slots of the table of marks (see the module's docstring): 32 KiB of floats.
MARK_SLOTS = 4096

_NEVER = float("-inf")


@dataclass(frozen=True, slots=True)
class StaleValue:
    """A value answered from the copy, and how old it is."""

    value: bytes
    age_seconds: float


@dataclass(frozen=True, slots=True)
class StaleCopyStats:
    """What the copy holds now, and its counters since the process started."""

    capacity_bytes: int
    entries: int
    bytes: int
    served_total: int  # stale answers given
    evicted_total: int  # entries pushed out by the byte bound


# value, learned at, expires at (None: the key had no TTL), bytes charged
_Entry = tuple[bytes, float, float | None, int]


def _as_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def _one_owner(name: bytes) -> bytes:
    return b""


class _Owned:
    """One owner's entries, least recently used first, and the bytes they are charged."""

    __slots__ = ("bytes", "entries")

    def __init__(self) -> None:
        self.entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.bytes = 0


class StaleCopy:
    """A tenant-scoped, byte-bounded LRU copy of values, safe to share between threads.

    `capacity_bytes` 0 disables it: nothing is kept and nothing is served.
    `owner_of` names the owner (tenant) of a key for the fair eviction the module
    describes; None: every key has one owner.
    """

    def __init__(
        self,
        capacity_bytes: int,
        *,
        owner_of: Callable[[bytes], bytes] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if capacity_bytes < 0:
            raise ValueError("capacity_bytes must be >= 0")
        self._capacity = capacity_bytes
        self._largest = capacity_bytes // LARGEST_ENTRY_SHARE
        self._owner_of = owner_of or _one_owner
        self._clock = clock
        self._lock = threading.Lock()
        self._owners: dict[bytes, _Owned] = {}
        self._bytes = 0
        self._served = 0
        self._evicted = 0
        self._marks = [_NEVER] * (MARK_SLOTS if capacity_bytes else 0)

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    def begin(self) -> float:
        """The time a call to Redis starts: pass it to learned() or wrote() after."""
        return self._clock()

    def learned(
        self, key: str | bytes, value: bytes, ttl_seconds: float | None, since: float
    ) -> None:
        """A read begun at `since` found `value` with `ttl_seconds` left (None: no TTL)."""
        if not self._capacity:
            return
        name = _as_bytes(key)
        slot = hash(name) % MARK_SLOTS
        with self._lock:
            if self._marks[slot] >= since:  # changed while the read was under way
                return
            held = self._held(name)
            if held is not None and held[1] > since:  # a later read already told us
                return
            self._put(name, value, since, ttl_seconds)

    def wrote(self, key: str | bytes, value: bytes, ttl_seconds: float, since: float) -> None:
        """This worker's write begun at `since` was acknowledged."""
        if not self._capacity:
            return
        name = _as_bytes(key)
        slot = hash(name) % MARK_SLOTS
        with self._lock:
            if self._marks[slot] >= since:  # another change overlapped: order unknown
                self._drop(name)
            else:
                self._put(name, value, since, ttl_seconds)
            self._marks[slot] = self._clock()

    def forget(self, key: str | bytes) -> None:
        """Drop the key: deleted, gone, or its value in Redis unknown."""
        if not self._capacity:
            return
        name = _as_bytes(key)
        with self._lock:
            self._drop(name)
            self._marks[hash(name) % MARK_SLOTS] = self._clock()

    def serve(self, key: str | bytes, allowance_seconds: float) -> StaleValue | None:
        """The key's value if it is at most `allowance_seconds` old and within its TTL."""
        if not self._capacity:
            return None
        name = _as_bytes(key)
        with self._lock:
            owned = self._owners.get(self._owner_of(name))
            held = None if owned is None else owned.entries.get(name)
            if owned is None or held is None:
                return None
            value, learned_at, expires_at, _ = held
            now = self._clock()
            if expires_at is not None and now >= expires_at:
                self._drop(name)  # never served past the key's TTL
                return None
            age = max(0.0, now - learned_at)
            if age > allowance_seconds:
                return None  # another caller may allow more
            owned.entries.move_to_end(name)
            self._served += 1
            return StaleValue(value, age)

    def stats(self) -> StaleCopyStats:
        with self._lock:
            entries = sum(len(owned.entries) for owned in self._owners.values())
            return StaleCopyStats(self._capacity, entries, self._bytes, self._served, self._evicted)

    # --- with the lock held ---------------------------------------------------------

    def _held(self, name: bytes) -> _Entry | None:
        owned = self._owners.get(self._owner_of(name))
        return None if owned is None else owned.entries.get(name)

    def _put(self, name: bytes, value: bytes, since: float, ttl_seconds: float | None) -> None:
        self._drop(name)
        size = len(name) + len(value) + ENTRY_OVERHEAD_BYTES
        if size > self._largest:
            return
        expires_at = None if ttl_seconds is None else since + ttl_seconds
        owner = self._owner_of(name)
        owned = self._owners.get(owner)
        if owned is None:
            owned = self._owners[owner] = _Owned()
        owned.entries[name] = (value, since, expires_at, size)
        owned.bytes += size
        self._bytes += size
        while self._bytes > self._capacity:
            self._evict_one()

    def _evict_one(self) -> None:
        """The least recently used entry of the owner holding the most bytes."""
        owner, owned = max(self._owners.items(), key=lambda item: item[1].bytes)
        _, (_, _, _, evicted) = owned.entries.popitem(last=False)
        owned.bytes -= evicted
        self._bytes -= evicted
        self._evicted += 1
        if not owned.entries:
            del self._owners[owner]

    def _drop(self, name: bytes) -> None:
        owner = self._owner_of(name)
        owned = self._owners.get(owner)
        if owned is None:
            return
        held = owned.entries.pop(name, None)
        if held is not None:
            owned.bytes -= held[3]
            self._bytes -= held[3]
            if not owned.entries:
                del self._owners[owner]
