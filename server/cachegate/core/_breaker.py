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
the breaker (the pool's prober, on the schedule of `cachegate.core._probe`) saw
the backend answer; the HALF_OPEN trial calls still decide whether to close, so
a backend that answers a PING but fails real calls opens the breaker again. A
forced-open breaker ignores probes.

Operators can pin the breaker with `CircuitBreaker.force_open` /
`CircuitBreaker.force_closed` and release it with `CircuitBreaker.reset`.
"""

from __future__ import annotations

import contextlib
import enum
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from cachegate.core._probe import ProbePolicy

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


class CircuitState(enum.Enum):
    """The three states of a circuit breaker."""

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


class CircuitOpenError(ConnectionError):
    """
    Raised by `CircuitBreaker.acquire` when the breaker rejects a call.

    It subclasses the builtin `ConnectionError` so that legacy
    ``except ConnectionError:`` code keeps treating a rejected call like the
    outage that caused it.

    Attributes:
        name: The name of the breaker that rejected the call.
        state: `CircuitState.OPEN`, or `CircuitState.HALF_OPEN` when all
            probe slots are taken.
        retry_after: Seconds until the breaker lets a probe through. While
            OPEN that is the time left of the recovery timeout; while an
            operator forces it open, the configured ``recovery_timeout`` (we
            cannot know when the operator will release it, so we hint at the
            normal back-off). While HALF_OPEN it is ``0.0``: a slot frees up
            as soon as the in-flight probe finishes, which we cannot predict.
        forced: True when an operator forced the breaker open: no wait ends
            it, only the operator's reset, so ``retry_after`` is no promise
            and callers should not be told to retry after it.
    """

    name: str
    state: CircuitState
    retry_after: float
    forced: bool

    def __init__(
        self, name: str, state: CircuitState, retry_after: float, forced: bool = False
    ) -> None:
        # OSError interprets 2+ constructor args as (errno, strerror, ...), so
        # we pass exactly one: the message.
        if forced:
            message = (
                f"circuit breaker {name!r} was forced open by an operator; "
                "calls are refused until an operator resets it"
            )
        else:
            message = f"circuit breaker {name!r} is {state.value}; retry after {retry_after:.3f}s"
        super().__init__(message)
        self.name = name
        self.state = state
        self.retry_after = retry_after
        self.forced = forced

    def __reduce__(
        self,
    ) -> tuple[type[CircuitOpenError], tuple[str, CircuitState, float, bool]]:
        # The default reduction would call cls(message), which does not match
        # our signature; without this the error can't cross process borders.
        return type(self), (self.name, self.state, self.retry_after, self.forced)


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


StateListener: TypeAlias = Callable[[CircuitState, CircuitState], None]
"""Called with ``(old, new)`` once per state change, outside the breaker's lock."""

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
        "_clock",
        "_config",
        "_consecutive_failures",
        "_dispatching",
        "_failures_total",
        "_forced",
        "_generation",
        "_listeners",
        "_lock",
        "_name",
        "_opened_at",
        "_opened_total",
        "_pending",
        "_permit",
        "_probe_successes",
        "_probes_in_flight",
        "_rejected_total",
        "_state",
        "_successes_total",
        "_transitions_total",
        "_window",
        "_window_failures",
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

        self._state = CircuitState.CLOSED
        self._forced = False
        self._generation = 0
        # Permits are immutable and identical within a generation, so we hand
        # out one shared instance instead of allocating on the hot path.
        self._permit = Permit(generation=0, probe=False)
        self._opened_at = 0.0
        self._consecutive_failures = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        # Count-based sliding window of "was it a failure?", only fed when
        # the rate rule is enabled. The failure count is kept incrementally so
        # that evaluating the rate is O(1).
        self._window: deque[bool] = deque(maxlen=config.window_size)
        self._window_failures = 0

        self._opened_total = 0
        self._transitions_total = 0
        self._rejected_total = 0
        self._successes_total = 0
        self._failures_total = 0

        # Copy-on-write tuple: a transition captures the listeners registered
        # at that moment without copying.
        self._listeners: tuple[StateListener, ...] = ()
        # Transitions waiting to be announced, and whether some thread is
        # currently announcing them; see _dispatch().
        self._pending: deque[tuple[CircuitState, CircuitState, tuple[StateListener, ...]]] = deque()
        self._dispatching = False

    def __repr__(self) -> str:
        # No lazy OPEN -> HALF_OPEN here: a repr (e.g. in a debugger) must not
        # fire listeners. It shows the stored state.
        with self._lock:
            state = self._state
            forced = self._forced
        return (
            f"CircuitBreaker(name={self._name!r}, state={state.value!r}, "
            f"{'forced=True, ' if forced else ''}config={self._config!r})"
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
            state = self._state
        if notify:
            self._dispatch()
        return state

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
        forced = False
        with self._lock:
            now = self._clock()
            notify = self._refresh_locked(now)
            state = self._state
            if state is CircuitState.CLOSED:
                permit: Permit | None = self._permit
            elif (
                state is CircuitState.HALF_OPEN
                and self._probes_in_flight < self._config.half_open_max_calls
            ):
                self._probes_in_flight += 1
                permit = self._permit
            else:
                self._rejected_total += 1
                permit = None
                retry_after = self._retry_after_locked(now)
                forced = self._forced
        if notify:
            self._dispatch()
        if permit is None:
            raise CircuitOpenError(self._name, state, retry_after, forced)
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
            notify = self._apply_locked(permit, outcome, failed)
        if notify:
            self._dispatch()

    def retry_after(self) -> float:
        """
        Seconds until the breaker lets a probe through: the time left of the
        recovery timeout when OPEN (``recovery_timeout`` while forced open),
        ``0.0`` otherwise.
        """
        with self._lock:
            now = self._clock()
            notify = self._refresh_locked(now)
            retry_after = self._retry_after_locked(now)
        if notify:
            self._dispatch()
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
            snap = BreakerSnapshot(
                state=self._state,
                consecutive_failures=self._consecutive_failures,
                retry_after=self._retry_after_locked(now),
                opened_total=self._opened_total,
                transitions_total=self._transitions_total,
                rejected_total=self._rejected_total,
                successes_total=self._successes_total,
                failures_total=self._failures_total,
                forced=self._forced,
            )
        if notify:
            self._dispatch()
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
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: StateListener) -> None:
        """
        Stop calling *listener* (its first registration).

        Raises:
            ValueError: if *listener* isn't registered (like `list.remove`).
        """
        with self._lock:
            listeners = list(self._listeners)
            try:
                listeners.remove(listener)
            except ValueError:
                msg = f"{listener!r} is not a registered listener of {self._name!r}"
                raise ValueError(msg) from None
            self._listeners = tuple(listeners)

    @property
    def waiting(self) -> bool:
        """True while OPEN and not forced: a probe that succeeds would move it on."""
        with self._lock:
            return self._state is CircuitState.OPEN and not self._forced

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
            if self._state is not CircuitState.OPEN or self._forced:
                return False
            notify = self._enter_locked(CircuitState.HALF_OPEN, self._clock())
        if notify:
            self._dispatch()
        return True

    def force_open(self) -> None:
        """
        Operator control: go OPEN and stay there -- `acquire` always rejects
        -- until `force_closed` or `reset`.
        """
        with self._lock:
            self._forced = True
            notify = self._enter_locked(CircuitState.OPEN, self._clock())
        if notify:
            self._dispatch()

    def force_closed(self) -> None:
        """
        Operator control: go CLOSED and stay there until `reset`. Failures
        are still counted (totals and consecutive failures) but never open
        the breaker.
        """
        with self._lock:
            self._forced = True
            notify = self._enter_locked(CircuitState.CLOSED, self._clock())
        if notify:
            self._dispatch()

    def reset(self) -> None:
        """
        Back to a normal CLOSED breaker: forcing released, consecutive
        failures and the sliding window cleared. Totals are kept (they are
        monotonic metrics). Outcomes of calls in flight become stale.
        """
        with self._lock:
            self._forced = False
            notify = self._enter_locked(CircuitState.CLOSED, self._clock())
        if notify:
            self._dispatch()

    # -- Internals. Methods suffixed _locked require self._lock to be held. --

    def _retry_after_locked(self, now: float) -> float:
        if self._state is not CircuitState.OPEN:
            return 0.0
        timeout = self._config.recovery_timeout
        if self._forced:
            return timeout
        # Clamped so that a misbehaving (non-monotonic) clock can't produce
        # nonsense like negative waits or waits beyond the timeout.
        return min(timeout, max(0.0, self._opened_at + timeout - now))

    def _refresh_locked(self, now: float) -> bool:
        """Perform a due OPEN -> HALF_OPEN move. Returns whether to dispatch."""
        if (
            self._state is CircuitState.OPEN
            and not self._forced
            # The same sum as _retry_after_locked: with floats, `now - opened >= t`
            # and `opened + t - now <= 0` can disagree, and then an OPEN breaker
            # would report no wait left while refusing to half-open.
            and now >= self._opened_at + self._config.recovery_timeout
        ):
            return self._enter_locked(CircuitState.HALF_OPEN, now)
        return False

    def _enter_locked(self, new: CircuitState, now: float) -> bool:
        """
        Start a new generation in state *new* (which may be the current state,
        for operator actions). Returns whether a notification was queued.
        """
        old = self._state
        self._generation += 1
        self._permit = Permit(self._generation, probe=new is CircuitState.HALF_OPEN)
        # Probes of the previous generation are stale; their slots go with it.
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._window.clear()
        self._window_failures = 0
        if new is CircuitState.OPEN:
            self._opened_at = now
        elif new is CircuitState.CLOSED:
            self._consecutive_failures = 0

        if new is old:
            return False
        self._state = new
        self._transitions_total += 1
        if new is CircuitState.OPEN:
            self._opened_total += 1
        if not self._listeners:
            return False
        self._pending.append((old, new, self._listeners))
        return True

    def _apply_locked(self, permit: Permit, outcome: Outcome, failed: bool) -> bool:
        """
        Feed a current-generation outcome to the state machine. Returns
        whether to dispatch.
        """
        state = self._state
        if state is CircuitState.HALF_OPEN and permit.probe:
            # max(): a permit recorded twice must not free someone else's slot.
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
        if outcome is Outcome.IGNORED:
            return False
        if failed:
            self._consecutive_failures += 1
        else:
            self._consecutive_failures = 0

        if self._forced:
            # Forced closed: observe, never act. (Forced open hands out no
            # permits of its generation, so we don't get here for it.)
            return False

        if state is CircuitState.HALF_OPEN:
            if failed:
                # One failed probe is enough evidence: back off for a whole
                # fresh recovery timeout.
                return self._enter_locked(CircuitState.OPEN, self._clock())
            self._probe_successes += 1
            if self._probe_successes >= self._config.success_threshold:
                return self._enter_locked(CircuitState.CLOSED, self._clock())
            return False

        if state is CircuitState.CLOSED:
            if self._consecutive_failures >= self._config.failure_threshold:
                return self._enter_locked(CircuitState.OPEN, self._clock())
            rate = self._config.failure_rate_threshold
            if rate is not None:
                window = self._window
                if len(window) == window.maxlen and window[0]:
                    # The append below evicts this failure.
                    self._window_failures -= 1
                window.append(failed)
                self._window_failures += failed
                # The rate is re-evaluated after successes too: reaching
                # minimum_calls with a success can still reveal a high rate.
                calls = len(window)
                if calls >= self._config.minimum_calls and self._window_failures >= rate * calls:
                    return self._enter_locked(CircuitState.OPEN, self._clock())
        return False

    def _dispatch(self) -> None:
        """
        Announce queued transitions to their listeners, outside the lock.

        Only one thread announces at a time and it drains the queue in order,
        so listeners see transitions in the order they happened even when
        several threads trigger them concurrently. A listener that calls back
        into the breaker (even one that causes another transition) merely
        queues more work for the loop below instead of deadlocking or
        reordering.
        """
        with self._lock:
            if self._dispatching:
                return
            self._dispatching = True
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._dispatching = False
                        return
                    old, new, listeners = self._pending.popleft()
                for listener in listeners:
                    # A broken metrics hook must not take the breaker -- and
                    # with it every Redis call -- down, nor starve the
                    # listeners after it. The pure core does no logging, so
                    # the error is swallowed: a listener that wants its errors
                    # reported has to catch and report them itself.
                    with contextlib.suppress(Exception):
                        listener(old, new)
        except BaseException:
            # KeyboardInterrupt & co. propagate, but must not leave the flag
            # set: that would silence all future notifications. Whatever is
            # still queued goes out with the next transition.
            with self._lock:
                self._dispatching = False
            raise
