"""When to restart a worker that died: exponential backoff with jitter, per worker.

A worker that dies (a signal, the OOM killer, a crash) is restarted while the
others keep serving. Its restart waits `delay` seconds, taken from redis-py's
`EqualJitterBackoff`: half of the exponential step is fixed and half random, so
a restart never comes at once (a worker killed by each request it takes must
not be rebuilt in a tight loop) and never in lock-step with the others. The
step starts at `first_delay` (the first restart comes after 0.125..0.25 s with
the defaults), doubles with each death in a row and stops at `max_delay`. A
worker that stayed up for `stable_after` seconds has its deaths forgotten: its
next death is a first one again.

There is no limit on the number of restarts: deaths never make the supervisor
give up the port (see `_supervisor.py` for the start-up errors that do).

Pure: no processes, no I/O; the clock and the backoff are injectable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.backoff import AbstractBackoff, EqualJitterBackoff

__all__ = [
    "FIRST_DELAY",
    "MAX_DELAY",
    "STABLE_AFTER",
    "Restart",
    "RestartPolicy",
]

FIRST_DELAY = 0.25
"""Seconds of the first backoff step (the delay is half of it to all of it)."""
MAX_DELAY = 30.0
"""Longest step: a worker that keeps dying is restarted every 15..30 s."""
STABLE_AFTER = 60.0
"""Seconds a worker must stay up for its earlier deaths to be forgotten."""


@dataclass(frozen=True, slots=True)
class Restart:
    """The policy's answer to one death: restart `worker_id` at `due` (after `delay` s)."""

    worker_id: int
    delay: float
    due: float
    deaths_in_a_row: int  # this death included
    uptime: float  # seconds the dead worker had been up


class RestartPolicy:
    """Per worker: when it started, how many times in a row it died, when to restart it."""

    def __init__(
        self,
        *,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        stable_after: float = STABLE_AFTER,
        backoff: AbstractBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backoff = backoff or EqualJitterBackoff(cap=max_delay, base=first_delay)
        self._stable_after = stable_after
        self._clock = clock
        self._started: dict[int, float] = {}
        self._deaths: dict[int, int] = {}

    def started(self, worker_id: int) -> None:
        """`worker_id` was (re)started now."""
        self._started[worker_id] = self._clock()

    def died(self, worker_id: int) -> Restart:
        """`worker_id` died now (or could not be started): when to start it again."""
        now = self._clock()
        uptime = now - self._started.get(worker_id, now)
        deaths = 0 if uptime >= self._stable_after else self._deaths.get(worker_id, 0)
        delay = float(self._backoff.compute(deaths))
        self._deaths[worker_id] = deaths + 1
        return Restart(
            worker_id=worker_id,
            delay=delay,
            due=now + delay,
            deaths_in_a_row=deaths + 1,
            uptime=uptime,
        )
