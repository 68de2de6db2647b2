"""A caller's time budget, on the monotonic clock.

One object answers "how long may this step wait?" for every step of a call
(pool wait, socket read, backoff sleep), so no step can outlive the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Deadline"]


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute point on a monotonic clock; `None` budget means no deadline."""

    at: float | None
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(None if seconds is None else clock() + seconds, clock)

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None when unbounded."""
        if self.at is None:
            return None
        return max(0.0, self.at - self.clock())

    def cap(self, seconds: float) -> float:
        """`seconds`, shortened to what is left of the budget."""
        left = self.remaining()
        return seconds if left is None else min(seconds, left)

    @property
    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0.0
