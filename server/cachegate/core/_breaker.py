"""
A pure, thread-safe circuit-breaker state machine.

The breaker guards the Redis pool, but it knows nothing about Redis, gRPC, I/O
or logging: it is a state machine fed with outcomes. It never runs the guarded
call itself. Callers follow a three-step protocol::

    permit = breaker.acquire()  # raises CircuitOpenError when rejected
    try:
        result = do_the_call()
    except OutageError:
        breaker.record(permit, Outcome.FAILURE)
        raise
    except BaseException:
        breaker.record(permit, Outcome.IGNORED)
        raise
    else:
        breaker.record(permit, Outcome.SUCCESS, elapsed=...)

Every permit must be recorded exactly once. A probe permit (granted in
half-open) that is never recorded keeps its probe slot forever, which wedges
the breaker in half-open; that is why ``Outcome.IGNORED`` exists.

States and transitions follow pybreaker/resilience4j::

    CLOSED --(N consecutive failures or failure rate)--> OPEN
    OPEN --(recovery_timeout elapsed, on next acquire()/state read)--> HALF_OPEN
    OPEN --(a background probe succeeded: probe_succeeded())--> HALF_OPEN
    HALF_OPEN --(success_threshold probe successes)--> CLOSED
    HALF_OPEN --(one probe failure)--> OPEN

The background probe is resilience4j's "automatic transition from OPEN to
HALF_OPEN", made conditional: the wait in OPEN ends early when someone outside
the breaker (the pool's prober, `cachegate.pool._prober`, on the schedule of
`cachegate.core._probe`) saw the backend answer; the HALF_OPEN trial calls still
decide whether to close, so a backend that answers a PING but fails real calls
opens the breaker again. A forced-open breaker ignores probes.

Operators can pin the breaker with `CircuitBreaker.force_open` /
`CircuitBreaker.force_closed` and release it with `CircuitBreaker.reset`.

Each state (the forced ones included) is an object of its own, in
`cachegate.core._breaker_states`; this module holds what outlives a state (the
lock, the clock, the counters) and makes the moves the states ask for. The
settings are in `cachegate.core._breaker_config`, the listeners in
`cachegate.core._breaker_listeners`, the view it gives of itself
(`CircuitBreaker.snapshot`) in `cachegate.core._breaker_snapshot`, the refusal in
`cachegate.core._errors`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cachegate.core._breaker_config import BreakerConfig
from cachegate.core._breaker_listeners import StateListener, TransitionAnnouncer
from cachegate.core._breaker_snapshot import BreakerSnapshot
from cachegate.core._breaker_states import (
    BreakerState,
    CircuitState,
    ClosedState,
    ForcedClosedState,
    ForcedOpenState,
    HalfOpenState,
    Outcome,
    Permit,
)
from cachegate.core._errors import CircuitOpenError

# The breaker's whole vocabulary is importable from here, as it was when it all
# lived in this module (the tests import it so).
__all__ = [
    "BreakerConfig",
    "BreakerSnapshot",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Outcome",
    "Permit",
    "StateListener",
]


# Frozen, so every breaker built without a config can share one instance.
_DEFAULT_CONFIG = BreakerConfig()


class CircuitBreaker:
    """
    A circuit breaker: ask for a permit, run the call, report the outcome.

    Thread-safe: all state lives behind one `threading.Lock`, and neither the
    guarded call nor any listener ever runs while it is held, so listeners
    may call back into the breaker.

    Args:
        config: Thresholds and timeouts.
        clock: A monotonic clock in seconds; injectable so tests can drive
            time by hand.
        name: Identifies the breaker in errors and reprs.
    """

    __slots__ = (
        # Metrics registries may hold breakers weakly.
        "__weakref__",
        "_announcer",
        "_clock",
        "_config",
        "_consecutive_failures",
        "_failures_total",
        "_generation",
        "_lock",
        "_name",
        "_opened_total",
        "_rejected_total",
        "_state",
        "_successes_total",
        "_transitions_total",
    )

    def __init__(
        self,
        config: BreakerConfig = _DEFAULT_CONFIG,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "redis",
    ) -> None:
        self._name = name
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._announcer = TransitionAnnouncer(name)

        self._generation = 0
        self._state: BreakerState = ClosedState(0, config, clock())
        # Failures in a row outlive a state: the snapshot shows them while OPEN,
        # and a forced-closed breaker keeps counting them.
        self._consecutive_failures = 0

        self._opened_total = 0
        self._transitions_total = 0
        self._rejected_total = 0
        self._successes_total = 0
        self._failures_total = 0

    def __repr__(self) -> str:
        # No lazy OPEN -> HALF_OPEN here: a repr (e.g. in a debugger) must not
        # fire listeners. It shows the stored state.
        with self._lock:
            state = self._state
        return (
            f"CircuitBreaker(name={self._name!r}, state={state.circuit.value!r}, "
            f"{'forced=True, ' if state.forced else ''}config={self._config!r})"
        )

    @property
    def name(self) -> str:
        """The breaker's name."""
        return self._name

    @property
    def config(self) -> BreakerConfig:
        """The breaker's configuration."""
        return self._config

    @property
    def state(self) -> CircuitState:
        """
        The current state.

        Reading it moves OPEN -> HALF_OPEN (and notifies listeners) once the
        recovery timeout has elapsed, so health checks observe half-open
        without having to attempt a call.
        """
        with self._lock:
            notify = self._refresh_locked(self._clock())
            circuit = self._state.circuit
        if notify:
            self._announcer.announce()
        return circuit

    def acquire(self) -> Permit:
        """
        Ask for permission to run one guarded call.

        Returns:
            A permit to hand back to `record` exactly once.

        Raises:
            CircuitOpenError: when OPEN (before the recovery timeout has
                elapsed, or forced), or HALF_OPEN with all probe slots taken.
        """
        retry_after = 0.0
        with self._lock:
            now = self._clock()
            notify = self._refresh_locked(now)
            state = self._state
            permit = state.admit()
            if permit is None:
                self._rejected_total += 1
                retry_after = state.retry_after(now)
        if notify:
            self._announcer.announce()
        if permit is None:
            raise CircuitOpenError(self._name, state.circuit, retry_after, state.forced)
        return permit

    def record(self, permit: Permit, outcome: Outcome, elapsed: float | None = None) -> None:
        """
        Report how the call guarded by *permit* ended.

        Args:
            permit: The permit returned by `acquire`.
            outcome: What the call told us about the backend.
            elapsed: The call's duration in seconds; with
                ``slow_call_duration`` configured, a SUCCESS that took longer
                counts as a failure. Never validated: raising here would leak
                the probe slot the permit holds.
        """
        slow_limit = self._config.slow_call_duration
        failed = outcome is Outcome.FAILURE or (
            outcome is Outcome.SUCCESS
            and slow_limit is not None
            and elapsed is not None
            and elapsed > slow_limit
        )
        with self._lock:
            if outcome is not Outcome.IGNORED:
                if failed:
                    self._failures_total += 1
                else:
                    self._successes_total += 1
            # Stale outcomes stop at the totals: they describe a past the
            # state machine has already moved on from.
            if permit.generation != self._generation:
                return
            if outcome is not Outcome.IGNORED:
                self._consecutive_failures = self._consecutive_failures + 1 if failed else 0
            move = self._state.settle(outcome, failed, self._consecutive_failures)
            if move is None:
                return
            notify = self._enter_locked(move, self._clock())
        if notify:
            self._announcer.announce()

    def retry_after(self) -> float:
        """
        Seconds until the breaker lets a probe through: the time left of the
        recovery timeout when OPEN (``recovery_timeout`` while forced open),
        ``0.0`` otherwise.
        """
        with self._lock:
            now = self._clock()
            notify = self._refresh_locked(now)
            retry_after = self._state.retry_after(now)
        if notify:
            self._announcer.announce()
        return retry_after

    def snapshot(self) -> BreakerSnapshot:
        """
        A consistent view of state and counters. Like `state`, it performs a
        due OPEN -> HALF_OPEN move first, so ``state`` and ``retry_after``
        agree.
        """
        with self._lock:
            now = self._clock()
            notify = self._refresh_locked(now)
            state = self._state
            snap = BreakerSnapshot(
                state=state.circuit,
                consecutive_failures=self._consecutive_failures,
                retry_after=state.retry_after(now),
                opened_total=self._opened_total,
                transitions_total=self._transitions_total,
                rejected_total=self._rejected_total,
                successes_total=self._successes_total,
                failures_total=self._failures_total,
                forced=state.forced,
            )
        if notify:
            self._announcer.announce()
        return snap

    def add_listener(self, listener: StateListener) -> None:
        """
        Call *listener* with ``(old, new)`` on every state change.

        Listeners run outside the lock, in registration order, once per
        transition, and transitions are announced in the order they happened
        even across threads. The announcement may therefore run on whichever
        thread is already announcing, slightly after the triggering call
        returned. Registering the same listener twice calls it twice.
        """
        self._announcer.add(listener)

    def remove_listener(self, listener: StateListener) -> None:
        """
        Stop calling *listener* (its first registration).

        Raises:
            ValueError: if *listener* isn't registered (like `list.remove`).
        """
        self._announcer.remove(listener)

    @property
    def waiting(self) -> bool:
        """True while OPEN and not forced: a probe that succeeds would move it on."""
        with self._lock:
            return self._state.waiting

    def probe_succeeded(self) -> bool:
        """
        A background probe (outside the breaker: no permit, no user call) found the
        backend answering. An OPEN breaker moves to HALF_OPEN now instead of at the
        end of its recovery timeout; its trial calls then decide between CLOSED and
        OPEN as usual. A forced-open breaker, or one not OPEN, is left as it is.

        Returns:
            Whether the breaker moved to HALF_OPEN.
        """
        with self._lock:
            if not self._state.waiting:
                return False
            notify = self._enter_locked(HalfOpenState, self._clock())
        if notify:
            self._announcer.announce()
        return True

    def force_open(self) -> None:
        """
        Operator control: go OPEN and stay there -- `acquire` always rejects
        -- until `force_closed` or `reset`.
        """
        self._operator_move(ForcedOpenState)

    def force_closed(self) -> None:
        """
        Operator control: go CLOSED and stay there until `reset`. Failures
        are still counted (totals and consecutive failures) but never open
        the breaker.
        """
        self._operator_move(ForcedClosedState)

    def reset(self) -> None:
        """
        Back to a normal CLOSED breaker: forcing released, consecutive
        failures and the sliding window cleared. Totals are kept (they are
        monotonic metrics). Outcomes of calls in flight become stale.
        """
        self._operator_move(ClosedState)

    # -- Internals. Methods suffixed _locked require self._lock to be held. --

    def _operator_move(self, kind: type[BreakerState]) -> None:
        with self._lock:
            notify = self._enter_locked(kind, self._clock())
        if notify:
            self._announcer.announce()

    def _refresh_locked(self, now: float) -> bool:
        """Perform a due OPEN -> HALF_OPEN move. Returns whether to announce."""
        if now >= self._state.half_open_at:
            return self._enter_locked(HalfOpenState, now)
        return False

    def _enter_locked(self, kind: type[BreakerState], now: float) -> bool:
        """
        Start a new generation in a fresh state of *kind* (which may report the
        current state, for operator actions). Returns whether a transition was
        queued for the listeners.
        """
        old = self._state.circuit
        self._generation += 1
        # The old state object, and with it its probe slots, window and
        # permits, is dropped: outcomes of its calls are stale from now on.
        self._state = kind(self._generation, self._config, now)
        new = self._state.circuit
        if new is CircuitState.CLOSED:
            self._consecutive_failures = 0
        if new is old:
            return False
        self._transitions_total += 1
        if new is CircuitState.OPEN:
            self._opened_total += 1
        return self._announcer.queue(old, new)
