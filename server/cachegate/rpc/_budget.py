"""A worker's memory budget: the request and reply bytes it holds at once.

Every byte a caller can make a worker hold goes through here: a request once it
has arrived, the values read for a reply, and the reply while grpc sends it. A
call that cannot get its bytes within a short wait is refused (RESOURCE_EXHAUSTED)
instead of growing the process, so the worker's memory is its base plus at most
this budget, whatever callers send or fail to read.

Reservations are counted in bytes of payload times the copies a worker holds of
it at once (see REQUEST_COPIES, REPLY_COPIES), so the budget is close to the
memory it stands for, not a count of messages.
"""

from __future__ import annotations

import threading
import time

__all__ = ["REPLY_COPIES", "REQUEST_COPIES", "MemoryBudget"]

from cachegate.core import REPLY_COPIES, REQUEST_COPIES  # with the setting they size


class MemoryBudget:
    """A counting semaphore of bytes: `reserve` waits a little, `take_up_to` never waits."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"a memory budget needs a positive limit, got {limit}")
        self._limit = limit
        self._used = 0
        self._peak = 0
        self._refused = 0
        self._cond = threading.Condition(threading.Lock())

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def used(self) -> int:
        return self._used

    @property
    def peak(self) -> int:
        return self._peak

    @property
    def refused(self) -> int:
        """Reservations that got nothing (what the callers saw as RESOURCE_EXHAUSTED)."""
        return self._refused

    def reserve(self, size: int, wait: float = 0.0) -> bool:
        """Take `size` bytes, waiting at most `wait` seconds for them; False if not granted.

        A size above the whole budget is never granted (it could never fit).
        """
        if size <= 0:
            return True
        with self._cond:
            if size > self._limit:
                self._refused += 1
                return False
            end = time.monotonic() + wait
            while self._used + size > self._limit:
                left = end - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self._used + size <= self._limit:
                        break
                    self._refused += 1
                    return False
            self._grant(size)
            return True

    def take_up_to(self, size: int) -> int:
        """Take as many of `size` bytes as are free now (possibly 0); how many were taken."""
        if size <= 0:
            return 0
        with self._cond:
            granted = min(size, self._limit - self._used)
            if granted <= 0:
                self._refused += 1
                return 0
            self._grant(granted)
            return granted

    def release(self, size: int) -> None:
        if size <= 0:
            return
        with self._cond:
            self._used -= size
            if self._used < 0:  # a bug in a caller; never let it grant more than the limit
                self._used = 0
                raise AssertionError("released more memory budget than was reserved")
            self._cond.notify_all()

    def _grant(self, size: int) -> None:
        self._used += size
        if self._used > self._peak:
            self._peak = self._used
