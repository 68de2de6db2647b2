"""RedisConnectionPool: redis-py's pool behind a circuit breaker, one retry layer and counters.

The seed's API (`execute`, `get_client`, `health_check`, `get_stats`, ...) and the
pool's own figures live here; the pool assembles the parts that do the work, each in
a module of its own:

- `_callpath.py`: the call path of every call (breaker permit, connection slot,
  attempts, retries, one verdict for the breaker per call);
- `_sharedtrips.py` (with `_autobatch.py`, `_batchqueue.py`): with `auto_batch`
  (the server turns it on: CACHEGATE_AUTO_BATCH), single GET, SETEX and DEL calls
  that meet in the pool share round trips on that same path; off on Cluster;
- `_prober.py`: while the breaker is OPEN, a thread PINGs Redis in the background
  (no user call) and ends the breaker's wait early when Redis answers;
- `_slots.py`, `_backends.py`, `_snapshot.py`: the connection gate, the backend
  (standalone, Sentinel, Cluster, memory) and the typed figures.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import redis
from redis.cluster import RedisCluster

from cachegate.core import (
    CallCounters,
    CircuitBreaker,
    Config,
    Deadline,
    Outcome,
    StateListener,
)
from cachegate.pool._autobatch import AutoBatcher
from cachegate.pool._backend import Backend
from cachegate.pool._backends import make_backend
from cachegate.pool._bounded import PartialRead, TooLarge
from cachegate.pool._callpath import CallPath
from cachegate.pool._commands import IDEMPOTENT, WRITES
from cachegate.pool._errors import ErrorKind, RedisUnavailableError, classify, translate
from cachegate.pool._prober import Prober
from cachegate.pool._sharedtrips import BATCHED, SharedTrips
from cachegate.pool._slots import Slots
from cachegate.pool._snapshot import PoolSnapshot, RedisReport

__all__ = ["RedisConnectionPool"]

# A health check must answer quickly even when Redis hangs.
HEALTH_TIMEOUT = 1.0


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
        self._backend: Backend = make_backend(config)
        self._breaker = CircuitBreaker(config.breaker, clock=clock)
        self._slots = Slots(config.pool.max_connections)
        self._counters = CallCounters()
        self._wait_replicas = config.pool.wait_replicas
        self._wait_timeout_ms = max(1, int(config.pool.wait_replicas_timeout * 1000))
        # The background prober of an open breaker (_prober.py): the breaker's first listener.
        self._prober = Prober(
            self._breaker,
            self._slots,
            self._backend,
            config.breaker.probe_policy,
            timeout=min(HEALTH_TIMEOUT, config.pool.socket_timeout),
            clock=clock,
        )
        # Every call's way to Redis (_callpath.py): one object, called once per call.
        self._calls = CallPath(
            config,
            self._backend,
            self._breaker,
            self._slots,
            self._counters,
            sooner=self._prober.sooner,
            clock=clock,
            sleep=sleep,
        )
        # A queued call waits for the round trip in flight as it would for a connection.
        self._batcher: AutoBatcher | None = None
        if auto_batch and self._backend.kind != "cluster":
            shared = SharedTrips(self._calls, self._backend, self._counters)
            self._batcher = AutoBatcher(
                self._calls.run_alone, shared.run, patience=config.pool.wait_timeout, clock=clock
            )

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
        return self._calls.run_alone((command, *args), Deadline.after(timeout, self._clock))

    @property
    def auto_batcher(self) -> AutoBatcher | None:
        """The batcher of single calls, None when auto-batching is off (see above)."""
        return self._batcher

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
        replies = self._calls.with_retries(
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
        value, pttl = self._calls.with_retries(
            lambda read_timeout: self._backend.get_with_ttl(key, read_timeout),
            Deadline.after(timeout, self._clock),
            retryable=True,
        )
        self._calls.count_reads(value)
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
        values: list[Any] = self._calls.with_retries(
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
        self._calls.check_open()
        permit = self._calls.admit(Deadline.after(timeout, self._clock).remaining())
        start = self._clock()
        try:
            yield self._backend.client
        except BaseException as exc:
            kind = classify(exc)
            self._calls.record(permit, kind, self._clock() - start)
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
                healthy=False, error=f"PoolExhaustedError: {self._calls.exhausted_message()}"
            )
        try:
            self._calls.check_open()
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
            probes_succeeded=self._prober.succeeded,
            probes_failed=self._prober.failed,
        )

    def close(self) -> None:
        """Close every connection. Idempotent; later calls raise RedisUnavailableError."""
        if not self._calls.closed:
            self._calls.close()
            self._prober.stop()  # a probe in flight ends within its own timeout
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
