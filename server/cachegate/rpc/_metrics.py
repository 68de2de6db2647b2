"""Prometheus metrics: one registry per server, pool figures read at scrape time.

Two sources, two costs:

- RPC metrics (go-grpc-prometheus names) are counted as RPCs happen, by the
  `PrometheusObserver` of _rpcmetrics.py, which `ServerMetrics` registers here.
- Pool, breaker and call figures are NOT counted on the hot path: `PoolCollector`
  reads one `pool.snapshot()` (no Redis call) when Prometheus scrapes; so does
  `StaleCopyCollector` with the worker's stale copy.

Only breaker transitions are counted as they happen (a state listener), because
the snapshot keeps one total, not one per (from, to) pair; and certificate reloads
(`cachegate_tls_reloads_total`, a listener that _tls calls with each outcome).

Each `ServerMetrics` owns its own `CollectorRegistry` (never the global one), so a
test process can build many servers, and every series carries a `worker` label
(the worker id, "0" in single-process mode): in worker mode each worker serves its
own figures on its own side port, see the README's "Metrics" section.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cachegate.core import CircuitState, StaleCopy
from cachegate.pool import RedisConnectionPool
from cachegate.rpc._rpcmetrics import PrometheusObserver
from cachegate.rpc._services import CACHE, HEALTH

__all__ = [
    "BREAKER_STATE_VALUES",
    "TLS_RELOAD_RESULTS",
    "PoolCollector",
    "ServerMetrics",
    "StaleCopyCollector",
]

# cachegate_breaker_state's value per state (CircuitState values).
BREAKER_STATE_VALUES: dict[str, int] = {
    CircuitState.CLOSED.value: 0,
    CircuitState.HALF_OPEN.value: 1,
    CircuitState.OPEN.value: 2,
}

# cachegate_tls_reloads_total's results, each a series from the start.
TLS_RELOAD_RESULTS: tuple[str, ...] = ("applied", "rejected")

# The transitions a breaker makes on its own; forced ones are bound when first seen.
_TRANSITIONS = (
    (CircuitState.CLOSED, CircuitState.OPEN),
    (CircuitState.OPEN, CircuitState.HALF_OPEN),
    (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    (CircuitState.HALF_OPEN, CircuitState.OPEN),
)


class PoolCollector:
    """Pool, breaker and call figures, read from one `pool.snapshot()` at scrape time.

    Connection figures follow OpenTelemetry's `db.client.connection.*` semantic
    conventions in Prometheus form; breaker and call figures are `cachegate_*`.
    """

    def __init__(self, pool: RedisConnectionPool, *, worker: str = "0", workers: int = 1) -> None:
        self._pool = pool
        self._worker = worker
        self._workers = str(workers)

    def collect(self) -> Iterable[Metric]:
        snap = self._pool.snapshot()
        calls, breaker = snap.calls, snap.breaker
        w = self._worker

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["worker"])
            family.add_metric([w], value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["worker"])
            family.add_metric([w], value)
            return family

        info = GaugeMetricFamily(
            "cachegate_info",
            "Always 1: the backend kind and how many worker processes serve the port.",
            labels=["backend", "workers", "worker"],
        )
        info.add_metric([snap.backend, self._workers, w], 1)
        yield info

        count = GaugeMetricFamily(
            "db_client_connection_count",
            "Redis connections currently open, by state (idle in the pool, or used).",
            labels=["state", "worker"],
        )
        count.add_metric(["idle", w], snap.connections.idle)
        count.add_metric(["used", w], snap.connections.in_use)
        yield count
        yield gauge(
            "db_client_connection_max",
            "Most Redis connections this process may open (REDIS_MAX_CONNECTIONS, per worker).",
            snap.max_connections,
        )
        yield gauge(
            "db_client_connection_pending_requests",
            "Calls waiting for a free Redis connection right now.",
            snap.pending_requests,
        )
        yield counter(
            "db_client_connection_timeouts",
            "Calls that found no free connection within REDIS_POOL_TIMEOUT.",
            calls.wait_timeouts_total,
        )
        yield counter(
            "db_client_connection_wait_time_seconds",
            "Seconds calls spent waiting for a free connection, summed.",
            round(snap.wait_seconds_total, 6),
        )

        yield gauge(
            "cachegate_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            BREAKER_STATE_VALUES[breaker.state.value],
        )
        yield gauge(
            "cachegate_breaker_consecutive_failures",
            "Outage-class failures in a row (the breaker opens at REDIS_FAILURE_THRESHOLD).",
            breaker.consecutive_failures,
        )
        yield counter(
            "cachegate_breaker_opened",
            "Times the breaker opened.",
            breaker.opened_total,
        )
        yield counter(
            "cachegate_breaker_rejected",
            "Calls the open breaker rejected without touching Redis.",
            breaker.rejected_total,
        )
        probes = CounterMetricFamily(
            "cachegate_breaker_probes",
            "Background PINGs of Redis while the breaker was open, by result (success "
            "half-opens the breaker).",
            labels=["result", "worker"],
        )
        probes.add_metric(["success", w], snap.probes_succeeded)
        probes.add_metric(["failure", w], snap.probes_failed)
        yield probes
        yield counter(
            "cachegate_redis_calls",
            "Attempts sent to Redis (each retry counts), batches as one.",
            calls.calls_total,
        )
        yield counter(
            "cachegate_redis_failures",
            "Attempts that failed with an outage-class error (refused, reset, timed out).",
            calls.failures_total,
        )
        yield counter(
            "cachegate_redis_retries",
            "Retries of idempotent commands after an outage-class error.",
            calls.retries_total,
        )
        yield counter(
            "cachegate_redis_round_trips_saved",
            "Unary calls that went to Redis in a round trip another call sent "
            "(CACHEGATE_AUTO_BATCH).",
            calls.round_trips_saved_total,
        )
        # The hit rate is hits / (hits + misses) of these two (the same counters as
        # health_check's and Stats' hit_rate): no third, separately computed copy.
        yield counter(
            "cachegate_cache_hits",
            "Reads that found their key; hit rate = hits / (hits + misses).",
            calls.hits_total,
        )
        yield counter(
            "cachegate_cache_misses",
            "Reads that found no value; hit rate = hits / (hits + misses).",
            calls.misses_total,
        )


class StaleCopyCollector:
    """Stale-if-error figures, read from the worker's copy (`StaleCopy.stats()`) at
    scrape time: the copy counts its answers itself, under the lock it takes anyway."""

    def __init__(self, copy: StaleCopy, *, worker: str = "0") -> None:
        self._copy = copy
        self._worker = worker

    def collect(self) -> Iterable[Metric]:
        stats = self._copy.stats()
        answers = CounterMetricFamily(
            "cachegate_stale_answers",
            "Gets (unary, or a batch's) answered stale from this worker's copy because "
            "Redis could not answer and the call allowed it (stale_if_error_seconds).",
            labels=["worker"],
        )
        answers.add_metric([self._worker], stats.served_total)
        yield answers
        held = GaugeMetricFamily(
            "cachegate_stale_copy_bytes",
            "Bytes this worker's stale copy holds now (keys, values and a fixed overhead "
            "per entry; at most CACHEGATE_STALE_COPY_BYTES).",
            labels=["worker"],
        )
        held.add_metric([self._worker], stats.bytes)
        yield held


class ServerMetrics:
    """Everything one server process exports: its registry, observer and collectors."""

    def __init__(
        self,
        pool: RedisConnectionPool,
        *,
        worker_id: int = 0,
        workers: int = 1,
        services: Iterable[ServiceDescriptor] = (CACHE, HEALTH),
        stale_copy: StaleCopy | None = None,
    ) -> None:
        worker = str(worker_id)
        self.registry = CollectorRegistry(auto_describe=False)
        self.observer = PrometheusObserver(self.registry, worker=worker, services=services)
        self.registry.register(PoolCollector(pool, worker=worker, workers=workers))
        if stale_copy is not None:
            self.registry.register(StaleCopyCollector(stale_copy, worker=worker))
        self._transitions = Counter(
            "cachegate_breaker_transitions_total",
            "Circuit breaker state changes, by from and to state.",
            ["from", "to", "worker"],
            registry=self.registry,
        )
        self._worker = worker
        for old, new in _TRANSITIONS:
            self._transitions.labels(old.value, new.value, worker)
        pool.add_state_listener(self._on_transition)
        # Counted as they happen (a listener _tls calls): _tls knows nothing of prometheus.
        self._tls_reloads = Counter(
            "cachegate_tls_reloads_total",
            "Changed certificate files, by result: applied (new connections get the new "
            "certificate) or rejected (the old one stays; the log says which file and why).",
            ["result", "worker"],
            registry=self.registry,
        )
        for result in TLS_RELOAD_RESULTS:
            self._tls_reloads.labels(result, worker)

    def _on_transition(self, old: CircuitState, new: CircuitState) -> None:
        self._transitions.labels(old.value, new.value, self._worker).inc()

    def tls_reloaded(self, result: str) -> None:
        """A certificate reload's outcome ("applied" or "rejected"), as _tls reports it."""
        self._tls_reloads.labels(result, self._worker).inc()
