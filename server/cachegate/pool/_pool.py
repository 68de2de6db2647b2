"""RedisConnectionPool: redis-py's pool behind a circuit breaker, one retry layer and counters.

The call path of `execute()`:

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

With `auto_batch` (the server turns it on: CACHEGATE_AUTO_BATCH), single GET, SETEX
and DEL calls that meet in the pool share round trips (`_autobatch.py`,
`_batchqueue.py`): a call alone goes at once as above; calls that arrive while a
round trip is in flight go together as the next one, through the same path (one
permit, one verdict for the breaker, retries, a slot), each with its own reply or
error. Off on Cluster, where a round trip's keys would span slots and nodes: there
every call goes alone.

While the breaker is OPEN, a prober thread PINGs Redis in the background (no user
call) on the core's `ProbeSchedule`: about a second after the opening, then at
doubling intervals up to REDIS_RECOVERY_TIMEOUT. A PING that answers ends the
breaker's wait (OPEN -> HALF_OPEN, `CircuitBreaker.probe_succeeded`), so a Redis
that stalled for a few seconds costs seconds, not the whole recovery timeout; a
Redis that stays down gets at most one PING per interval from each process. The
thread starts when the breaker opens (its state listener), ends when the breaker is
no longer waiting (half-open, closed, or forced open by an operator, which a probe
never undoes) and on close(); there is no thread while the breaker is closed. A
probe takes a connection slot like any call, so REDIS_MAX_CONNECTIONS holds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster

from cachegate.core import (
    CallCounters,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Config,
    Deadline,
    Outcome,
    Permit,
    ProbeSchedule,
    StateListener,
)
from cachegate.pool._autobatch import AutoBatcher
from cachegate.pool._backend import Backend
from cachegate.pool._backends import make_backend
from cachegate.pool._batchqueue import Command, plan
from cachegate.pool._bounded import PartialRead, TooLarge
from cachegate.pool._commands import IDEMPOTENT, READS, WRITES
from cachegate.pool._errors import (
    ErrorKind,
    PoolExhaustedError,
    RedisTimeoutError,
    RedisUnavailableError,
    classify,
    translate,
)
from cachegate.pool._slots import Slots
from cachegate.pool._snapshot import PoolSnapshot, RedisReport

__all__ = ["RedisConnectionPool"]

T = TypeVar("T")

log = logging.getLogger("cachegate.pool")

# A health check must answer quickly even when Redis hangs.
HEALTH_TIMEOUT = 1.0

# The calls auto-batching carries (the service's unary calls), by name and argument count.
BATCHED: dict[str, int] = {"GET": 1, "SETEX": 3, "DEL": 1}


@dataclass(slots=True)
class _Verdict:
    """What one call's attempts showed of Redis: the last attempt that reached it decides."""

    outcome: Outcome = Outcome.IGNORED
    elapsed: float | None = None

    def saw(self, outcome: Outcome, elapsed: float) -> None:
        if outcome is not Outcome.IGNORED:
            self.outcome, self.elapsed = outcome, elapsed


