"""Fanning changed keys out to subscribers: tenant-scoped, filtered, each behind a bounded queue.

The tracker (pool/_tracking.py) calls `changed` with full Redis key names and
`reset` when it cannot say what changed. With tokens, a key belongs to the tenant
whose namespace it starts with (`TENANT:`), and only that tenant's subscribers hear
of it, with the namespace taken off, as Get names keys; a key in no tenant's
namespace reaches nobody. Without tokens every subscriber hears of every key.

Each subscriber has a queue of distinct keys (a key written twice before the
subscriber reads is sent once), bounded by CACHEGATE_INVALIDATION_QUEUE. A
subscriber whose queue overflows gets one RESET in place of what it missed; one
that misses as many keys again before it has taken that RESET is not reading: its
stream is ended with RESOURCE_EXHAUSTED, so a stalled caller costs one bounded
queue, never more.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Batch", "InvalidationHub", "Subscriber"]

Close = Callable[[str], None]

# Keys in one event: a stream of small messages starts flowing at once, and a
# burst of changes still goes in few messages.
MAX_KEYS_PER_EVENT = 256


@dataclass(frozen=True, slots=True)
class Batch:
    """What a subscriber is sent next: keys to drop, or a reset (keys empty)."""

    keys: tuple[str, ...]
    reset: str | None = None
    tracking: bool = False  # for a reset: does the server hear every change from now on?


class Subscriber:
    """One Subscribe stream's filter and queue."""

    def __init__(
        self,
        tenant: str | None,
        keys: Iterable[str],
        prefixes: Sequence[str],
        limit: int,
        close: Close,
    ) -> None:
        self.tenant = tenant
        self._keys = frozenset(keys)
        self._prefixes = tuple(prefixes)
        self._everything = (not self._keys and not self._prefixes) or "" in self._prefixes
        self._limit = limit
        self._close = close
        self._cond = threading.Condition(threading.Lock())
        self._queued: dict[str, None] = {}  # insertion-ordered set
        self._reset: str | None = None
        self._tracking = True
        self._behind = False  # a reset for falling behind is waiting to be taken
        self._missed = 0  # keys offered since then
        self._ended: str | None = None

    def wants(self, key: str) -> bool:
        return self._everything or key in self._keys or key.startswith(self._prefixes)

    def offer(self, keys: Iterable[str]) -> None:
        wanted = [key for key in keys if self.wants(key)]
        if not wanted:
            return
        closing = None
        with self._cond:
            if self._ended is not None:
                return
            if self._reset is None:
                self._queued.update(dict.fromkeys(wanted))
                if len(self._queued) > self._limit:
                    self._queued.clear()
                    self._reset, self._behind, self._missed = "fell behind", True, 0
                    self._tracking = True  # keys come only while the server tracks
            elif self._behind:  # keys it missed since it fell behind, counted not kept
                self._missed += len(wanted)
            if self._behind and self._missed > self._limit:  # a second overflow, unread
                closing = self._end(
                    f"invalidations waited for a subscriber that does not read: more than "
                    f"{self._limit} keys, twice (CACHEGATE_INVALIDATION_QUEUE); "
                    "subscribe again and read the stream"
                )
            # else: a reset is pending; it covers these keys too
            self._cond.notify()
        if closing is not None:
            self._close(closing)

    def reset(self, reason: str, tracking: bool = True) -> None:
        with self._cond:
            self._queued.clear()
            if self._reset is None or not self._behind:
                self._reset = reason
            self._tracking = tracking
            self._cond.notify()

    def end(self, message: str) -> None:
        """The stream ends at its next read, with `message` (the servicer picks the code)."""
        with self._cond:
            self._end(message)
            self._cond.notify()

    def _end(self, message: str) -> str:
        if self._ended is None:
            self._ended = message
        self._queued.clear()
        return self._ended

    @property
    def ended(self) -> str | None:
        return self._ended

    def take(self, timeout: float) -> Batch | None:
        """The next batch, waiting up to `timeout`; None when nothing came (or ended)."""
        with self._cond:
            if self._ended is None and self._reset is None and not self._queued:
                self._cond.wait(timeout)
            if self._ended is not None:
                return None
            if self._reset is not None:
                reason, self._reset, self._behind = self._reset, None, False
                return Batch((), reason, self._tracking)
            if not self._queued:
                return None
            if len(self._queued) <= MAX_KEYS_PER_EVENT:
                keys = tuple(self._queued)
                self._queued.clear()
            else:
                keys = tuple(itertools.islice(self._queued, MAX_KEYS_PER_EVENT))
                for key in keys:
                    del self._queued[key]
            return Batch(keys)


