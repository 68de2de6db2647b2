"""
When to say a repeated message again: a pure rate limit, driven by the caller's clock.

A condition that persists (Redis down at start) would otherwise be logged on every
check, a line every half second for as long as it lasts. `RepeatedMessage` lets the
first occurrence through, then one more after each interval, the interval doubling
up to a cap::

    occurrence at t0            told (0 held back)
    next told at t0 + first     then + 2 * first, + 4 * first, ... up to + max_interval

Each told repeat says how many occurrences were held back since the last line, and
`end()` (the condition is over: "backend ready") returns the ones held back since then
and starts afresh, so the next run of the condition is told at once again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RepeatPolicy", "RepeatedMessage"]


@dataclass(frozen=True, slots=True)
class RepeatPolicy:
    """
    Args:
        first_interval: Seconds from the first line to the first repeat.
        max_interval: The longest time between two lines while the condition lasts.
    """

    first_interval: float = 1.0
    max_interval: float = 60.0

    def __post_init__(self) -> None:
        for name in ("first_interval", "max_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"RepeatPolicy.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"RepeatPolicy.{name} must be finite and > 0, got {value!r}")
        if self.max_interval < self.first_interval:
            raise ValueError("RepeatPolicy.max_interval must be >= first_interval")


class RepeatedMessage:
    """Which occurrences of one repeated message get a line. Not thread-safe: one owner."""

    __slots__ = ("_held", "_interval", "_next_at", "_policy")

    def __init__(self, policy: RepeatPolicy | None = None) -> None:
        self._policy = policy or RepeatPolicy()
        self._next_at: float | None = None  # None: nothing since the start or end()
        self._interval = self._policy.first_interval
        self._held = 0

    def occur(self, now: float) -> int | None:
        """One occurrence at `now` (seconds, any monotonic origin).

        Returns None when the line is to be held back, else how many occurrences were
        held back since the last line (0 for the first).
        """
        if self._next_at is None:
            self._interval = self._policy.first_interval
            self._next_at = now + self._interval
            return 0
        if now < self._next_at:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._interval = min(self._interval * 2, self._policy.max_interval)
        self._next_at = now + self._interval
        return held

    def end(self) -> int:
        """The condition is over: the occurrences held back since the last line; starts afresh."""
        held, self._held = self._held, 0
        self._next_at = None
        return held

    @property
    def active(self) -> bool:
        """True from the first occurrence until end()."""
        return self._next_at is not None
