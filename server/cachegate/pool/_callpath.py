"""The call path: how one call goes to Redis past the breaker and the connection gate.

    breaker.acquire()   - open? raise CircuitOpenError at once, Redis untouched (once per call)
    slots.acquire()     - wait for a free connection, at most the wait timeout (or deadline)
    backend.run()       - one command, read timeout = socket timeout capped by the deadline
    retry?              - only idempotent commands, only outage errors, only while the breaker
                          is closed and the deadline leaves room for the backoff
    breaker.record()    - once per call, after its retries: the last attempt that reached
                          Redis decides; outage errors count against Redis, replies and our
                          own limits do not

So REDIS_FAILURE_THRESHOLD counts failed calls, not attempts: with 3 retries a call
that fails is one failure (not four), and one that succeeds on a retry is a success.
No lock is held across the Redis call or the back-off sleep.

`CallPath` is one object per pool, called once per call: the pool's methods hand it
what to run (`with_retries`), and it keeps the call counters as attempts happen.
`get_client()`'s block takes the same permit and slot (`admit`) and reports its end
(`record`) without retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.backoff import ExponentialWithJitterBackoff

from cachegate.core import (
    CallCounters,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Config,
    Deadline,
    Outcome,
    Permit,
)
from cachegate.pool._backend import Backend
from cachegate.pool._batchqueue import Command
from cachegate.pool._commands import IDEMPOTENT, READS
from cachegate.pool._errors import (
    ErrorKind,
    PoolExhaustedError,
    RedisTimeoutError,
    RedisUnavailableError,
    classify,
    translate,
)
from cachegate.pool._slots import Slots

__all__ = ["CallPath"]

T = TypeVar("T")


@dataclass(slots=True)
class _Verdict:
    """What one call's attempts showed of Redis: the last attempt that reached it decides."""

    outcome: Outcome = Outcome.IGNORED
    elapsed: float | None = None

    def saw(self, outcome: Outcome, elapsed: float) -> None:
        if outcome is not Outcome.IGNORED:
            self.outcome, self.elapsed = outcome, elapsed


