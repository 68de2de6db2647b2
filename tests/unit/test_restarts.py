"""The supervisor's restart policy, on a fake clock (no processes)."""

from __future__ import annotations

from redis.backoff import ExponentialBackoff

from cachegate.runtime._restarts import FIRST_DELAY, MAX_DELAY, STABLE_AFTER, RestartPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_from_well_under_a_second_up_to_the_cap() -> None:
    clock = FakeClock()
    policy = RestartPolicy(backoff=ExponentialBackoff(cap=30.0, base=0.25), clock=clock)
    delays = []
    for _ in range(10):
        policy.started(0)
        clock.now += 1.0  # up one second, then dead again
        restart = policy.died(0)
        assert restart.due == clock.now + restart.delay
        assert restart.uptime == 1.0
        delays.append(restart.delay)
        clock.now = restart.due
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_the_default_jitter_keeps_each_delay_within_half_to_all_of_its_step() -> None:
    clock = FakeClock()
    policy = RestartPolicy(clock=clock)
    assert FIRST_DELAY < 1.0
    for deaths in range(12):
        policy.started(3)
        restart = policy.died(3)
        step = min(MAX_DELAY, FIRST_DELAY * 2**deaths)
        assert step / 2 <= restart.delay <= step, (deaths, restart.delay)
        assert restart.deaths_in_a_row == deaths + 1
        clock.now = restart.due


def test_a_worker_that_stayed_up_long_enough_starts_over() -> None:
    clock = FakeClock()
    policy = RestartPolicy(backoff=ExponentialBackoff(cap=30.0, base=0.25), clock=clock)
    for _ in range(5):
        policy.started(0)
        clock.now = policy.died(0).due
    policy.started(0)
    clock.now += STABLE_AFTER - 0.1  # not quite long enough: still counting
    assert policy.died(0).delay == 8.0
    policy.started(0)
    clock.now += STABLE_AFTER  # long enough: this death is a first one again
    restart = policy.died(0)
    assert (restart.delay, restart.deaths_in_a_row) == (0.25, 1)


def test_each_worker_has_its_own_count() -> None:
    clock = FakeClock()
    policy = RestartPolicy(backoff=ExponentialBackoff(cap=30.0, base=0.25), clock=clock)
    for worker_id in (0, 1):
        policy.started(worker_id)
    for _ in range(3):
        policy.died(0)
        policy.started(0)
    assert policy.died(1).delay == 0.25
    assert policy.died(0).delay == 2.0


def test_a_death_never_refuses_a_restart() -> None:
    clock = FakeClock()
    policy = RestartPolicy(clock=clock)
    for _ in range(1000):  # no budget: the 1000th death is restarted like the 10th
        policy.started(0)
        restart = policy.died(0)
        assert restart.delay <= MAX_DELAY
        clock.now = restart.due
