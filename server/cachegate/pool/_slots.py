"""A counting gate in front of the connection pool: waits with a timeout, and counts.

redis-py's plain ConnectionPool fails at once when full, and its
BlockingConnectionPool's wait time is one pool-wide attribute. This gate gives
each caller its own wait (capped by its deadline) and says how many wait.

The free slots are tokens on a C `queue.SimpleQueue`: taking and giving back a
slot is one C call each, with no Python-level lock on the path every call takes
(a Condition here cost several µs per call under load). The lock below guards
only the waiting figures, on the slow path.
"""

from __future__ import annotations

import queue
import threading
import time

__all__ = ["Slots"]


class Slots:
    """At most `size` holders at once; others wait up to their own timeout."""

    __slots__ = ("_lock", "_pending", "_size", "_tokens", "_wait_seconds_total")

    def __init__(self, size: int) -> None:
        self._size = size
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(size):
            self._tokens.put(None)
        self._pending = 0
        self._wait_seconds_total = 0.0
        self._lock = threading.Lock()

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting at most `timeout` seconds; False when none came free."""
        try:
            self._tokens.get_nowait()  # the fast path: no clock, no wait
            return True
        except queue.Empty:
            if timeout <= 0:
                return False
        with self._lock:
            self._pending += 1
        start = time.monotonic()
        try:
            self._tokens.get(timeout=timeout)
            return True
        except queue.Empty:
            return False
        finally:
            with self._lock:
                self._pending -= 1
                self._wait_seconds_total += time.monotonic() - start

    def release(self) -> None:
        if self._tokens.qsize() >= self._size:
            raise RuntimeError("Slots.release() without a matching acquire()")
        self._tokens.put(None)

    @property
    def size(self) -> int:
        return self._size

    @property
    def held(self) -> int:
        return self._size - self._tokens.qsize()

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    @property
    def wait_seconds_total(self) -> float:
        with self._lock:
            return self._wait_seconds_total