class InvalidationHub:
    """The tracker's listener: sorts changes by tenant and offers them to subscribers.

    `tenants`: the tenant names when tokens are on (None: no namespaces).
    `start`: called when the first subscriber arrives (the tracker starts lazily:
    a server nobody subscribes to opens no tracking connections).
    """

    def __init__(
        self,
        tenants: Collection[str] | None,
        queue_limit: int,
        max_key_bytes: int,
        start: Callable[[], None],
    ) -> None:
        self._tenants = frozenset(tenants) if tenants is not None else None
        self._limit = queue_limit
        self._max_key_bytes = max_key_bytes
        self._start = start
        self._lock = threading.Lock()
        self._subscribers: dict[str | None, set[Subscriber]] = {}
        self._tracking = False

    @property
    def prefixes(self) -> list[str]:
        """What Redis is asked to track: the tenants' namespaces, or every key."""
        return sorted(f"{tenant}:" for tenant in self._tenants) if self._tenants else []

    def subscribe(
        self, tenant: str | None, keys: Iterable[str], prefixes: Sequence[str], close: Close
    ) -> Subscriber:
        subscriber = Subscriber(tenant, keys, prefixes, self._limit, close)
        with self._lock:
            self._subscribers.setdefault(tenant, set()).add(subscriber)
            if self._tracking:  # else the reset comes when tracking starts
                subscriber.reset("subscribed")
        self._start()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            group = self._subscribers.get(subscriber.tenant)
            if group is not None:
                group.discard(subscriber)
                if not group:
                    del self._subscribers[subscriber.tenant]

    def count(self) -> int:
        with self._lock:
            return sum(len(group) for group in self._subscribers.values())

    def end_all(self, message: str) -> None:
        with self._lock:
            everyone = [s for group in self._subscribers.values() for s in group]
        for subscriber in everyone:
            subscriber.end(message)

    # --- the tracker's side (TrackingListener) ----------------------------------------

    def changed(self, keys: list[bytes]) -> None:
        by_tenant: dict[str | None, list[str]] = {}
        limit = self._max_key_bytes
        for raw in keys:
            tenant: str | None = None
            if self._tenants is not None:
                name, colon, raw = raw.partition(b":")
                if not colon:
                    continue
                tenant = name.decode("ascii", "replace")
                if tenant not in self._tenants:
                    continue
            if not raw or len(raw) > limit:
                continue  # no Get can name it: nobody holds it
            try:
                key = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue  # keys are UTF-8 in the API: no Get can name this one either
            by_tenant.setdefault(tenant, []).append(key)
        if not by_tenant:
            return
        with self._lock:
            groups = [
                (list(self._subscribers.get(tenant, ())), tenant_keys)
                for tenant, tenant_keys in by_tenant.items()
            ]
        for subscribers, tenant_keys in groups:
            for subscriber in subscribers:
                subscriber.offer(tenant_keys)

    def reset(self, reason: str, *, tracking: bool) -> None:
        with self._lock:
            self._tracking = tracking
            everyone = [s for group in self._subscribers.values() for s in group]
        for subscriber in everyone:
            subscriber.reset(reason, tracking)
