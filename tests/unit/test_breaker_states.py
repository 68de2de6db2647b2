"""The breaker's state objects and its transition announcer, each on its own (the
breaker as a whole is tested in test_breaker.py)."""

from __future__ import annotations

import math

import pytest

from cachegate.core._breaker_config import BreakerConfig
from cachegate.core._breaker_listeners import TransitionAnnouncer
from cachegate.core._breaker_states import (
    BreakerState,
    CircuitState,
    ClosedState,
    FailureWindow,
    ForcedClosedState,
    ForcedOpenState,
    HalfOpenState,
    OpenState,
    Outcome,
)

CONFIG = BreakerConfig(failure_threshold=3, recovery_timeout=10.0, half_open_max_calls=2)
SUCCESS, FAILURE, IGNORED = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED


@pytest.mark.parametrize(
    ("kind", "circuit", "forced", "waiting"),
    [
        (ClosedState, CircuitState.CLOSED, False, False),
        (OpenState, CircuitState.OPEN, False, True),
        (HalfOpenState, CircuitState.HALF_OPEN, False, False),
        (ForcedOpenState, CircuitState.OPEN, True, False),
        (ForcedClosedState, CircuitState.CLOSED, True, False),
    ],
)
def test_what_each_state_shows(
    kind: type[BreakerState], circuit: CircuitState, forced: bool, waiting: bool
) -> None:
    state = kind(7, CONFIG, 100.0)
    assert (state.circuit, state.forced, state.waiting) == (circuit, forced, waiting)
    # Only an unforced OPEN is ever moved on by time.
    assert state.half_open_at == (110.0 if kind is OpenState else math.inf)
    permit = state.admit()
    if circuit is CircuitState.OPEN:
        assert permit is None
    else:
        assert permit is not None
        assert (permit.generation, permit.probe) == (7, kind is HalfOpenState)


def test_closed_opens_on_failures_in_a_row_and_ignores_the_ignored() -> None:
    state = ClosedState(1, CONFIG, 0.0)
    assert state.admit() is state.admit()  # one shared permit per generation
    assert state.settle(FAILURE, True, 2) is None
    assert state.settle(IGNORED, False, 3) is None  # IGNORED tells nothing
    assert state.settle(FAILURE, True, 3) is OpenState


def test_closed_opens_on_the_failure_rate_once_the_window_holds_enough_calls() -> None:
    config = BreakerConfig(
        failure_threshold=100, failure_rate_threshold=0.5, window_size=4, minimum_calls=4
    )
    state = ClosedState(1, config, 0.0)
    moves = [
        state.settle(FAILURE if failed else SUCCESS, failed, 1) for failed in (True, False, True)
    ]
    assert moves == [None, None, None]  # 2 of 3 failed, but fewer than minimum_calls
    assert state.settle(SUCCESS, False, 0) is OpenState  # 2 of 4: the rate is reached


def test_the_failure_window_forgets_what_slides_out() -> None:
    window = FailureWindow(BreakerConfig(window_size=3, minimum_calls=3), rate=0.6)
    assert [window.add(failed) for failed in (True, True, False)] == [False, False, True]
    assert window.add(False) is False  # the first failure slid out: 1 of 3
    assert window.add(True) is False  # and the second: still 1 of 3
    assert window.add(True) is True  # 2 of 3


def test_half_open_admits_its_probes_and_frees_their_slots() -> None:
    state = HalfOpenState(1, CONFIG, 0.0)
    assert state.admit() is not None
    assert state.admit() is not None
    assert state.admit() is None  # half_open_max_calls=2
    assert state.settle(IGNORED, False, 0) is None  # frees a slot, decides nothing
    assert state.admit() is not None
    assert state.settle(FAILURE, True, 1) is OpenState


def test_half_open_closes_after_enough_successes_and_never_frees_slots_twice() -> None:
    state = HalfOpenState(1, BreakerConfig(half_open_max_calls=1, success_threshold=2), 0.0)
    assert state.admit() is not None
    assert state.settle(SUCCESS, False, 0) is None
    assert state.settle(IGNORED, False, 0) is None  # recorded twice: no slot below zero
    assert state.admit() is not None
    assert state.admit() is None
    assert state.settle(SUCCESS, False, 0) is ClosedState


def test_open_reports_the_wait_left_clamped_to_the_timeout() -> None:
    state = OpenState(1, CONFIG, 100.0)
    assert state.retry_after(104.0) == 6.0
    assert state.retry_after(50.0) == 10.0  # a clock that ran backwards
    assert state.retry_after(200.0) == 0.0


def test_the_forced_states_never_move_on_their_own() -> None:
    forced_open = ForcedOpenState(1, CONFIG, 100.0)
    assert forced_open.retry_after(1e9) == 10.0  # the normal back-off, as a hint
    forced_closed = ForcedClosedState(1, CONFIG, 0.0)
    assert forced_closed.settle(FAILURE, True, 1000) is None


def test_the_announcer_queues_only_for_listeners_and_keeps_the_order() -> None:
    announcer = TransitionAnnouncer("redis")
    assert announcer.queue(CircuitState.CLOSED, CircuitState.OPEN) is False  # nobody to tell
    seen: list[tuple[str, CircuitState, CircuitState]] = []
    announcer.add(lambda old, new: seen.append(("first", old, new)))
    assert announcer.queue(CircuitState.CLOSED, CircuitState.OPEN) is True
    # Registered after that transition: not told of it, only of the next one.
    announcer.add(lambda old, new: seen.append(("second", old, new)))
    assert announcer.queue(CircuitState.OPEN, CircuitState.HALF_OPEN) is True
    announcer.announce()
    assert seen == [
        ("first", CircuitState.CLOSED, CircuitState.OPEN),
        ("first", CircuitState.OPEN, CircuitState.HALF_OPEN),
        ("second", CircuitState.OPEN, CircuitState.HALF_OPEN),
    ]
    announcer.announce()  # drained: nothing twice
    assert len(seen) == 3


def test_removing_a_stranger_names_the_breaker() -> None:
    announcer = TransitionAnnouncer("sessions")
    with pytest.raises(ValueError, match="'sessions'"):
        announcer.remove(print)