class RedisConnectionPool:
    """A bounded, breaker-guarded pool of Redis connections (the seed's API).

    >>> pool = RedisConnectionPool(Config())          # the embedded memory backend
    >>> pool.execute("setex", "k", 60, b"v")
    True
    >>> pool.execute("get", "k")
    b'v'
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        auto_batch: bool = False,
    ) -> None:
        self._config = config
        self._clock = clock
        self._sleep = sleep
        self._backend: Backend = make_backend(config)
        self._breaker = CircuitBreaker(config.breaker, clock=clock)
        self._slots = Slots(config.pool.max_connections)
        self._counters = CallCounters()
        self._backoff = ExponentialWithJitterBackoff(
            cap=config.retry.backoff_cap, base=config.retry.backoff_base
        )
        self._closed = False
        self._wait_replicas = config.pool.wait_replicas
        self._wait_timeout_ms = max(1, int(config.pool.wait_replicas_timeout * 1000))
        self._next_reap = clock() + self._reap_every()
        # The background prober of an open breaker (see the module's docstring).
        self._probe_lock = threading.Lock()  # guards the schedule and the thread handle
        self._probe_schedule = ProbeSchedule(config.breaker.probe_policy, clock)
        self._prober: threading.Thread | None = None
        self._probe_stop = threading.Event()
        self._probes = {"success": 0, "failure": 0}
        self._breaker.add_listener(self._on_breaker_change)
        # A queued call waits for the round trip in flight as it would for a connection.
        self._batcher: AutoBatcher | None = None
        if auto_batch and self._backend.kind != "cluster":
            self._batcher = AutoBatcher(
                self._run_alone, self._run_shared, patience=config.pool.wait_timeout, clock=clock
            )

    def _reap_every(self) -> float:
        # Look for idle connections a few times per idle timeout, at most once a second.
        return max(1.0, self._config.pool.idle_timeout / 4)

    def __repr__(self) -> str:
        return (
            f"<RedisConnectionPool backend={self._backend.kind} "
            f"redis={self._config.redis.redacted_url} state={self._breaker.state.value}>"
        )

    # --- the seed's API ---------------------------------------------------------------

    def execute(self, command: str, *args: Any, timeout: float | None = None) -> Any:
        """Run one Redis command through breaker and retry; returns redis-py's reply.

        `timeout` is the caller's whole budget in seconds (pool wait, reply and
        retries); without it the configured socket timeout bounds each attempt.
        """
        name = command.upper()
        if self._wait_replicas and name in WRITES:
            # Durable mode: the write and a WAIT go on one connection, in one round trip.
            [reply] = self.execute_many([(name, *args)], timeout=timeout)
            if isinstance(reply, Exception):
                raise reply
            return reply
        batcher = self._batcher
        if batcher is not None and BATCHED.get(name) == len(args):
            return batcher.call((name, *args), Deadline.after(timeout, self._clock))
        return self._run_alone((command, *args), Deadline.after(timeout, self._clock))

    @property
    def auto_batcher(self) -> AutoBatcher | None:
        """The batcher of single calls, None when auto-batching is off (see above)."""
        return self._batcher

    def _run_alone(self, cmd: Command, deadline: Deadline) -> Any:
        """One command on its own round trip: execute()'s path without batching."""
        name = str(cmd[0]).upper()
        result = self._with_retries(
            lambda read_timeout: self._backend.run(cmd, read_timeout),
            deadline,
            retryable=name in IDEMPOTENT,
        )
        if name in READS:
            self._count_reads(result)
        return result

    def _run_shared(self, commands: list[Command], deadline: Deadline) -> list[Any]:
        """Calls batched by the AutoBatcher as one round trip: each call's reply, or the
        error Redis answered it with in its place (CommandError, ...). An outage fails
        the round trip as a whole, counted once for the breaker like any call, and is
        retried as any call of these idempotent commands is."""
        wire, at = plan(commands)
        if len(commands) > 1:
            self._counters.shared(len(commands) - 1)
        if len(wire) == 1:  # one command (identical GETs): the single call's own path
            command = wire[0]
            replies = [
                self._with_retries(
                    lambda read_timeout: self._backend.run(command, read_timeout),
                    deadline,
                    retryable=True,
                )
            ]
        else:
            replies = self._with_retries(
                lambda read_timeout: self._replies_of(wire, read_timeout), deadline, retryable=True
            )
        results = [replies[index] for index in at]
        hits = misses = 0
        for command, result in zip(commands, results, strict=True):
            if command[0] == "GET" and not isinstance(result, Exception):
                if result is None:
                    misses += 1
                else:
                    hits += 1
        if hits or misses:
            self._counters.reads(hits, misses)
        return results

    def _replies_of(self, wire: list[Command], read_timeout: float) -> list[Any]:
        """One attempt of a shared round trip; an error reply that says Redis cannot
        serve (as the call alone would have raised it) fails the attempt as a whole."""
        replies = self._backend.run_each(wire, read_timeout)
        for index, reply in enumerate(replies):
            if isinstance(reply, Exception):
                kind = classify(reply) or ErrorKind.REPLY
                if kind is not ErrorKind.REPLY:
                    raise reply
                error = translate(reply, kind)
                error.__cause__ = reply
                replies[index] = error
        return replies

    def execute_many(
        self,
        commands: Sequence[Sequence[Any]],
        *,
        timeout: float | None = None,
        max_bytes: int | None = None,
    ) -> list[Any]:
        """Run a batch as one pipeline (one round trip where the backend allows).

        One breaker verdict and one connection for the whole batch. The result
        has one entry per command, in order: the reply, or a CommandError for a
        command Redis rejected (its neighbours are unaffected). An outage fails
        the batch as a whole; it is retried only when every command is idempotent.
        Command names must be upper case here (the hot path does not normalise them).
        Runs of GETs may be served by one MGET, where a key holding another type
        reads as None instead of failing with WRONGTYPE. With `max_bytes`, the
        values read add up to at most that many bytes, and Redis is never asked for
        more: a value left out stands as `TooLarge` (its size).
        """
        if not commands:
            return []
        names = {command[0] for command in commands}
        durable = self._wait_replicas > 0 and not names.isdisjoint(WRITES)
        sent: Sequence[Sequence[Any]] = commands
        if durable:
            sent = [*commands, ("WAIT", self._wait_replicas, self._wait_timeout_ms)]
        replies = self._with_retries(
            lambda read_timeout: self._backend.run_batch(sent, read_timeout, max_bytes),
            Deadline.after(timeout, self._clock),
            retryable=all(str(name).upper() in IDEMPOTENT for name in names),
            # WAIT may block for its whole timeout: that is Redis doing as asked,
            # not an outage, so the read waits that much longer.
            server_wait=self._wait_timeout_ms / 1000 if durable else 0.0,
        )
        if durable:
            self._confirm_replicated(commands, replies)
        hits = misses = 0
        for index, (command, reply) in enumerate(zip(commands, replies, strict=True)):
            if isinstance(reply, Exception):
                error = translate(reply, classify(reply) or ErrorKind.REPLY)
                error.__cause__ = reply
                replies[index] = error
            elif command[0] == "GET":
                if reply is None:
                    misses += 1
                elif type(reply) is not TooLarge:  # a value left out is no read (yet)
                    hits += 1
        if hits or misses:
            self._counters.reads(hits, misses)
        return replies

    def get_with_ttl(self, key: str | bytes, *, timeout: float | None = None) -> tuple[Any, Any]:
        """GET and PTTL of `key` as one atomic step (one MULTI/EXEC round trip): the
        value (None on a miss) and PTTL's reply, so a TTL never belongs to another
        write of the key than the value read. A key of another type raises
        CommandError (WRONGTYPE), as `execute("GET", key)` does."""
        value, pttl = self._with_retries(
            lambda read_timeout: self._backend.get_with_ttl(key, read_timeout),
            Deadline.after(timeout, self._clock),
            retryable=True,
        )
        self._count_reads(value)
        return value, pttl

    def get_many(
        self,
        keys: Sequence[str | bytes],
        *,
        timeout: float | None = None,
        max_bytes: int | None = None,
    ) -> list[Any]:
        """Read many keys in one round trip (MGET; slot by slot on Cluster); None for a miss.

        A key holding another type reads as None (MGET's rule), not as WRONGTYPE.
        With `max_bytes`, as execute_many: at most that many bytes of values, the
        rest `TooLarge` (see _bounded.py).
        """
        if not keys:
            return []
        values: list[Any] = self._with_retries(
            lambda read_timeout: self._backend.get_many(keys, read_timeout, max_bytes),
            Deadline.after(timeout, self._clock),
            retryable=True,
        )
        misses = values.count(None)
        hits = len(values) - misses
        if type(values) is PartialRead:  # a value left out is no read (yet): no hit
            hits -= sum(1 for value in values if type(value) is TooLarge)
        self._counters.reads(hits, misses)
        return values

    @contextlib.contextmanager
    def get_client(self, timeout: float | None = None) -> Iterator[redis.Redis | RedisCluster]:
        """Yield a redis-py client for pipelines and other multi-command work.

        The block holds one of the pool's slots (so it counts toward
        REDIS_MAX_CONNECTIONS), passes the breaker first, and reports its outcome
        to the breaker when it ends, exceptions included. Commands inside the
        block are not retried: a pipeline may hold commands that must not run twice.
        """
        self._check_open()
        permit = self._admit(Deadline.after(timeout, self._clock).remaining())
        start = self._clock()
        try:
            yield self._backend.client
        except BaseException as exc:
            kind = classify(exc)
            self._record(permit, kind, self._clock() - start)
            if kind in (ErrorKind.OUTAGE, ErrorKind.TIMEOUT, ErrorKind.CAPACITY):
                raise translate(exc, kind) from exc
            raise
        else:
            self._breaker.record(permit, Outcome.SUCCESS, self._clock() - start)
        finally:
            self._slots.release()

    def health_check(self) -> dict[str, Any]:
        """The seed's health dict, live. Never raises: a down Redis gives healthy=False and why.

        The shape (shared with the client's RedisCache.health_check, which reads it
        from Stats): always the same keys; None for whatever is unknown (no guessed
        0.0 or ''). `error` is None when healthy; `age_seconds` is how old the figures
        are (0.0 here: this call just asked Redis); `hit_rate` is the process's own
        (see CallStats.hit_rate), None before any read.
        It waits at most one second for a free connection; a pool busy for longer
        is reported as unhealthy, with that reason. Built from `health_report()`.
        """
        return self.health_report().health_dict()

    def health_report(self) -> PoolSnapshot:
        """`snapshot()` plus what a PING and an INFO say of Redis now (`.redis`). Never raises.

        The pool's figures are taken before Redis is asked. It waits at most one
        second for a free connection, as health_check().
        """
        snapshot = self.snapshot()
        return replace(snapshot, redis=self._ask_redis())

    def _ask_redis(self) -> RedisReport:
        timeout = min(HEALTH_TIMEOUT, self._config.pool.socket_timeout)
        # Through the connection gate like any call (so REDIS_MAX_CONNECTIONS holds),
        # but past the breaker: operators see Redis's truth while it keeps calls away.
        if not self._slots.acquire(timeout):
            return RedisReport(
                healthy=False, error=f"PoolExhaustedError: {self._exhausted_message()}"
            )
        try:
            self._check_open()
            start = time.perf_counter()
            self._backend.run(("PING",), timeout)
            ping_ms = round((time.perf_counter() - start) * 1000, 3)
            info = self._backend.info(timeout)
        except Exception as exc:
            return RedisReport(healthy=False, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._slots.release()
        return RedisReport(
            healthy=True,
            ping_ms=ping_ms,
            version=info.version,
            connected_clients=info.connected_clients,
            used_memory_human=info.used_memory_human,
        )

    def get_stats(self) -> dict[str, Any]:
        """Pool, breaker and call figures of this process (cheap: no Redis call).
        Built from `snapshot()`."""
        return self.snapshot().stats_dict()

    def snapshot(self) -> PoolSnapshot:
        """Pool, breaker and call figures of this process, typed, at one moment (no Redis call)."""
        return PoolSnapshot(
            backend=self._backend.kind,
            max_connections=self._slots.size,
            connections=self._backend.counts(),
            pending_requests=self._slots.pending,
            wait_seconds_total=self._slots.wait_seconds_total,
            breaker=self._breaker.snapshot(),
            calls=self._counters.snapshot(),
            probes_succeeded=self._probes["success"],
            probes_failed=self._probes["failure"],
        )

    def close(self) -> None:
        """Close every connection. Idempotent; later calls raise RedisUnavailableError."""
        if not self._closed:
            self._closed = True
            self._probe_stop.set()
            with self._probe_lock:
                prober = self._prober
            if prober is not None and prober is not threading.current_thread():
                # A probe in flight ends within its own timeout.
                prober.join(self._probe_timeout() + 1.0)
            self._backend.close()

    # --- for the service and the metrics ---------------------------------------------

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def backend_kind(self) -> str:
        return self._backend.kind

    @property
    def backend(self) -> Backend:
        """The backend (the invalidation tracker opens its own connections beside it)."""
        return self._backend

    @property
    def config(self) -> Config:
        return self._config

    def add_state_listener(self, listener: StateListener) -> None:
        self._breaker.add_listener(listener)

    # --- the prober of an open breaker ----------------------------------------------

    def _probe_timeout(self) -> float:
        return min(HEALTH_TIMEOUT, self._config.pool.socket_timeout)

    def _on_breaker_change(self, old: CircuitState, new: CircuitState) -> None:
        """The breaker's listener: start the prober when it opens; reset the schedule
        when it closes (Redis proved healthy, so the next outage starts at the first delay)."""
        with self._probe_lock:
            if new is CircuitState.CLOSED:
                self._probe_schedule.closed()
                return
            if new is not CircuitState.OPEN:
                return
            self._probe_schedule.opened()
            if self._prober is not None or self._closed or not self._probe_schedule.policy.enabled:
                return
            self._prober = threading.Thread(
                target=self._probe_loop, name="cachegate-breaker-probe", daemon=True
            )
            self._prober.start()

    def _probe_loop(self) -> None:
        breaker = self._breaker
        while True:
            with self._probe_lock:
                # Decided under the lock the listener takes after a transition: either
                # this thread sees the new OPEN and goes on, or the listener sees no
                # thread and starts one.
                if self._closed or not breaker.waiting:
                    self._prober = None
                    return
                # Capped: a wait read between a reopening and its listener is inf.
                wait = min(self._probe_schedule.wait(), self._probe_schedule.policy.max_delay)
            if wait > 0:
                if self._probe_stop.wait(wait):
                    with self._probe_lock:
                        self._prober = None
                    return
                continue  # look at the breaker (and the schedule) again
            ok = self._probe()
            with self._probe_lock:
                self._probe_schedule.probed()
                self._probes["success" if ok else "failure"] += 1
            if ok and breaker.probe_succeeded():
                log.info("Redis answered the breaker's probe: half-open")

    def _sooner(self, exc: CircuitOpenError) -> CircuitOpenError:
        """The breaker's rejection, with the retry hint cut to the next probe when that
        comes before the end of the recovery timeout (the earliest a call can pass)."""
        with self._probe_lock:
            if self._prober is None or not self._breaker.waiting:  # forced: no probes
                return exc
            next_probe = self._probe_schedule.wait()
        if next_probe >= exc.retry_after:
            return exc
        return CircuitOpenError(exc.name, exc.state, next_probe)

    def _probe(self) -> bool:
        """One PING past the breaker (never holding its lock), through the connection gate."""
        timeout = self._probe_timeout()
        if not self._slots.acquire(timeout):
            return False  # every connection busy: no verdict, and no extra connection
        try:
            self._backend.run(("PING",), timeout)
        except Exception as exc:  # any failure: Redis did not prove it answers
            log.debug("breaker probe failed", extra={"reason": f"{type(exc).__name__}: {exc}"})
            return False
        finally:
            self._slots.release()
        return True

    # --- internals -----------------------------------------------------------------

    def _confirm_replicated(self, commands: Sequence[Sequence[Any]], replies: list[Any]) -> None:
        """Turn writes that too few replicas confirmed into errors (never acknowledged)."""
        acked = replies.pop()
        if isinstance(acked, int) and acked >= self._wait_replicas:
            return
        error = RedisUnavailableError(
            f"write not confirmed by {self._wait_replicas} replica(s) within "
            f"{self._wait_timeout_ms} ms (REDIS_WAIT_REPLICAS); it may or may not persist"
        )
        for index, command in enumerate(commands):
            if command[0] in WRITES and not isinstance(replies[index], Exception):
                replies[index] = error

    def _with_retries(
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
        self._check_open()
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
            raise PoolExhaustedError(self._exhausted_message())
        self._counters.call()

    def _admit(self, left: float | None) -> Permit:
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

    def _record(self, permit: Permit, kind: ErrorKind | None, elapsed: float) -> None:
        outcome = self._outcome(kind)
        self._breaker.record(permit, outcome, None if outcome is Outcome.IGNORED else elapsed)

    def _may_retry(self, deadline: Deadline) -> bool:
        # Never retry into an open breaker (the retry would be rejected anyway and
        # hide the real error), nor past the caller's deadline.
        return self._breaker.state is CircuitState.CLOSED and not deadline.expired

    def _count_reads(self, result: Any) -> None:
        if isinstance(result, list):
            misses = sum(1 for v in result if v is None)
            self._counters.reads(len(result) - misses, misses)
        elif result is None:
            self._counters.reads(0, 1)
        else:
            self._counters.reads(1, 0)

    def _exhausted_message(self) -> str:
        return (
            f"all {self._slots.size} Redis connections stayed busy for "
            f"{self._config.pool.wait_timeout}s (REDIS_MAX_CONNECTIONS / REDIS_POOL_TIMEOUT)"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RedisUnavailableError("the pool is closed (close_redis_pool() was called)")
