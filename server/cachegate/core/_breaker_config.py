"""The circuit breaker's settings: thresholds, timeouts and the probe delay, validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cachegate.core._probe import ProbePolicy

__all__ = ["BreakerConfig"]


def _require_int(field: str, value: object, minimum: int) -> None:
    # bool is an int subclass, but `failure_threshold=True` is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"BreakerConfig.{field} must be an int >= {minimum}, got {value!r}"
        raise ValueError(msg)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """
    Configuration of a `CircuitBreaker`. Immutable; validated on creation.

    Args:
        failure_threshold: Consecutive failures that open a closed breaker.
        recovery_timeout: Seconds a breaker stays OPEN before the next call
            may probe.
        half_open_max_calls: Probes allowed in flight at once in HALF_OPEN.
        success_threshold: Consecutive probe successes that close it.
        failure_rate_threshold: Optional second rule: open when the failure
            rate over the sliding window is ``>=`` this (``0 < x <= 1``).
        window_size: Calls in the count-based sliding window.
        minimum_calls: The rate is not evaluated before the window holds this
            many calls (``<= window_size``; otherwise it would never be).
        slow_call_duration: Optional: a successful call that took longer than
            this many seconds counts as a failure.
        probe_delay: Seconds from opening to the first background probe (the
            interval then doubles after each probe, up to ``recovery_timeout``);
            ``0`` turns the probing off. The breaker only holds the setting:
            whoever owns the I/O runs the probes (see `probe_policy`).

    Raises:
        ValueError: naming the offending field and value.
    """

    failure_threshold: int = 5
    recovery_timeout: float = 60.0
    half_open_max_calls: int = 1
    success_threshold: int = 1
    failure_rate_threshold: float | None = None
    window_size: int = 100
    minimum_calls: int = 20
    slow_call_duration: float | None = None
    probe_delay: float = 1.0

    def __post_init__(self) -> None:
        _require_int("failure_threshold", self.failure_threshold, 1)
        _require_int("half_open_max_calls", self.half_open_max_calls, 1)
        _require_int("success_threshold", self.success_threshold, 1)
        _require_int("window_size", self.window_size, 1)
        _require_int("minimum_calls", self.minimum_calls, 1)
        if self.minimum_calls > self.window_size:
            msg = (
                f"BreakerConfig.minimum_calls must be <= window_size "
                f"({self.window_size}), got {self.minimum_calls!r}"
            )
            raise ValueError(msg)
        if not _is_real(self.recovery_timeout) or self.recovery_timeout <= 0:
            msg = (
                "BreakerConfig.recovery_timeout must be a finite number > 0, "
                f"got {self.recovery_timeout!r}"
            )
            raise ValueError(msg)
        rate = self.failure_rate_threshold
        if rate is not None and not (_is_real(rate) and 0 < rate <= 1):
            msg = f"BreakerConfig.failure_rate_threshold must be None or in (0, 1], got {rate!r}"
            raise ValueError(msg)
        slow = self.slow_call_duration
        if slow is not None and not (_is_real(slow) and slow > 0):
            msg = (
                "BreakerConfig.slow_call_duration must be None or a finite number > 0, "
                f"got {slow!r}"
            )
            raise ValueError(msg)
        if not _is_real(self.probe_delay) or self.probe_delay < 0:
            msg = (
                f"BreakerConfig.probe_delay must be a finite number >= 0, got {self.probe_delay!r}"
            )
            raise ValueError(msg)

    @property
    def probe_policy(self) -> ProbePolicy:
        """When to probe the backend while OPEN: from `probe_delay` up to the recovery timeout."""
        return ProbePolicy(first_delay=self.probe_delay, max_delay=self.recovery_timeout)
