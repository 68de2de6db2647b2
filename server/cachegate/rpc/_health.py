"""grpc.health.v1 wired to the backend and the breaker.

- ""                        the process: SERVING once the backend has answered once,
                            and it stays SERVING through a Redis outage, so an
                            orchestrator never kills a healthy pod for Redis's sake.
- cachegate.v1.CacheService follows the breaker: CLOSED -> SERVING, otherwise NOT_SERVING.

grpc_health's servicer starts "" as SERVING; we set NOT_SERVING first thing.
It has no List (grpcio-health-checking answers UNIMPLEMENTED): ListingHealthServicer
adds it from the statuses it is given.

A readiness probe that takes a pod out of rotation also takes its traffic away,
and a breaker only half-opens when a call comes. The prober below sends that
call (a PING through the pool) whenever the breaker is not closed, so the
service comes back by itself after Redis does.

The same thread keeps the figures Stats shows of Redis (`latest()`): the last
`health_report()` and its age. Stats never waits for Redis; a Stats that
finds the report older than STATS_REFRESH_SECONDS asks this thread for a new one,
so however often Stats is called a process sends at most one PING and one INFO
a second for it, and none while nobody asks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2

from cachegate.core import CircuitOpenError, CircuitState, RepeatedMessage
from cachegate.pool import CacheError, PoolSnapshot, RedisConnectionPool
from cachegate.rpc._services import CACHE

__all__ = [
    "SERVICE_NAME",
    "STATS_REFRESH_SECONDS",
    "HealthReporter",
    "HealthSample",
    "ListingHealthServicer",
]

# The cache's health name: its service's full name, as grpc_health names services.
SERVICE_NAME: str = CACHE.full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

log = logging.getLogger("cachegate.health")

# The freshest Stats' Redis figures get: at most one live probe per this many seconds.
STATS_REFRESH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class HealthSample:
    """A health_report() and how old it is (seconds); report is None before the first."""

    report: PoolSnapshot | None
    age_seconds: float


class ListingHealthServicer(health.HealthServicer):
    """grpc_health's servicer plus List: a snapshot of every status that was set.

    health.proto's List contract: a non-atomic snapshot of every service the server
    reports, the overall "" included (as grpc-go's server does). The contract lets a
    server with too many services answer RESOURCE_EXHAUSTED; cachegate reports two.
    """

    def __init__(self) -> None:
        super().__init__()
        # The statuses as Check answers them, kept beside the base class's own map
        # (which is private); one lock so a List never sees half a shutdown.
        self._listed_lock = threading.RLock()
        self._listed: dict[str, health_pb2.HealthCheckResponse.ServingStatus] = {
            health.OVERALL_HEALTH: SERVING
        }
        self._listed_frozen = False

    def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        with self._listed_lock:
            super().set(service, status)
            if not self._listed_frozen:
                self._listed[service] = status

    def enter_graceful_shutdown(self) -> None:
        # The base class marks every service NOT_SERVING through set(), then ignores
        # later calls: the listed statuses follow, then freeze the same way.
        with self._listed_lock:
            super().enter_graceful_shutdown()
            self._listed_frozen = True

    def List(  # noqa: N802  # the RPC's name in health.proto
        self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthListResponse:
        with self._listed_lock:
            statuses = dict(self._listed)
        reply = health_pb2.HealthListResponse()
        for service, status in statuses.items():
            reply.statuses[service].status = status
        return reply


class HealthReporter:
    """Owns the health servicer's statuses and the background prober."""

    def __init__(
        self,
        pool: RedisConnectionPool,
        *,
        probe_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servicer = ListingHealthServicer()
        self._pool = pool
        self._probe_interval = probe_interval
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._refresh = threading.Event()  # a Stats found the report stale
        # (report, when): replaced whole, so readers need no lock.
        self._latest: tuple[PoolSnapshot, float] | None = None
        self._thread = threading.Thread(target=self._run, name="cachegate-health", daemon=True)
        self.servicer.set("", NOT_SERVING)
        self.servicer.set(SERVICE_NAME, NOT_SERVING)
        pool.add_state_listener(self._on_breaker_change)

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the backend has answered (tests and `make run` use it)."""
        return self._ready.wait(timeout)

    def latest(self) -> HealthSample:
        """The last health_report() and its age, at once (no Redis call here).

        A report older than STATS_REFRESH_SECONDS wakes the prober thread for a new
        one; this caller gets the one there is, its age saying how old.
        """
        latest = self._latest
        age = None if latest is None else max(0.0, self._clock() - latest[1])
        if age is None or age >= STATS_REFRESH_SECONDS:
            self._refresh.set()
            self._wake.set()
        if latest is None:
            return HealthSample(None, 0.0)
        return HealthSample(latest[0], age or 0.0)

    def _check(self) -> PoolSnapshot:
        report = self._pool.health_report()
        self._latest = (report, self._clock())
        return report

    def _refresh_if_asked(self) -> None:
        if not self._refresh.is_set():
            return
        self._refresh.clear()
        latest = self._latest
        # Checked here too: many Stats may ask while one probe runs; one probe serves them.
        if latest is None or self._clock() - latest[1] >= STATS_REFRESH_SECONDS:
            self._check()

    def shutdown(self) -> None:
        """Everything NOT_SERVING for good (grpc_health ignores later set() calls)."""
        self._stop.set()
        self._wake.set()
        self.servicer.enter_graceful_shutdown()

    def _on_breaker_change(self, old: CircuitState, new: CircuitState) -> None:
        if not self._ready.is_set():
            return
        # OPEN -> HALF_OPEN -> OPEN changes nothing for clients: send only real changes,
        # so Watch streams see one NOT_SERVING per outage.
        if (old is CircuitState.CLOSED) != (new is CircuitState.CLOSED):
            self.servicer.set(SERVICE_NAME, SERVING if new is CircuitState.CLOSED else NOT_SERVING)
        self._wake.set()

    def _run(self) -> None:
        # Until the backend answers once, nothing is SERVING. Checked every probe
        # interval, but told once, then at doubling intervals (up to a minute).
        not_ready = RepeatedMessage()
        started = time.monotonic()
        while not self._stop.is_set() and not self._ready.is_set():
            redis = self._check().redis
            if redis is not None and redis.healthy:
                self._ready.set()
                self.servicer.set("", SERVING)
                closed = self._pool.breaker.state is CircuitState.CLOSED
                self.servicer.set(SERVICE_NAME, SERVING if closed else NOT_SERVING)
                fields: dict[str, object] = {"backend": self._pool.backend_kind}
                if not_ready.active:
                    fields["not_ready_seconds"] = round(time.monotonic() - started, 1)
                    fields["repeats_suppressed"] = not_ready.end()
                log.info("backend ready", extra=fields)
            else:
                held = not_ready.occur(time.monotonic())
                if held is not None:
                    log.warning(
                        "backend not ready",
                        extra={
                            "reason": (redis.error if redis else None) or "",
                            "repeats_suppressed": held,
                        },
                    )
                self._stop.wait(self._probe_interval)
        # Then: probe whenever the breaker is not closed, so it can close again.
        # And serve Stats' requests for fresh Redis figures meanwhile.
        while not self._stop.is_set():
            self._refresh_if_asked()
            breaker = self._pool.breaker
            if breaker.state is CircuitState.CLOSED:
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            due = self._clock() + max(breaker.retry_after(), self._probe_interval)
            while not self._stop.is_set() and (left := due - self._clock()) > 0:
                self._wake.wait(left)  # woken early by a Stats (or a breaker change)
                self._wake.clear()
                self._refresh_if_asked()
                if breaker.state is not CircuitState.OPEN:
                    # Half-open already (the pool's prober saw Redis answer): take the
                    # trial now, or a pod that gets no traffic while NOT_SERVING would
                    # wait out the whole recovery timeout. (Not `waiting`: that is also
                    # False while forced open, and then a PING would only be refused.)
                    break
            if self._stop.is_set():
                return
            # A failed probe is recorded by the breaker; we try again after its timeout.
            with contextlib.suppress(CircuitOpenError, CacheError, ConnectionError):
                self._pool.execute("PING")
