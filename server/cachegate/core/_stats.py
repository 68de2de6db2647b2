"""Call counters shared by the pool, the service and the metrics.

Plain integers behind one lock: an uncontended acquire is a C call, far
cheaper than the Redis round trip it counts (docs/performance.md, "Host figures
behind the pool's comments"), and no increment is ever lost.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["CallCounters", "CallStats"]


@dataclass(frozen=True, slots=True)
class CallStats:
    """A consistent copy of the counters at one moment."""

    calls_total: int
    failures_total: int
    retries_total: int
    wait_timeouts_total: int
    hits_total: int
    misses_total: int
    # Calls that went to Redis in a round trip another call sent (auto-batching): the
    # round trips they would have cost on their own, saved.
    round_trips_saved_total: int = 0

    @property
    def hit_rate(self) -> float | None:
        """The one hit rate cachegate reports (health_check, get_stats, Stats, metrics):
        hits / (hits + misses) of the reads (GET, MGET, a Pipeline's gets) this process
        made through its pool since it started; None when it has read nothing. Not
        rounded, and not Redis's INFO keyspace ratio (that counts every client of Redis)."""
        reads = self.hits_total + self.misses_total
        return self.hits_total / reads if reads else None


class CallCounters:
    """Thread-safe counters of what went through the pool."""

    __slots__ = (
        "_calls",
        "_failures",
        "_hits",
        "_lock",
        "_misses",
        "_retries",
        "_saved",
        "_wait_timeouts",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls = self._failures = self._retries = 0
        self._wait_timeouts = self._hits = self._misses = self._saved = 0

    def call(self, n: int = 1) -> None:
        with self._lock:
            self._calls += n

    def failure(self) -> None:
        with self._lock:
            self._failures += 1

    def retry(self) -> None:
        with self._lock:
            self._retries += 1

    def wait_timeout(self) -> None:
        with self._lock:
            self._wait_timeouts += 1

    def reads(self, hits: int, misses: int) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses

    def shared(self, calls: int) -> None:
        """`calls` calls rode in a round trip another call sent."""
        with self._lock:
            self._saved += calls

    def snapshot(self) -> CallStats:
        with self._lock:
            return CallStats(
                calls_total=self._calls,
                failures_total=self._failures,
                retries_total=self._retries,
                wait_timeouts_total=self._wait_timeouts,
                hits_total=self._hits,
                misses_total=self._misses,
                round_trips_saved_total=self._saved,
            )
