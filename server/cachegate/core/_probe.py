"""
When to probe an open breaker's backend: a pure schedule, driven by a clock.

A breaker that opened on a short stall should not keep calls away for the whole
recovery timeout once the backend is back. While it is OPEN, a background probe
(one cheap request, no user traffic) asks the backend whether it answers; a probe
that succeeds ends the wait early (see `CircuitBreaker.end_wait`). This module
only decides *when* those probes happen; it does no I/O and starts no thread.

The schedule::

    breaker opens at t0         first probe at t0 + first_delay
    after each probe at t       next probe at t + delay, delay = min(delay * 2, max_delay)
    breaker closes              delay goes back to first_delay

So a stall of a few seconds costs about the stall plus one interval, while a backend
that stays down gets at most one probe per interval: 1, 2, 4, 8, ... seconds apart,
then one per ``max_delay`` (the breaker's recovery timeout). The delay keeps growing
across re-openings until the breaker has closed, so a backend that answers the probe
but fails the calls that follow (half-open -> open again) is not probed every second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["ProbePolicy", "ProbeSchedule"]

# Each probe waits this many times the previous interval.
GROWTH = 2.0


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    """
    How often to probe an open breaker's backend.

    Args:
        first_delay: Seconds from the breaker's opening to the first probe; ``0``
            turns probing off (the breaker then waits its whole recovery timeout).
        max_delay: The longest interval between probes (the recovery timeout).
    """

    first_delay: float
    max_delay: float

    def __post_init__(self) -> None:
        for name in ("first_delay", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"ProbePolicy.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"ProbePolicy.{name} must be finite and >= 0, got {value!r}")
        if self.max_delay <= 0:
            raise ValueError(f"ProbePolicy.max_delay must be > 0, got {self.max_delay!r}")

    @property
    def enabled(self) -> bool:
        return self.first_delay > 0

    def most_probes(self, seconds: float) -> int:
        """
        The most probes the schedule starts within `seconds` of an opening. Each
        interval counts from the end of the previous probe, so probes that take
        time only start later: the count never exceeds this.
        """
        if not self.enabled:
            return 0
        count, at = 0, 0.0
        for delay in self._delays():
            at += delay
            if at > seconds:
                return count
            count += 1
        return count

    def _delays(self) -> Iterator[float]:
        delay = min(self.first_delay, self.max_delay)
        while True:
            yield delay
            delay = min(delay * GROWTH, self.max_delay)


class ProbeSchedule:
    """
    The probe times of one breaker. Not thread-safe: its owner serialises the calls.

    Args:
        policy: The intervals.
        clock: Monotonic seconds; injectable so tests drive time by hand.
    """

    __slots__ = ("_clock", "_delay", "_next_at", "_policy")

    def __init__(self, policy: ProbePolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._delay = min(policy.first_delay, policy.max_delay)
        self._next_at: float | None = None

    @property
    def policy(self) -> ProbePolicy:
        return self._policy

    @property
    def delay(self) -> float:
        """The interval the next probe waits (from the opening or the last probe)."""
        return self._delay

    @property
    def next_at(self) -> float | None:
        """When the next probe is due (clock time); None while no breaker is open."""
        return self._next_at

    def opened(self) -> None:
        """The breaker (re)opened: the next probe is one interval from now."""
        if self._policy.enabled:
            self._next_at = self._clock() + self._delay

    def wait(self) -> float:
        """Seconds until the next probe is due (0.0 when due; inf when none is planned)."""
        if self._next_at is None:
            return math.inf
        return max(0.0, self._next_at - self._clock())

    def due(self) -> bool:
        return self.wait() == 0.0

    def probed(self) -> None:
        """A probe ended (either way): the next one waits a longer interval from now."""
        self._delay = min(self._delay * GROWTH, self._policy.max_delay)
        self._next_at = self._clock() + self._delay if self._policy.enabled else None

    def closed(self) -> None:
        """The breaker closed (the backend proved healthy): start from the first delay."""
        self._delay = min(self._policy.first_delay, self._policy.max_delay)
        self._next_at = None
