"""Per-tenant call counters: what a client token's Stats call reports of its own calls."""

from __future__ import annotations

import threading

__all__ = ["TenantCounters"]


class TenantCounters:
    """Calls, hits and misses per tenant (a dict of small lists behind one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}

    def add(self, tenant: str, calls: int, hits: int, misses: int) -> None:
        with self._lock:
            counts = self._counts.setdefault(tenant, [0, 0, 0])
            counts[0] += calls
            counts[1] += hits
            counts[2] += misses

    def get(self, tenant: str) -> tuple[int, int, int]:
        with self._lock:
            calls, hits, misses = self._counts.get(tenant, (0, 0, 0))
            return calls, hits, misses
