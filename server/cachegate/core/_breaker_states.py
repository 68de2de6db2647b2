"""
The circuit breaker's states, one small object each.

As in pybreaker (``CircuitBreakerState`` subclasses) and resilience4j (the
state classes inside ``CircuitBreakerStateMachine``), each state is an object
that answers for itself: may a call run (`BreakerState.admit`), what does an
outcome mean here (`BreakerState.settle`), how long until a probe may pass
(`BreakerState.retry_after`). A state object lives for one *generation*: the
breaker builds a fresh one on every transition and every operator action, so
what a state counts (the failure window, probes in flight) starts afresh each
time without anyone clearing it.

States never change the breaker themselves: `settle` names the state to move
to and `CircuitBreaker` makes the move, under its lock, and announces it.
Every method here is called with that lock held; none blocks or calls out.

The forced states are states of their own, not a flag beside the others:
`ForcedOpenState` reports OPEN and refuses everything, `ForcedClosedState`
reports CLOSED and admits everything; neither is moved by outcomes, time or
probes, only by an operator.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from cachegate.core._breaker_config import BreakerConfig

__all__ = [
    "BreakerState",
    "CircuitState",
    "ClosedState",
    "FailureWindow",
    "ForcedClosedState",
    "ForcedOpenState",
    "HalfOpenState",
    "OpenState",
    "Outcome",
    "Permit",
]


class CircuitState(enum.Enum):
    """The three states of a circuit breaker, as callers see them."""

    CLOSED = "closed"
    """Calls flow; outcomes are watched for an outage."""
    OPEN = "open"
    """Calls are rejected until the recovery timeout has elapsed."""
    HALF_OPEN = "half-open"
    """A limited number of probe calls decide between closing and reopening."""


class Outcome(enum.Enum):
    """What a guarded call told us about the health of the backend."""

    SUCCESS = "success"
    """
    The backend answered. An error *reply* (for Redis: ``WRONGTYPE`` and
    friends) is a success for the breaker: the server is up.
    """
    FAILURE = "failure"
    """An outage-class error: connection refused/reset, timeout."""
    IGNORED = "ignored"
    """
    The call ended without telling anything about the backend (cancelled,
    pool exhausted, caller's bug). Frees a probe slot, changes nothing else.
    """


@dataclass(frozen=True, slots=True)
class Permit:
    """
    Permission to run one guarded call; hand it back to
    `CircuitBreaker.record` exactly once.

    Attributes:
        generation: The breaker's generation when the permit was granted. It
            is bumped on every state change and every operator action. An
            outcome recorded with an older generation is counted in the
            totals but does not drive the state machine: a slow call started
            while CLOSED that fails after the breaker already went
            OPEN -> HALF_OPEN must not reopen it.
        probe: True when granted in HALF_OPEN; it holds one of the probe
            slots until recorded.
    """

    generation: int
    probe: bool


class FailureWindow:
    """
    The failure-rate rule: a count-based sliding window of "was it a failure?"
    over the last ``window_size`` calls. The failure count is kept as calls
    come and go, so that evaluating the rate is O(1).
    """

    __slots__ = ("_calls", "_failures", "_minimum_calls", "_rate")

    def __init__(self, config: BreakerConfig, rate: float) -> None:
        self._calls: deque[bool] = deque(maxlen=config.window_size)
        self._failures = 0
        self._minimum_calls = config.minimum_calls
        self._rate = rate

    def add(self, failed: bool) -> bool:
        """Count one call; whether the failure rate has now reached the threshold."""
        calls = self._calls
        if len(calls) == calls.maxlen and calls[0]:
            # The append below evicts this failure.
            self._failures -= 1
        calls.append(failed)
        self._failures += failed
        # Evaluated after successes too: reaching minimum_calls with a success
        # can still reveal a high rate.
        count = len(calls)
        return count >= self._minimum_calls and self._failures >= self._rate * count


class BreakerState:
    """
    One generation of one state. Subclasses say what each question means in
    their state; the breaker asks them with its lock held.

    Class attributes:
        circuit: The `CircuitState` callers see.
        forced: True for the states only an operator enters and leaves.
        waiting: True when a successful background probe should end the state
            early (only an unforced OPEN).

    Attributes:
        half_open_at: The clock reading from which time alone moves the breaker
            to HALF_OPEN; infinity in every state but an unforced OPEN.
    """

    __slots__ = ()

    circuit: ClassVar[CircuitState]
    forced: ClassVar[bool] = False
    waiting: ClassVar[bool] = False
    half_open_at: float = math.inf

    def __init__(self, generation: int, config: BreakerConfig, now: float) -> None:
        """Enter the state as generation *generation*, at clock reading *now*."""

    def admit(self) -> Permit | None:
        """A permit for one call, or None to reject it."""
        raise NotImplementedError

    def settle(
        self, outcome: Outcome, failed: bool, failures_in_a_row: int
    ) -> type[BreakerState] | None:
        """
        Take the outcome of a call admitted in this generation; the state to
        move to, or None to stay.

        Args:
            outcome: As recorded by the caller.
            failed: Whether it counts as a failure (FAILURE, or a slow SUCCESS).
            failures_in_a_row: The breaker's consecutive failures, this one included.
        """
        raise NotImplementedError

    def retry_after(self, now: float) -> float:
        """Seconds until a probe may pass; 0.0 unless the state is some OPEN."""
        return 0.0


class ClosedState(BreakerState):
    """Calls flow; enough failures in a row, or a high failure rate, open it."""

    __slots__ = ("_failure_threshold", "_permit", "_window")
    circuit = CircuitState.CLOSED

    def __init__(self, generation: int, config: BreakerConfig, now: float) -> None:
        # Permits are immutable and identical within a generation, so every
        # call of it shares one instead of allocating on the hot path.
        self._permit = Permit(generation, probe=False)
        self._failure_threshold = config.failure_threshold
        rate = config.failure_rate_threshold
        self._window = None if rate is None else FailureWindow(config, rate)

    def admit(self) -> Permit | None:
        return self._permit

    def settle(
        self, outcome: Outcome, failed: bool, failures_in_a_row: int
    ) -> type[BreakerState] | None:
        if outcome is Outcome.IGNORED:
            return None
        if failures_in_a_row >= self._failure_threshold:
            return OpenState
        window = self._window
        if window is not None and window.add(failed):
            return OpenState
        return None


class OpenState(BreakerState):
    """
    Calls are refused until the recovery timeout has passed (then the next
    look at the breaker half-opens it) or a background probe saw the backend
    answer (`CircuitBreaker.probe_succeeded`).
    """

    __slots__ = ("_recovery_timeout", "half_open_at")
    circuit = CircuitState.OPEN
    waiting = True

    def __init__(self, generation: int, config: BreakerConfig, now: float) -> None:
        self._recovery_timeout = config.recovery_timeout
        # One sum for both the move and the wait reported: with floats,
        # `now - opened >= t` and `opened + t - now <= 0` can disagree, and then
        # an OPEN breaker would report no wait left while refusing to half-open.
        self.half_open_at = now + config.recovery_timeout

    def admit(self) -> Permit | None:
        return None

    def settle(
        self, outcome: Outcome, failed: bool, failures_in_a_row: int
    ) -> type[BreakerState] | None:
        # Unreachable: this generation admits no call.
        return None

    def retry_after(self, now: float) -> float:
        # Clamped so that a misbehaving (non-monotonic) clock can't produce
        # nonsense like negative waits or waits beyond the timeout.
        return min(self._recovery_timeout, max(0.0, self.half_open_at - now))


class HalfOpenState(BreakerState):
    """
    A few probe calls at once; one failure reopens it (for a whole fresh
    recovery timeout), ``success_threshold`` successes close it.
    """

    __slots__ = ("_in_flight", "_max_in_flight", "_permit", "_successes", "_successes_needed")
    circuit = CircuitState.HALF_OPEN

    def __init__(self, generation: int, config: BreakerConfig, now: float) -> None:
        self._permit = Permit(generation, probe=True)
        self._max_in_flight = config.half_open_max_calls
        self._successes_needed = config.success_threshold
        self._in_flight = 0
        self._successes = 0

    def admit(self) -> Permit | None:
        if self._in_flight >= self._max_in_flight:
            return None
        self._in_flight += 1
        return self._permit

    def settle(
        self, outcome: Outcome, failed: bool, failures_in_a_row: int
    ) -> type[BreakerState] | None:
        # max(): a permit recorded twice must not free someone else's slot.
        self._in_flight = max(0, self._in_flight - 1)
        if outcome is Outcome.IGNORED:
            return None
        if failed:
            return OpenState
        self._successes += 1
        return ClosedState if self._successes >= self._successes_needed else None


class ForcedOpenState(BreakerState):
    """
    An operator pinned it OPEN: every call is refused and no wait or probe
    ends it, only the operator (`force_closed`, `reset`).
    """

    __slots__ = ("_recovery_timeout",)
    circuit = CircuitState.OPEN
    forced = True

    def __init__(self, generation: int, config: BreakerConfig, now: float) -> None:
        self._recovery_timeout = config.recovery_timeout

    def admit(self) -> Permit | None:
        return None

    def settle(
        self, outcome: Outcome, failed: bool, failures_in_a_row: int
    ) -> type[BreakerState] | None:
        # Unreachable: this generation admits no call.
        return None

    def retry_after(self, now: float) -> float:
        # We cannot know when the operator lets go: hint at the normal back-off.
        return self._recovery_timeout


class ForcedClosedState(BreakerState):
    """
    An operator pinned it CLOSED: every call runs; failures are still counted
    (the breaker's totals and failures in a row) but never open it.
    """

    __slots__ = ("_permit",)
    circuit = CircuitState.CLOSED
    forced = True

    def __init__(self, generation: int, config: BreakerConfig, now: float) -> None:
        self._permit = Permit(generation, probe=False)

    def admit(self) -> Permit | None:
        return self._permit

    def settle(
        self, outcome: Outcome, failed: bool, failures_in_a_row: int
    ) -> type[BreakerState] | None:
        return None
