"""A counting gate in front of the connection pool: waits with a timeout, and counts.

redis-py's plain ConnectionPool fails at once when full, and its
BlockingConnectionPool's wait time is one pool-wide attribute. This gate gives
each caller its own wait (capped by its deadline) and says how many wait.
"""

from __future__ import annotations

import threading
import time

__all__ = ["Slots"]


class Slots:
    """At most `size` holders at once; others wait up to their own timeout."""

    __slots__ = ("_cond", "_free", "_pending", "_size", "_wait_seconds_total")

    def __init__(self, size: int) -> None:
        self._size = size
        self._free = size
        self._pending = 0
        self._wait_seconds_total = 0.0
        self._cond = threading.Condition(threading.Lock())

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting at most `timeout` seconds; False when none came free."""
        with self._cond:
            if self._free > 0:  # the fast path: no clock, no wait
                self._free -= 1
                return True
            if timeout <= 0:
                return False
            self._pending += 1
            start = time.monotonic()
            try:
                got = self._cond.wait_for(lambda: self._free > 0, timeout)
            finally:
                self._pending -= 1
                self._wait_seconds_total += time.monotonic() - start
            if got:
                self._free -= 1
            return got

    def release(self) -> None:
        with self._cond:
            if self._free >= self._size:
                raise RuntimeError("Slots.release() without a matching acquire()")
            self._free += 1
            self._cond.notify()

    @property
    def size(self) -> int:
        return self._size

    @property
    def held(self) -> int:
        with self._cond:
            return self._size - self._free

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    @property
    def wait_seconds_total(self) -> float:
        with self._cond:
            return self._wait_seconds_total
