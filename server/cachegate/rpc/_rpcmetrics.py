"""RPC metrics: go-grpc-prometheus's three server metrics, counted as RPCs happen.

The observing interceptor (_observe.py) calls the `RpcObserver` hook twice per RPC of
every service; `PrometheusObserver` counts them as plain integers behind one lock and
makes them into metric families at scrape time (a custom collector), because
prometheus-client's own Counter and Histogram cost a measurable part of a unary call
(docs/performance.md). `ServerMetrics` (_metrics.py) registers it beside the pool's
figures.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from cachegate.rpc._services import CACHE, HEALTH

__all__ = ["GRPC_SERVICE", "HANDLING_BUCKETS", "PrometheusObserver"]

GRPC_SERVICE: str = CACHE.full_name  # "cachegate.v1.CacheService"

# A cached unary call takes well under a millisecond, so Prometheus's default buckets
# (5 ms .. 10 s) would put nearly every RPC in the first one; these start at 0.1 ms.
HANDLING_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def _grpc_type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming and server_streaming:
        return "bidi_stream"
    if client_streaming:
        return "client_stream"
    if server_streaming:
        return "server_stream"
    return "unary"


def _method_labels(services: Iterable[ServiceDescriptor]) -> dict[str, tuple[str, str, str]]:
    """Full method name ("/cachegate.v1.CacheService/Get") -> (grpc_type, grpc_service,
    grpc_method), straight from the contracts."""
    return {
        f"/{service.full_name}/{m.name}": (
            _grpc_type(m.client_streaming, m.server_streaming),
            service.full_name,
            m.name,
        )
        for service in services
        for m in service.methods
    }


def _labels_of_unknown(method: str) -> tuple[str, str, str]:
    """The labels of a method no served contract named: "/pkg.Service/Method", unary."""
    service, _, name = method.lstrip("/").rpartition("/")
    return "unary", service, name


class PrometheusObserver:
    """An `RpcObserver` keeping go-grpc-prometheus's three server metrics.

    grpc_server_started_total{grpc_type,grpc_service,grpc_method}
    grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
    grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method} (histogram)

    plus the `worker` label. `grpc_code` is the status code's name as grpc-python
    spells it ("OK", "INVALID_ARGUMENT"). Every (method, code) series exists from
    the start at 0, as go-grpc-prometheus pre-initialises them, so rate() and
    absent() work before the first error.

    Methods are full gRPC method names ("/cachegate.v1.CacheService/Get"). The
    series of every method of `services` (the server's served services, see
    `served_services`) exist from the start; a method of another service gets its
    series when first seen.

    The hot path is plain integers behind one lock, made into metric families when
    Prometheus scrapes (a custom collector): prometheus-client's Counter.inc() and
    Histogram.observe() take a lock per value and walk the buckets in Python, a
    measurable part of a unary call's instructions (docs/performance.md).
    """

    __slots__ = ("_handled", "_handling", "_labels_of", "_lock", "_started", "_worker")

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        worker: str = "0",
        services: Iterable[ServiceDescriptor] = (CACHE, HEALTH),
    ) -> None:
        self._worker = worker
        self._lock = threading.Lock()
        self._labels_of = _method_labels(services)
        self._started: dict[str, int] = {}
        self._handled: dict[tuple[str, grpc.StatusCode], int] = {}
        # method -> [count per bucket (the last one is +Inf), sum of seconds]
        self._handling: dict[str, list[Any]] = {}
        for method in self._labels_of:
            self._bind(method)
        registry.register(self)

    def _bind(self, method: str) -> None:
        """Create `method`'s series at 0 (with the lock held, or before sharing)."""
        if method not in self._labels_of:
            self._labels_of[method] = _labels_of_unknown(method)
        self._started.setdefault(method, 0)
        for code in grpc.StatusCode:
            self._handled.setdefault((method, code), 0)
        self._handling.setdefault(method, [[0] * (len(HANDLING_BUCKETS) + 1), 0.0])

    # --- the hot path: called twice per RPC ----------------------------------------

    def started(self, method: str) -> None:
        with self._lock:
            try:
                self._started[method] += 1
            except KeyError:  # a method the contract did not have when we started
                self._bind(method)
                self._started[method] += 1

    def handled(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        # le buckets: the first bound >= seconds counts it (bisect runs in C).
        bucket = bisect.bisect_left(HANDLING_BUCKETS, seconds)
        with self._lock:
            try:
                self._handled[(method, code)] += 1
            except KeyError:
                self._bind(method)
                self._handled[(method, code)] += 1
            handling = self._handling[method]
            handling[0][bucket] += 1
            handling[1] += seconds

    # --- scrape time ---------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            started = dict(self._started)
            handled = dict(self._handled)
            handling = {m: (list(counts), total) for m, (counts, total) in self._handling.items()}
        common = ["grpc_type", "grpc_service", "grpc_method", "worker"]
        started_family = CounterMetricFamily(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            labels=common,
        )
        for method, count in started.items():
            started_family.add_metric(self._labels(method), count)
        handled_family = CounterMetricFamily(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=[*common[:3], "grpc_code", "worker"],
        )
        for (method, code), count in handled.items():
            grpc_type, service, name, worker = self._labels(method)
            handled_family.add_metric([grpc_type, service, name, code.name, worker], count)
        handling_family = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels=common,
        )
        for method, (counts, total) in handling.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*HANDLING_BUCKETS, math.inf), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
            handling_family.add_metric(self._labels(method), buckets, total)
        yield from (started_family, handled_family, handling_family)

    def _labels(self, method: str) -> list[str]:
        return [*self._labels_of[method], self._worker]
