"""What a circuit breaker shows of itself: `BreakerSnapshot`, for health checks and metrics.

A record only: `CircuitBreaker.snapshot` (in `cachegate.core._breaker`) takes it under
the breaker's lock, so its fields agree with one another.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachegate.core._breaker_states import CircuitState

__all__ = ["BreakerSnapshot"]


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """
    A consistent point-in-time view of a `CircuitBreaker`, for health checks
    and metrics. All ``*_total`` counters only ever grow.

    Attributes:
        state: The current state.
        consecutive_failures: Failures in a row seen by the state machine
            (stale outcomes excluded); cleared on success and when closing.
        retry_after: Seconds until half-open when OPEN (``recovery_timeout``
            while forced open), else ``0.0``.
        opened_total: Times the breaker went to OPEN.
        transitions_total: All state changes.
        rejected_total: Calls rejected by `CircuitBreaker.acquire`.
        successes_total: Recorded successes, stale ones included.
        failures_total: Recorded failures, stale ones included. Slow
            successes count here, because the breaker treats them as failures.
        forced: True while an operator pins the state (`force_open` /
            `force_closed`), until `reset`.
    """

    state: CircuitState
    consecutive_failures: int
    retry_after: float
    opened_total: int
    transitions_total: int
    rejected_total: int
    successes_total: int
    failures_total: int
    forced: bool
