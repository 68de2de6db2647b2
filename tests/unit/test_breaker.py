"""Tests for the pure circuit-breaker state machine, driven by a fake clock."""

from __future__ import annotations

import itertools
import math
import pickle
import random
import sys
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachegate.core._breaker import (
    BreakerConfig,
    BreakerSnapshot,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Outcome,
    Permit,
)

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN


class FakeClock:
    """A monotonic clock that only moves when told to. Thread-safe."""

    def __init__(self, now: float = 1000.0) -> None:
        self._now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Recorder:
    """A listener that remembers every (old, new) it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[CircuitState, CircuitState]] = []

    def __call__(self, old: CircuitState, new: CircuitState) -> None:
        self.calls.append((old, new))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **config: object) -> CircuitBreaker:
    return CircuitBreaker(BreakerConfig(**config), clock=clock)  # type: ignore[arg-type]


def call(breaker: CircuitBreaker, outcome: Outcome, elapsed: float | None = None) -> Permit:
    """Run one guarded call end to end."""
    permit = breaker.acquire()
    breaker.record(permit, outcome, elapsed)
    return permit


def fail_times(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        call(breaker, Outcome.FAILURE)


def open_then_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail_times(breaker, breaker.config.failure_threshold)
    assert breaker.state is OPEN
    clock.advance(breaker.config.recovery_timeout)
    assert breaker.state is HALF_OPEN


# -- CLOSED ------------------------------------------------------------------


def test_starts_closed_and_grants_plain_permits(clock: FakeClock) -> None:
    breaker = make(clock)

    permit = breaker.acquire()

    assert breaker.state is CLOSED
    assert permit.probe is False


def test_opens_exactly_at_threshold(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3)

    fail_times(breaker, 2)

    assert breaker.state is CLOSED
    assert breaker.snapshot().consecutive_failures == 2

    fail_times(breaker, 1)

    assert breaker.state is OPEN


def test_success_resets_consecutive_failures(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3)

    fail_times(breaker, 2)
    call(breaker, Outcome.SUCCESS)
    fail_times(breaker, 2)

    assert breaker.state is CLOSED
    assert breaker.snapshot().consecutive_failures == 2

    fail_times(breaker, 1)

    assert breaker.state is OPEN


def test_ignored_neither_resets_nor_counts_in_closed(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3)

    fail_times(breaker, 2)
    call(breaker, Outcome.IGNORED)

    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures) == (CLOSED, 2)
    assert (snap.successes_total, snap.failures_total) == (0, 2)

    fail_times(breaker, 1)

    assert breaker.state is OPEN


# -- OPEN --------------------------------------------------------------------


def test_open_rejects_with_decreasing_retry_after(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout=60.0)
    fail_times(breaker, 1)

    with pytest.raises(CircuitOpenError) as first:
        breaker.acquire()
    clock.advance(15.0)
    with pytest.raises(CircuitOpenError) as second:
        breaker.acquire()

    assert first.value.retry_after == pytest.approx(60.0)
    assert second.value.retry_after == pytest.approx(45.0)
    assert first.value.state is OPEN
    assert first.value.name == "redis"
    assert breaker.retry_after() == pytest.approx(45.0)
    assert breaker.snapshot().retry_after == pytest.approx(45.0)
    assert breaker.snapshot().rejected_total == 2


def test_open_to_half_open_via_acquire(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout=60.0)
    recorder = Recorder()
    breaker.add_listener(recorder)
    fail_times(breaker, 1)

    clock.advance(59.999)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    clock.advance(0.001)
    permit = breaker.acquire()

    assert permit.probe is True
    assert recorder.calls == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]  # announced by acquire()
    assert breaker.snapshot().state is HALF_OPEN


def test_open_to_half_open_via_state_property_notifies(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout=60.0)
    recorder = Recorder()
    breaker.add_listener(recorder)
    fail_times(breaker, 1)
    clock.advance(60.0)

    assert breaker.state is HALF_OPEN
    assert breaker.state is HALF_OPEN  # a second read does not transition again
    assert recorder.calls == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]
    assert breaker.retry_after() == 0.0


def test_open_rejection_does_not_count_as_outcome(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    fail_times(breaker, 1)

    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            breaker.acquire()

    snap = breaker.snapshot()
    assert (snap.rejected_total, snap.failures_total, snap.successes_total) == (5, 1, 0)


# -- HALF_OPEN ---------------------------------------------------------------


def test_half_open_allows_one_probe_by_default(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    open_then_half_open(breaker, clock)

    probe = breaker.acquire()
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.acquire()

    assert probe.probe is True
    assert rejected.value.state is HALF_OPEN
    assert rejected.value.retry_after == 0.0


def test_half_open_max_calls_two(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, half_open_max_calls=2)
    open_then_half_open(breaker, clock)

    first, second = breaker.acquire(), breaker.acquire()
    with pytest.raises(CircuitOpenError):
        breaker.acquire()

    assert first.probe
    assert second.probe


def test_probe_success_closes(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)
    recorder = Recorder()
    breaker.add_listener(recorder)
    open_then_half_open(breaker, clock)

    call(breaker, Outcome.SUCCESS)

    assert breaker.state is CLOSED
    assert breaker.snapshot().consecutive_failures == 0
    assert breaker.acquire().probe is False
    assert recorder.calls == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    # Closing starts from scratch: one failure is not enough to reopen.
    fail_times(breaker, 1)
    assert breaker.state is CLOSED


def test_probe_failure_reopens_with_fresh_timeout(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout=60.0)
    open_then_half_open(breaker, clock)
    probe = breaker.acquire()
    clock.advance(5.0)  # the probe takes its time before failing

    breaker.record(probe, Outcome.FAILURE)

    assert breaker.state is OPEN
    assert breaker.retry_after() == pytest.approx(60.0)
    assert breaker.snapshot().opened_total == 2
    clock.advance(59.0)
    assert breaker.state is OPEN
    clock.advance(1.0)
    assert breaker.state is HALF_OPEN


def test_success_threshold_above_one(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, success_threshold=3)
    open_then_half_open(breaker, clock)

    call(breaker, Outcome.SUCCESS)
    call(breaker, Outcome.SUCCESS)
    assert breaker.state is HALF_OPEN

    call(breaker, Outcome.SUCCESS)
    assert breaker.state is CLOSED


def test_success_threshold_resets_after_reopen(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, success_threshold=2)
    open_then_half_open(breaker, clock)
    call(breaker, Outcome.SUCCESS)
    call(breaker, Outcome.FAILURE)
    assert breaker.state is OPEN
    clock.advance(breaker.config.recovery_timeout)

    call(breaker, Outcome.SUCCESS)  # the success before the reopening doesn't count

    assert breaker.state is HALF_OPEN


def test_ignored_frees_probe_slot_and_changes_nothing_else(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    open_then_half_open(breaker, clock)
    probe = breaker.acquire()
    with pytest.raises(CircuitOpenError):
        breaker.acquire()

    breaker.record(probe, Outcome.IGNORED)

    assert breaker.state is HALF_OPEN
    assert breaker.acquire().probe is True


# -- Generations -------------------------------------------------------------


def test_stale_failure_does_not_reopen_half_open(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)
    slow = breaker.acquire()  # a slow call starts while CLOSED
    open_then_half_open(breaker, clock)

    breaker.record(slow, Outcome.FAILURE)

    assert breaker.state is HALF_OPEN
    assert breaker.snapshot().failures_total == 3  # still counted in the totals


def test_stale_success_does_not_close_open(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)
    slow = breaker.acquire()
    fail_times(breaker, 2)

    breaker.record(slow, Outcome.SUCCESS)

    assert breaker.state is OPEN
    assert breaker.snapshot().successes_total == 1


def test_stale_success_does_not_close_half_open(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)
    slow = breaker.acquire()
    open_then_half_open(breaker, clock)

    breaker.record(slow, Outcome.SUCCESS)

    assert breaker.state is HALF_OPEN


def test_stale_probe_does_not_free_a_current_probe_slot(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, half_open_max_calls=2)
    open_then_half_open(breaker, clock)
    old_probe, failing_probe = breaker.acquire(), breaker.acquire()
    breaker.record(failing_probe, Outcome.FAILURE)  # reopens: a new generation
    clock.advance(breaker.config.recovery_timeout)
    breaker.acquire(), breaker.acquire()  # both current slots taken

    breaker.record(old_probe, Outcome.IGNORED)

    with pytest.raises(CircuitOpenError):
        breaker.acquire()


def test_permits_carry_generation(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    before = breaker.acquire()
    open_then_half_open(breaker, clock)

    probe = breaker.acquire()

    assert probe.generation > before.generation


# -- Failure-rate and slow-call rules ------------------------------------------


def test_failure_rate_waits_for_minimum_calls(clock: FakeClock) -> None:
    breaker = make(
        clock,
        failure_threshold=100,
        failure_rate_threshold=0.5,
        window_size=10,
        minimum_calls=4,
    )

    fail_times(breaker, 3)  # 100% failures, but only 3 calls
    assert breaker.state is CLOSED

    call(breaker, Outcome.SUCCESS)  # 3/4 = 75% >= 50%, evaluated on a success too
    assert breaker.state is OPEN


def test_failure_rate_below_threshold_stays_closed(clock: FakeClock) -> None:
    breaker = make(
        clock,
        failure_threshold=100,
        failure_rate_threshold=0.5,
        window_size=10,
        minimum_calls=4,
    )

    for _ in range(20):
        call(breaker, Outcome.SUCCESS)
        call(breaker, Outcome.SUCCESS)
        call(breaker, Outcome.FAILURE)  # 1/3 < 50%

    assert breaker.state is CLOSED


def test_failure_rate_at_threshold_opens(clock: FakeClock) -> None:
    breaker = make(
        clock, failure_threshold=100, failure_rate_threshold=0.5, window_size=4, minimum_calls=4
    )

    for outcome in (Outcome.SUCCESS, Outcome.FAILURE, Outcome.SUCCESS):
        call(breaker, outcome)
    assert breaker.state is CLOSED
    call(breaker, Outcome.FAILURE)  # 2/4 == 50%

    assert breaker.state is OPEN


def test_failure_rate_window_slides(clock: FakeClock) -> None:
    breaker = make(
        clock, failure_threshold=100, failure_rate_threshold=0.75, window_size=4, minimum_calls=4
    )
    for outcome in [Outcome.FAILURE] * 2 + [Outcome.SUCCESS] * 4:
        call(breaker, outcome)  # the two failures have slid out of the window

    fail_times(breaker, 2)  # window: S S F F = 50%
    assert breaker.state is CLOSED

    fail_times(breaker, 1)  # window: S F F F = 75%
    assert breaker.state is OPEN


def test_failure_rate_window_cleared_on_close(clock: FakeClock) -> None:
    breaker = make(
        clock, failure_threshold=100, failure_rate_threshold=0.5, window_size=4, minimum_calls=2
    )
    fail_times(breaker, 2)
    assert breaker.state is OPEN
    clock.advance(breaker.config.recovery_timeout)
    call(breaker, Outcome.SUCCESS)
    assert breaker.state is CLOSED

    call(breaker, Outcome.SUCCESS)
    call(breaker, Outcome.SUCCESS)  # stale failures would make this 2/4 = 50%

    assert breaker.state is CLOSED


def test_slow_success_counts_as_failure(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2, slow_call_duration=0.5)

    call(breaker, Outcome.SUCCESS, elapsed=0.5)  # not slower than the limit
    call(breaker, Outcome.SUCCESS)  # duration unknown
    call(breaker, Outcome.SUCCESS, elapsed=0.6)
    assert breaker.state is CLOSED
    call(breaker, Outcome.SUCCESS, elapsed=3.0)

    snap = breaker.snapshot()
    assert snap.state is OPEN
    assert (snap.successes_total, snap.failures_total) == (2, 2)


def test_slow_calls_ignored_without_slow_call_duration(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)

    call(breaker, Outcome.SUCCESS, elapsed=1e9)

    assert breaker.state is CLOSED


def test_slow_probe_reopens(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, slow_call_duration=0.5)
    open_then_half_open(breaker, clock)

    call(breaker, Outcome.SUCCESS, elapsed=0.7)

    assert breaker.state is OPEN


# -- Listeners -------------------------------------------------------------------


def test_listeners_get_each_transition_once_in_registration_order(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    log: list[tuple[str, CircuitState, CircuitState]] = []
    breaker.add_listener(lambda old, new: log.append(("a", old, new)))
    breaker.add_listener(lambda old, new: log.append(("b", old, new)))

    open_then_half_open(breaker, clock)
    call(breaker, Outcome.FAILURE)
    clock.advance(breaker.config.recovery_timeout)
    call(breaker, Outcome.SUCCESS)

    transitions = [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert log == [(tag, *t) for t in transitions for tag in ("a", "b")]
    assert breaker.snapshot().transitions_total == len(transitions)


def test_raising_listener_does_not_break_breaker(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)

    def boom(old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("listener bug")

    recorder = Recorder()
    breaker.add_listener(boom)
    breaker.add_listener(recorder)

    fail_times(breaker, 1)
    clock.advance(breaker.config.recovery_timeout)
    call(breaker, Outcome.SUCCESS)

    assert breaker.state is CLOSED
    assert recorder.calls == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_remove_listener(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    kept, removed = Recorder(), Recorder()
    breaker.add_listener(removed)
    breaker.add_listener(kept)

    breaker.remove_listener(removed)
    fail_times(breaker, 1)

    assert removed.calls == []
    assert kept.calls == [(CLOSED, OPEN)]
    with pytest.raises(ValueError, match="not a registered listener"):
        breaker.remove_listener(removed)


def test_listener_may_call_back_into_breaker(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    seen: list[tuple[CircuitState, BreakerSnapshot]] = []

    def reentrant(old: CircuitState, new: CircuitState) -> None:
        seen.append((breaker.state, breaker.snapshot()))
        breaker.retry_after()

    breaker.add_listener(reentrant)

    # In a thread, so that a deadlock fails the test instead of hanging it.
    worker = threading.Thread(target=fail_times, args=(breaker, 1), daemon=True)
    worker.start()
    worker.join(timeout=5)

    assert not worker.is_alive(), "deadlocked: listener called while holding the lock"
    assert [state for state, _ in seen] == [OPEN]
    assert seen[0][1].opened_total == 1


def test_listener_causing_a_transition_keeps_order(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    recorder = Recorder()

    def reset_on_open(old: CircuitState, new: CircuitState) -> None:
        if new is OPEN:
            breaker.reset()

    breaker.add_listener(reset_on_open)
    breaker.add_listener(recorder)

    fail_times(breaker, 1)

    # The nested transition is announced after the one that caused it has
    # reached every listener, not in the middle of it.
    assert recorder.calls == [(CLOSED, OPEN), (OPEN, CLOSED)]
    assert breaker.state is CLOSED


def test_no_listener_call_without_state_change(clock: FakeClock) -> None:
    breaker = make(clock)
    recorder = Recorder()
    breaker.add_listener(recorder)

    breaker.reset()
    breaker.force_closed()
    breaker.reset()

    assert recorder.calls == []
    assert breaker.snapshot().transitions_total == 0


# -- Operator controls -------------------------------------------------------------


def test_force_open_stays_open(clock: FakeClock) -> None:
    breaker = make(clock, recovery_timeout=60.0)
    recorder = Recorder()
    breaker.add_listener(recorder)

    breaker.force_open()
    clock.advance(10_000.0)

    assert breaker.state is OPEN
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.acquire()
    assert rejected.value.retry_after == 60.0
    snap = breaker.snapshot()
    assert (snap.forced, snap.retry_after, snap.opened_total) == (True, 60.0, 1)
    assert recorder.calls == [(CLOSED, OPEN)]


def test_force_open_makes_in_flight_probe_stale(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    open_then_half_open(breaker, clock)
    probe = breaker.acquire()

    breaker.force_open()
    breaker.record(probe, Outcome.SUCCESS)

    assert breaker.state is OPEN


def test_force_closed_never_opens(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2, failure_rate_threshold=0.5, minimum_calls=2)
    fail_times(breaker, 2)
    assert breaker.state is OPEN

    breaker.force_closed()
    fail_times(breaker, 10)

    snap = breaker.snapshot()
    assert (snap.state, snap.forced) == (CLOSED, True)
    assert snap.failures_total == 12
    assert snap.consecutive_failures == 10


def test_reset_releases_forcing_and_clears_failures(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3)
    breaker.force_closed()
    fail_times(breaker, 5)

    breaker.reset()

    snap = breaker.snapshot()
    assert (snap.state, snap.forced, snap.consecutive_failures) == (CLOSED, False, 0)
    fail_times(breaker, 2)
    assert breaker.state is CLOSED
    fail_times(breaker, 1)
    assert breaker.state is OPEN


def test_reset_from_forced_open(clock: FakeClock) -> None:
    breaker = make(clock)
    recorder = Recorder()
    breaker.add_listener(recorder)
    breaker.force_open()

    breaker.reset()

    assert breaker.acquire().probe is False
    assert breaker.snapshot().forced is False
    assert recorder.calls == [(CLOSED, OPEN), (OPEN, CLOSED)]


def test_reset_makes_in_flight_outcomes_stale(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3)
    in_flight = breaker.acquire()
    fail_times(breaker, 2)

    breaker.reset()
    breaker.record(in_flight, Outcome.FAILURE)
    fail_times(breaker, 2)

    assert breaker.state is CLOSED
    assert breaker.snapshot().failures_total == 5


# -- Snapshot, errors, repr ----------------------------------------------------------


def test_snapshot_counters(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2, recovery_timeout=10.0)
    call(breaker, Outcome.SUCCESS)
    fail_times(breaker, 2)  # -> OPEN
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            breaker.acquire()
    clock.advance(4.0)

    assert breaker.snapshot() == BreakerSnapshot(
        state=OPEN,
        consecutive_failures=2,
        retry_after=6.0,
        opened_total=1,
        transitions_total=1,
        rejected_total=3,
        successes_total=1,
        failures_total=2,
        forced=False,
    )

    clock.advance(6.0)
    call(breaker, Outcome.SUCCESS)  # probe -> CLOSED

    assert breaker.snapshot() == BreakerSnapshot(
        state=CLOSED,
        consecutive_failures=0,
        retry_after=0.0,
        opened_total=1,
        transitions_total=3,
        rejected_total=3,
        successes_total=2,
        failures_total=2,
        forced=False,
    )


def test_circuit_open_error_is_builtin_connection_error(clock: FakeClock) -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1), clock=clock, name="cache-a")
    fail_times(breaker, 1)

    with pytest.raises(ConnectionError) as caught:
        breaker.acquire()

    error = caught.value
    assert isinstance(error, CircuitOpenError)
    assert "cache-a" in str(error)
    assert "open" in str(error)
    clone = pickle.loads(pickle.dumps(error))  # noqa: S301 -- our own object, round-tripped
    assert (clone.name, clone.state, clone.retry_after) == ("cache-a", OPEN, error.retry_after)


def test_a_forced_opening_is_marked_forced(clock: FakeClock) -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1), clock=clock, name="cache-a")
    fail_times(breaker, 1)
    with pytest.raises(CircuitOpenError) as opened:
        breaker.acquire()
    assert opened.value.forced is False

    breaker.force_open()
    with pytest.raises(CircuitOpenError) as forced:
        breaker.acquire()
    assert forced.value.forced is True
    assert "forced open by an operator" in str(forced.value)
    clone = pickle.loads(pickle.dumps(forced.value))  # noqa: S301 -- our own object
    assert clone.forced is True


def test_repr_shows_name_state_and_config(clock: FakeClock) -> None:
    config = BreakerConfig(failure_threshold=7)
    breaker = CircuitBreaker(config, clock=clock, name="primary")

    text = repr(breaker)

    assert "name='primary'" in text
    assert "state='closed'" in text
    assert repr(config) in text


def test_name_and_config_are_read_only(clock: FakeClock) -> None:
    config = BreakerConfig()
    breaker = CircuitBreaker(config, clock=clock, name="x")

    assert (breaker.name, breaker.config) == ("x", config)
    with pytest.raises(AttributeError):
        breaker.name = "y"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        breaker.config = config  # type: ignore[misc]


# -- Config validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", -1),
        ("failure_threshold", 2.5),
        ("failure_threshold", True),
        ("recovery_timeout", 0),
        ("recovery_timeout", -1.0),
        ("recovery_timeout", math.inf),
        ("recovery_timeout", math.nan),
        ("recovery_timeout", "60"),
        ("half_open_max_calls", 0),
        ("success_threshold", 0),
        ("failure_rate_threshold", 0.0),
        ("failure_rate_threshold", 1.5),
        ("failure_rate_threshold", math.nan),
        ("window_size", 0),
        ("minimum_calls", 0),
        ("minimum_calls", 101),  # more than window_size: the rate would never be evaluated
        ("slow_call_duration", 0.0),
        ("slow_call_duration", -0.1),
        ("slow_call_duration", math.inf),
    ],
)
def test_config_validation_names_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field) as caught:
        BreakerConfig(**{field: value})  # type: ignore[arg-type]

    assert repr(value) in str(caught.value)


def test_config_accepts_edge_values() -> None:
    config = BreakerConfig(
        failure_threshold=1,
        recovery_timeout=0.001,
        half_open_max_calls=1,
        success_threshold=1,
        failure_rate_threshold=1.0,
        window_size=1,
        minimum_calls=1,
        slow_call_duration=0.001,
    )

    assert config.failure_rate_threshold == 1.0


def test_config_is_frozen() -> None:
    config = BreakerConfig()

    with pytest.raises(AttributeError):
        config.failure_threshold = 1  # type: ignore[misc]


# -- Concurrency -------------------------------------------------------------------------


@pytest.fixture
def tiny_switch_interval() -> Iterator[None]:
    # Make the GIL change hands very often so the threads really interleave.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


@pytest.mark.usefixtures("tiny_switch_interval")
def test_threads_keep_counters_consistent_and_reentrant_listeners_dont_deadlock() -> None:
    threads_n, iterations = 8, 2000
    clock = FakeClock()
    config = BreakerConfig(
        failure_threshold=4,
        recovery_timeout=0.05,
        half_open_max_calls=2,
        success_threshold=2,
        failure_rate_threshold=0.6,
        window_size=20,
        minimum_calls=10,
    )
    breaker = CircuitBreaker(config, clock=clock)
    seen: list[tuple[CircuitState, CircuitState]] = []

    def reentrant(old: CircuitState, new: CircuitState) -> None:
        seen.append((old, new))
        # Reads that take the lock (and may themselves transition).
        breaker.snapshot()
        _ = breaker.state

    def boom(old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(reentrant)
    breaker.add_listener(boom)

    barrier = threading.Barrier(threads_n)
    tallies: list[dict[Outcome | str, int]] = []
    tallies_lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        tally: dict[Outcome | str, int] = dict.fromkeys([*Outcome, "rejected"], 0)
        barrier.wait()
        for _ in range(iterations):
            clock.advance(0.001)
            try:
                permit = breaker.acquire()
            except CircuitOpenError:
                tally["rejected"] += 1
                continue
            outcome = rng.choices(list(Outcome), weights=[6, 3, 1])[0]
            breaker.record(permit, outcome)
            tally[outcome] += 1
        with tallies_lock:
            tallies.append(tally)

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads_n)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)

    assert not any(thread.is_alive() for thread in workers), "deadlock"
    assert len(tallies) == threads_n

    def total(key: Outcome | str) -> int:
        return sum(tally[key] for tally in tallies)

    snap = breaker.snapshot()
    assert snap.successes_total == total(Outcome.SUCCESS)
    assert snap.failures_total == total(Outcome.FAILURE)
    assert snap.successes_total + snap.failures_total == (
        threads_n * iterations - total("rejected") - total(Outcome.IGNORED)
    )
    assert snap.rejected_total == total("rejected")
    # The workload must actually have exercised the state machine.
    assert snap.opened_total > 1
    assert total("rejected") > 0

    # Every transition was announced exactly once, in the order it happened.
    assert snap.transitions_total == len(seen)
    assert snap.opened_total == sum(new is OPEN for _, new in seen)
    assert seen[0][0] is CLOSED
    assert all(a[1] is b[0] for a, b in itertools.pairwise(seen))
    assert seen[-1][1] is snap.state

    # No probe slot leaked: every permit was recorded, so a half-open breaker
    # must grant all its probe slots again.
    clock.advance(config.recovery_timeout)
    if breaker.state is HALF_OPEN:
        for _ in range(config.half_open_max_calls):
            assert breaker.acquire().probe is True


# -- Property ------------------------------------------------------------------------------

NORMAL_TRANSITIONS = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)}

configs = st.builds(
    BreakerConfig,
    failure_threshold=st.integers(1, 5),
    recovery_timeout=st.floats(0.5, 60.0),
    half_open_max_calls=st.integers(1, 3),
    success_threshold=st.integers(1, 3),
    failure_rate_threshold=st.none() | st.floats(0.1, 1.0),
    window_size=st.integers(5, 20),
    minimum_calls=st.integers(1, 5),
    slow_call_duration=st.none() | st.floats(0.1, 1.5),
)

operations = st.lists(
    st.one_of(
        st.tuples(st.just("acquire")),
        st.tuples(
            st.just("record"),
            st.integers(0, 10),
            st.sampled_from(Outcome),
            st.none() | st.floats(0.0, 2.0),
        ),
        st.tuples(st.just("advance"), st.floats(0.0, 100.0)),
        st.tuples(st.just("state")),
        st.tuples(st.sampled_from(["force_open", "force_closed", "reset"])),
    ),
    max_size=150,
)


@settings(max_examples=300, deadline=None)
@given(config=configs, ops=operations)
def test_state_machine_invariants(config: BreakerConfig, ops: list[tuple[object, ...]]) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(config, clock=clock)
    recorder = Recorder()
    breaker.add_listener(recorder)
    held: list[Permit] = []
    recorded = 0
    rejected_states: set[CircuitState] = set()

    for op in ops:
        before = len(recorder.calls)
        match op:
            case ("acquire",):
                try:
                    held.append(breaker.acquire())
                except CircuitOpenError as error:
                    rejected_states.add(error.state)
            case ("record", int(index), Outcome() as outcome, elapsed) if held:
                breaker.record(held.pop(index % len(held)), outcome, elapsed)  # type: ignore[arg-type]
                recorded += outcome is not Outcome.IGNORED
            case ("advance", float(seconds)):
                clock.advance(seconds)
            case ("state",):
                _ = breaker.state
            case ("force_open",):
                breaker.force_open()
            case ("force_closed",):
                breaker.force_closed()
            case ("reset",):
                breaker.reset()

        new_transitions = recorder.calls[before:]
        assert (CLOSED, HALF_OPEN) not in new_transitions
        if op[0] not in ("force_open", "force_closed", "reset"):
            assert set(new_transitions) <= NORMAL_TRANSITIONS

        snap = breaker.snapshot()
        if snap.state is CLOSED and not snap.forced:
            assert snap.consecutive_failures < config.failure_threshold
        if snap.state is OPEN and not snap.forced:
            assert 0.0 < snap.retry_after <= config.recovery_timeout
        assert snap.successes_total + snap.failures_total == recorded
        assert snap.transitions_total == len(recorder.calls)

    assert rejected_states <= {OPEN, HALF_OPEN}
    assert (CLOSED, HALF_OPEN) not in recorder.calls
    assert all(a[1] is b[0] for a, b in itertools.pairwise(recorder.calls))
