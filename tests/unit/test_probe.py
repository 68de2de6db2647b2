"""Recovery by probing: the pure probe schedule and the breaker's probe_succeeded(),
driven by a fake clock (no sleeping, no threads)."""

from __future__ import annotations

import math

import pytest

from cachegate.core import BreakerConfig, ConfigError, load_config
from cachegate.core._breaker import CircuitBreaker, CircuitOpenError, CircuitState, Outcome
from cachegate.core._probe import ProbePolicy, ProbeSchedule


class FakeClock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def probe_times(policy: ProbePolicy, seconds: float, probe_takes: float = 0.0) -> list[float]:
    """Drive a schedule through an outage of `seconds` (every probe fails after
    `probe_takes`); the probe start times, relative to the opening."""
    clock = FakeClock(0.0)
    schedule = ProbeSchedule(policy, clock)
    schedule.opened()
    starts: list[float] = []
    while True:
        clock.advance(schedule.wait())
        if clock.now > seconds:
            return starts
        assert schedule.due()
        starts.append(clock.now)
        clock.advance(probe_takes)
        schedule.probed()


def test_first_probe_after_first_delay_then_doubling_up_to_the_recovery_timeout() -> None:
    policy = ProbePolicy(first_delay=1.0, max_delay=60.0)
    starts = probe_times(policy, 200.0)
    gaps = [b - a for a, b in zip([0.0, *starts], starts, strict=False)]
    assert gaps[:7] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert set(gaps[6:]) == {60.0}


def test_nothing_due_before_the_delay_and_nothing_planned_while_closed() -> None:
    clock = FakeClock()
    schedule = ProbeSchedule(ProbePolicy(first_delay=1.0, max_delay=60.0), clock)
    assert schedule.wait() == math.inf
    assert schedule.next_at is None
    schedule.opened()
    clock.advance(0.999)
    assert not schedule.due()
    assert schedule.wait() == pytest.approx(0.001)
    clock.advance(0.001)
    assert schedule.due()


def test_intervals_count_from_the_end_of_a_probe() -> None:
    # A probe that takes 0.5 s (a timed-out PING) pushes the next one back by as much.
    starts = probe_times(ProbePolicy(1.0, 60.0), 10.0, probe_takes=0.5)
    assert starts == [1.0, 3.5, 8.0]


def test_at_most_one_probe_per_interval_for_a_hard_down_backend() -> None:
    policy = ProbePolicy(first_delay=1.0, max_delay=60.0)
    for seconds in (0.5, 1.0, 2.9, 3.0, 10.0, 64.0, 300.0):
        for takes in (0.0, 0.01, 0.5):
            assert len(probe_times(policy, seconds, takes)) <= policy.most_probes(seconds)
    assert policy.most_probes(10.0) == 3  # at 1, 3 and 7 s
    assert policy.most_probes(0.99) == 0


def test_a_reopening_keeps_the_grown_interval_until_the_breaker_closes() -> None:
    clock = FakeClock()
    schedule = ProbeSchedule(ProbePolicy(first_delay=1.0, max_delay=60.0), clock)
    schedule.opened()
    clock.advance(1.0)
    schedule.probed()  # it answered; the breaker half-opened, a trial call failed:
    schedule.opened()
    assert schedule.wait() == 2.0
    clock.advance(2.0)
    schedule.probed()
    schedule.closed()  # the backend proved healthy
    assert schedule.next_at is None
    schedule.opened()
    assert schedule.wait() == 1.0


def test_first_delay_is_capped_by_the_recovery_timeout_and_zero_turns_probing_off() -> None:
    assert probe_times(ProbePolicy(first_delay=5.0, max_delay=2.0), 7.0) == [2.0, 4.0, 6.0]
    off = ProbePolicy(first_delay=0.0, max_delay=60.0)
    assert not off.enabled
    assert off.most_probes(1000.0) == 0
    schedule = ProbeSchedule(off, FakeClock())
    schedule.opened()
    assert schedule.wait() == math.inf


@pytest.mark.parametrize(
    ("first", "most"), [(-1.0, 60.0), (math.inf, 60.0), (1.0, 0.0), (math.nan, 1.0), (True, 1.0)]
)
def test_policy_rejects_nonsense(first: float, most: float) -> None:
    with pytest.raises(ValueError, match="ProbePolicy"):
        ProbePolicy(first_delay=first, max_delay=most)


def test_setting_reaches_the_breaker_config() -> None:
    config = load_config({"REDIS_PROBE_DELAY": "0.5", "REDIS_RECOVERY_TIMEOUT": "30"})
    assert config.breaker.probe_policy == ProbePolicy(first_delay=0.5, max_delay=30.0)
    assert load_config({}).breaker.probe_delay == 1.0
    with pytest.raises(ConfigError, match="REDIS_PROBE_DELAY"):
        load_config({"REDIS_PROBE_DELAY": "-1"})
    with pytest.raises(ValueError, match="probe_delay"):
        BreakerConfig(probe_delay=math.inf)


# --- the breaker's side ----------------------------------------------------------------


def opened(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, recovery_timeout=60), clock=clock)
    breaker.record(breaker.acquire(), Outcome.FAILURE)
    assert breaker.state is CircuitState.OPEN
    assert breaker.waiting
    return breaker


def test_a_successful_probe_half_opens_long_before_the_recovery_timeout() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    seen: list[tuple[CircuitState, CircuitState]] = []
    breaker.add_listener(lambda old, new: seen.append((old, new)))
    clock.advance(1.0)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    assert breaker.probe_succeeded()
    assert seen == [(CircuitState.OPEN, CircuitState.HALF_OPEN)]
    assert not breaker.waiting
    # The trial call decides, as after a full recovery timeout.
    breaker.record(breaker.acquire(), Outcome.SUCCESS)
    assert breaker.state is CircuitState.CLOSED


def test_a_trial_that_fails_after_the_probe_opens_it_again() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    assert breaker.probe_succeeded()
    breaker.record(breaker.acquire(), Outcome.FAILURE)
    assert breaker.state is CircuitState.OPEN
    assert breaker.waiting


def test_a_probe_never_undoes_forced_open_nor_moves_other_states() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    breaker.force_open()
    assert not breaker.waiting
    assert not breaker.probe_succeeded()
    assert breaker.state is CircuitState.OPEN
    assert breaker.snapshot().forced
    breaker.reset()
    assert not breaker.probe_succeeded()  # closed: nothing to end
    assert breaker.snapshot().state is CircuitState.CLOSED
    breaker.force_closed()
    assert not breaker.probe_succeeded()
    assert breaker.snapshot().state is CircuitState.CLOSED