class CallPath:
    """Permit, slot, attempts, retries and one verdict per call (see the module's docstring).

    `sooner` turns the breaker's rejection into the one the caller gets (the pool's
    prober cuts its retry hint to the next probe); it runs only when the breaker
    refuses, never on a call that passes.
    """

    def __init__(
        self,
        config: Config,
        backend: Backend,
        breaker: CircuitBreaker,
        slots: Slots,
        counters: CallCounters,
        *,
        sooner: Callable[[CircuitOpenError], CircuitOpenError],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._config = config
        self._backend = backend
        self._breaker = breaker
        self._slots = slots
        self._counters = counters
        self._sooner = sooner
        self._clock = clock
        self._sleep = sleep
        self._backoff = ExponentialWithJitterBackoff(
            cap=config.retry.backoff_cap, base=config.retry.backoff_base
        )
        self._next_reap = clock() + self._reap_every()
        self.closed = False

    def _reap_every(self) -> float:
        # Look for idle connections a few times per idle timeout, at most once a second.
        return max(1.0, self._config.pool.idle_timeout / 4)

    def close(self) -> None:
        """Refuse every later call (RedisUnavailableError): the pool is closing."""
        self.closed = True

    def check_open(self) -> None:
        if self.closed:
            raise RedisUnavailableError("the pool is closed (close_redis_pool() was called)")

    def run_alone(self, cmd: Command, deadline: Deadline) -> Any:
        """One command on its own round trip: execute()'s path without batching."""
        name = str(cmd[0]).upper()
        result = self.with_retries(
            lambda read_timeout: self._backend.run(cmd, read_timeout),
            deadline,
            retryable=name in IDEMPOTENT,
        )
        if name in READS:
            self.count_reads(result)
        return result

    def with_retries(
        self,
        call: Callable[[float], T],
        deadline: Deadline,
        *,
        retryable: bool,
        server_wait: float = 0.0,
    ) -> T:
        """One call: one breaker permit and one verdict, whatever its retries.

        REDIS_FAILURE_THRESHOLD counts failed calls, so a call is one outcome for the
        breaker however many attempts it made: the last attempt that reached Redis
        decides it (an attempt that never asked Redis, such as a pool wait that timed
        out, leaves the verdict to the one before). The permit is no lock: none is
        held across the Redis call or the back-off sleep.
        """
        self.check_open()
        permit = self._permit()  # CircuitOpenError: Redis is not touched
        verdict = _Verdict()
        retries_left = self._config.retry.attempts if retryable else 0
        failures = 0
        try:
            while True:
                try:
                    return self._attempt(call, deadline, verdict, server_wait)
                except RedisUnavailableError:
                    if retries_left <= 0 or not self._may_retry(deadline):
                        raise
                    delay = deadline.cap(self._backoff.compute(failures))
                    failures += 1
                    retries_left -= 1
                    self._counters.retry()
                    if delay > 0:
                        self._sleep(delay)
        finally:
            self._breaker.record(permit, verdict.outcome, verdict.elapsed)

    def _attempt(
        self,
        call: Callable[[float], T],
        deadline: Deadline,
        verdict: _Verdict,
        server_wait: float = 0.0,
    ) -> T:
        """One try; what Redis showed goes into `verdict` (the caller records it once).
        Redis gets the socket timeout, plus `server_wait` seconds that the command
        itself may block (WAIT), capped by what is left of the caller's budget."""
        # Every call runs this: the budget is read once, not once per step.
        left = deadline.remaining()
        if left is not None and left <= 0.0:
            raise RedisTimeoutError("the caller's deadline passed before Redis was asked")
        self._take_slot(left)
        allowed = self._config.pool.socket_timeout + server_wait
        read_timeout = allowed if left is None else min(allowed, left)
        start = self._clock()
        try:
            result = call(read_timeout)
        except BaseException as exc:
            kind = classify(exc)
            if kind is ErrorKind.TIMEOUT and read_timeout < allowed:
                # The caller's short deadline ran out, not Redis's own time: no verdict.
                raise RedisTimeoutError(f"deadline exceeded waiting for Redis: {exc}") from exc
            verdict.saw(self._outcome(kind), self._clock() - start)
            if kind is None:
                raise
            raise translate(exc, kind) from exc
        finally:
            self._slots.release()
        now = self._clock()
        verdict.saw(Outcome.SUCCESS, now - start)
        if now >= self._next_reap and self._config.pool.idle_timeout > 0:
            self._next_reap = now + self._reap_every()
            self._backend.reap_idle(self._config.pool.idle_timeout)
        return result

    def _permit(self) -> Permit:
        """The breaker's permit for one call (its retries included)."""
        try:
            return self._breaker.acquire()
        except CircuitOpenError as exc:
            raise self._sooner(exc) from None

    def _take_slot(self, left: float | None) -> None:
        """A connection slot, waiting at most the pool timeout and at most `left`
        seconds of the caller's budget."""
        wait = self._config.pool.wait_timeout
        if not self._slots.acquire(wait if left is None else min(wait, left)):
            self._counters.wait_timeout()
            raise PoolExhaustedError(self.exhausted_message())
        self._counters.call()

    def admit(self, left: float | None) -> Permit:
        """Past the breaker, then a connection slot (get_client's one attempt)."""
        permit = self._permit()
        try:
            self._take_slot(left)
        except BaseException:  # exhausted, or interrupted while queued: no verdict
            self._breaker.record(permit, Outcome.IGNORED)
            raise
        return permit

    def _outcome(self, kind: ErrorKind | None) -> Outcome:
        if kind in (ErrorKind.OUTAGE, ErrorKind.TIMEOUT):
            self._counters.failure()
            return Outcome.FAILURE
        if kind is ErrorKind.REPLY:
            return Outcome.SUCCESS
        # Our own capacity, a cancelled call, a caller's bug: no verdict on Redis.
        return Outcome.IGNORED

    def record(self, permit: Permit, kind: ErrorKind | None, elapsed: float) -> None:
        """The breaker's verdict on a call that ended with an error of `kind` (None: not
        Redis's) after `elapsed` seconds (get_client's block)."""
        outcome = self._outcome(kind)
        self._breaker.record(permit, outcome, None if outcome is Outcome.IGNORED else elapsed)

    def _may_retry(self, deadline: Deadline) -> bool:
        # Never retry into an open breaker (the retry would be rejected anyway and
        # hide the real error), nor past the caller's deadline.
        return self._breaker.state is CircuitState.CLOSED and not deadline.expired

    def count_reads(self, result: Any) -> None:
        """Hits and misses of a read's reply (a value, None, or a list of them)."""
        if isinstance(result, list):
            misses = sum(1 for v in result if v is None)
            self._counters.reads(len(result) - misses, misses)
        elif result is None:
            self._counters.reads(0, 1)
        else:
            self._counters.reads(1, 0)

    def exhausted_message(self) -> str:
        return (
            f"all {self._slots.size} Redis connections stayed busy for "
            f"{self._config.pool.wait_timeout}s (REDIS_MAX_CONNECTIONS / REDIS_POOL_TIMEOUT)"
        )
