"""A near cache: the migration guide's "local caching for hot data", done right.

Not `functools.lru_cache`: entries expire (bounded staleness), the size is
bounded (least recently used goes first), misses are not cached (a key written
elsewhere shows up as soon as it exists), the client's own writes and deletes
invalidate it, and it counts hits and misses.

Given to RedisCache or AsyncRedisCache, it is also kept coherent with writes made
anywhere: a background thread (or asyncio task) follows the server's invalidation
stream (see _following.py) and drops what changed. A read in flight when its key changes is not kept
(`get_or_load`): its value may predate the change.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["NearCache", "NearCacheStats"]


@dataclass(frozen=True, slots=True)
class NearCacheStats:
    hits: int
    misses: int
    size: int
    maxsize: int
    invalidations: int = 0  # entries dropped because their key changed elsewhere
    resets: int = 0  # times everything was dropped (stream started, broke, or reset)

    @property
    def hit_rate(self) -> float:
        reads = self.hits + self.misses
        return self.hits / reads if reads else 0.0


class NearCache:
    """Thread-safe LRU of values read through the client, each kept at most `ttl` seconds.

    Another process's write to a key can stay invisible here for up to `ttl`
    seconds: choose `ttl` as the staleness you accept.
    """

    def __init__(
        self, maxsize: int = 1000, ttl: float = 1.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        self.maxsize = maxsize
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = 0
        self._invalidations = self._resets = 0
        # Reads in flight per key, and the keys that changed while one was in flight.
        self._loading: dict[str, int] = {}
        self._changed_while_loading: set[str] = set()

    def get(self, key: str) -> bytes | None:
        """The cached value, or None when absent or expired (a near-cache miss)."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] <= now:
                if entry is not None:
                    del self._entries[key]
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry[1]

    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Remember a value read or written now; `ttl` can only shorten the entry's life."""
        life = self.ttl if ttl is None else min(self.ttl, ttl)
        with self._lock:
            self._entries[key] = (self._clock() + life, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def get_or_load(
        self, key: str, load: Callable[[], bytes | None], ttl: float | None = None
    ) -> bytes | None:
        """The cached value, else `load()`'s, kept unless the key changed meanwhile.

        A change heard while `load` runs may have happened after the server read
        the value: such a value is returned but not kept.
        """
        value = self.get(key)
        if value is not None:
            return value
        self.begin_load(key)
        value = None
        try:
            value = load()
        finally:
            self.end_load(key, value, ttl)
        return value

    def begin_load(self, key: str) -> None:
        """A read of `key` from the server starts (pair it with `end_load`, always)."""
        with self._lock:
            self._loading[key] = self._loading.get(key, 0) + 1

    def end_load(self, key: str, value: bytes | None, ttl: float | None = None) -> None:
        """The read `begin_load` announced ended with `value` (None: a miss or an error):
        kept unless the key changed while it was in flight."""
        with self._lock:
            changed = key in self._changed_while_loading
            left = self._loading[key] - 1
            if left:
                self._loading[key] = left
            else:
                del self._loading[key]
                self._changed_while_loading.discard(key)
        if value is not None and not changed:
            self.put(key, value, ttl)

    def invalidate(self, key: str) -> None:
        self.invalidate_many((key,))

    def invalidate_many(self, keys: Iterable[str]) -> None:
        """Drop `keys` (changed elsewhere, or by our own writes)."""
        with self._lock:
            for key in keys:
                if self._entries.pop(key, None) is not None:
                    self._invalidations += 1
                if key in self._loading:
                    self._changed_while_loading.add(key)

    def clear(self) -> None:
        """Drop everything (reads in flight are not kept either)."""
        with self._lock:
            self._entries.clear()
            self._changed_while_loading.update(self._loading)
            self._resets += 1

    def stats(self) -> NearCacheStats:
        with self._lock:
            return NearCacheStats(
                self._hits,
                self._misses,
                len(self._entries),
                self.maxsize,
                self._invalidations,
                self._resets,
            )
