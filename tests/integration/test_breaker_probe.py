"""Recovery by probing, against a real redis-server: the pool's prober thread of an open
breaker (started by the breaker's listener, gone while closed, stopped by close()), and
a probe that never undoes an operator's forced open."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cachegate.core import CircuitState, load_config
from cachegate.pool import CircuitOpenError, RedisConnectionPool, RedisUnavailableError
from cachegate.rpc._health import SERVICE_NAME, HealthReporter
from redisprocs import RedisProcess, wait_until

PROBER = "cachegate-breaker-probe"
# The recovery timeout is far beyond every wait here: only a probe can end the wait.
RECOVERY_TIMEOUT = "60"


def probers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == PROBER and t.is_alive()]


def state(pool: RedisConnectionPool) -> CircuitState:
    return pool.breaker.state


def probes(pool: RedisConnectionPool) -> tuple[int, int]:
    stats = pool.get_stats()
    return stats["breaker_probes_succeeded"], stats["breaker_probes_failed"]


@pytest.fixture
def pool(redis_server: RedisProcess) -> Iterator[RedisConnectionPool]:
    p = RedisConnectionPool(
        load_config(
            {
                "CACHEGATE_BACKEND": "redis",
                "REDIS_URL": redis_server.url,
                "REDIS_FAILURE_THRESHOLD": "3",
                "REDIS_RECOVERY_TIMEOUT": RECOVERY_TIMEOUT,
                "REDIS_PROBE_DELAY": "0.2",
                "REDIS_SOCKET_TIMEOUT": "0.3",
                "REDIS_RETRY_ATTEMPTS": "0",
            }
        )
    )
    yield p
    p.close()


def open_breaker(pool: RedisConnectionPool, redis_server: RedisProcess) -> None:
    redis_server.kill()
    for _ in range(3):
        with pytest.raises(RedisUnavailableError):
            pool.execute("get", "k")
    assert state(pool) is CircuitState.OPEN


def test_a_probe_half_opens_the_breaker_once_redis_is_back(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    assert pool.execute("ping") is True
    assert probers() == []  # no thread while closed
    open_breaker(pool, redis_server)
    assert len(probers()) == 1
    wait_until(lambda: probes(pool)[1] >= 2, timeout=5, what="two failed probes")
    assert state(pool) is CircuitState.OPEN  # failed probes change nothing
    with pytest.raises(CircuitOpenError) as caught:
        pool.execute("get", "k")
    # The hint is the next probe (0.8 s apart by now, a few seconds at most on a slow
    # machine), not the end of the 60 s recovery timeout.
    assert 0 <= caught.value.retry_after < 10
    redis_server.restart()
    wait_until(
        lambda: state(pool) is CircuitState.HALF_OPEN, timeout=5, what="a probe half-opening"
    )
    assert probes(pool)[0] == 1
    wait_until(lambda: not probers(), timeout=5, what="the prober ending")
    assert pool.execute("set", "k", b"back") is True  # the trial call closes it
    assert state(pool) is CircuitState.CLOSED
    assert probers() == []


def test_a_probe_never_undoes_a_forced_open(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    assert pool.execute("ping") is True
    pool.breaker.force_open()
    # Several probe intervals with Redis up: the breaker stays forced open, unprobed.
    time.sleep(1.0)
    assert state(pool) is CircuitState.OPEN
    assert pool.breaker.snapshot().forced
    assert probes(pool) == (0, 0)
    assert probers() == []
    with pytest.raises(CircuitOpenError) as caught:
        pool.execute("get", "k")
    assert caught.value.retry_after == float(RECOVERY_TIMEOUT)  # no probe to hint at
    pool.breaker.reset()
    assert state(pool) is CircuitState.CLOSED


def test_close_stops_the_prober(pool: RedisConnectionPool, redis_server: RedisProcess) -> None:
    open_breaker(pool, redis_server)
    assert len(probers()) == 1
    pool.close()
    assert probers() == []


def test_probe_delay_zero_turns_probing_off(redis_server: RedisProcess) -> None:
    pool = RedisConnectionPool(
        load_config(
            {
                "CACHEGATE_BACKEND": "redis",
                "REDIS_URL": redis_server.url,
                "REDIS_FAILURE_THRESHOLD": "1",
                "REDIS_RECOVERY_TIMEOUT": RECOVERY_TIMEOUT,
                "REDIS_PROBE_DELAY": "0",
                "REDIS_RETRY_ATTEMPTS": "0",
            }
        )
    )
    try:
        redis_server.kill()
        with pytest.raises(RedisUnavailableError):
            pool.execute("get", "k")
        assert state(pool) is CircuitState.OPEN
        assert probers() == []
    finally:
        pool.close()


def test_with_no_traffic_the_service_is_serving_again_soon_after_redis_is(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    # Behind a readiness probe a NOT_SERVING pod gets no calls, so no call can take the
    # half-open trial: the health prober must take it as soon as a probe half-opens the
    # breaker, not when the recovery timeout (60 s here) would have ended.
    health = HealthReporter(pool, probe_interval=0.1)
    health.start()
    try:
        assert health.wait_ready(5)
        open_breaker(pool, redis_server)
        redis_server.restart()
        restarted = time.monotonic()
        wait_until(
            lambda: state(pool) is CircuitState.CLOSED,
            timeout=10,
            what="the breaker to close with no traffic",
        )
        assert time.monotonic() - restarted < 10 < float(RECOVERY_TIMEOUT)
        no_context = cast(grpc.ServicerContext, None)  # Check reads nothing from it
        reply = health.servicer.Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), no_context
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        health.shutdown()
