"""PrometheusObserver: exact counts under threads, le buckets, series from the start."""

from __future__ import annotations

import threading

import grpc
from prometheus_client import CollectorRegistry

from cachegate.rpc._rpcmetrics import HANDLING_BUCKETS, PrometheusObserver

LABELS = {"grpc_service": "cachegate.v1.CacheService", "grpc_type": "unary", "worker": "3"}
GET, FUTURE = "/cachegate.v1.CacheService/Get", "/cachegate.v1.CacheService/Future"


def make() -> tuple[PrometheusObserver, CollectorRegistry]:
    registry = CollectorRegistry(auto_describe=False)
    return PrometheusObserver(registry, worker="3"), registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**LABELS, **labels})


def test_every_series_exists_at_zero_before_any_rpc() -> None:
    _, registry = make()
    assert sample(registry, "grpc_server_started_total", grpc_method="Get") == 0
    for code in grpc.StatusCode:
        value = sample(
            registry, "grpc_server_handled_total", grpc_method="SetEx", grpc_code=code.name
        )
        assert value == 0, code
    assert sample(registry, "grpc_server_handling_seconds_count", grpc_method="Stats") == 0


def test_buckets_count_values_up_to_and_including_their_bound() -> None:
    observer, registry = make()
    for seconds in (HANDLING_BUCKETS[0], 0.0003, 0.0005, 20.0):
        observer.handled(GET, grpc.StatusCode.OK, seconds)

    def bucket(le: str) -> float | None:
        return sample(registry, "grpc_server_handling_seconds_bucket", grpc_method="Get", le=le)

    assert bucket("0.0001") == 1  # exactly on the bound counts in it
    assert bucket("0.00025") == 1
    assert bucket("0.0005") == 3
    assert bucket("10.0") == 3
    assert bucket("+Inf") == 4
    assert sample(registry, "grpc_server_handling_seconds_count", grpc_method="Get") == 4
    total = sample(registry, "grpc_server_handling_seconds_sum", grpc_method="Get")
    assert total is not None
    assert abs(total - 20.0009) < 1e-9


def test_no_increment_is_lost_across_threads() -> None:
    observer, registry = make()

    def work() -> None:
        for _ in range(5_000):
            observer.started(GET)
            observer.handled(GET, grpc.StatusCode.NOT_FOUND, 0.001)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sample(registry, "grpc_server_started_total", grpc_method="Get") == 40_000
    handled = sample(
        registry, "grpc_server_handled_total", grpc_method="Get", grpc_code="NOT_FOUND"
    )
    assert handled == 40_000


def test_a_method_unknown_at_start_gets_its_series() -> None:
    observer, registry = make()
    observer.started(FUTURE)
    observer.handled(FUTURE, grpc.StatusCode.UNIMPLEMENTED, 0.002)
    assert sample(registry, "grpc_server_started_total", grpc_method="Future") == 1
    handled = sample(
        registry, "grpc_server_handled_total", grpc_method="Future", grpc_code="UNIMPLEMENTED"
    )
    assert handled == 1
