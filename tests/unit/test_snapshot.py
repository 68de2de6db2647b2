"""PoolSnapshot: the typed figures behind get_stats() and health_check(), over the
embedded memory backend (no Redis process)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from cachegate.core import CircuitState, Config
from cachegate.pool import PoolSnapshot, RedisConnectionPool, RedisReport

GUIDE_HEALTH_KEYS = {
    "healthy",
    "ping_ms",
    "version",
    "connected_clients",
    "used_memory_human",
    "hit_rate",
    "circuit_state",
    "pool",
    "backend",
    "error",
    "age_seconds",
}


@pytest.fixture
def pool() -> Iterator[RedisConnectionPool]:
    p = RedisConnectionPool(Config())
    try:
        yield p
    finally:
        p.close()


def test_the_snapshot_holds_what_get_stats_reports(pool: RedisConnectionPool) -> None:
    pool.execute("setex", "k", 60, b"v")
    pool.execute("get", "k")
    pool.execute("get", "missing")
    snap = pool.snapshot()
    assert snap.redis is None  # no Redis call
    assert snap.calls.hits_total == 1
    assert snap.calls.misses_total == 1
    assert snap.calls.calls_total == 3
    assert snap.breaker.state is CircuitState.CLOSED
    assert snap.connections.created == 1
    assert snap.connections.idle == 1
    assert snap.stats_dict() == pool.get_stats()
    field = "backend"
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(snap, field, "redis")


def test_health_report_adds_redis_and_builds_the_guides_dict(pool: RedisConnectionPool) -> None:
    report = pool.health_report()
    assert isinstance(report, PoolSnapshot)
    assert report.redis is not None
    assert report.redis.healthy
    assert report.redis.error is None
    assert report.redis.ping_ms is not None
    health = report.health_dict()
    assert set(health) == GUIDE_HEALTH_KEYS
    assert set(pool.health_check()) == GUIDE_HEALTH_KEYS
    assert health["healthy"] is True
    assert health["backend"] == "memory"
    assert health["age_seconds"] == 0.0


def test_a_closed_pool_reports_unhealthy_with_the_reason(pool: RedisConnectionPool) -> None:
    pool.close()
    report = pool.health_report().redis
    assert report is not None
    assert not report.healthy
    assert report.error is not None
    assert report.error.startswith("RedisUnavailableError: ")
    health = pool.health_check()
    assert health["healthy"] is False
    assert health["ping_ms"] is None
    assert health["error"] == report.error


def test_a_snapshot_without_redis_says_so_in_the_health_dict(pool: RedisConnectionPool) -> None:
    health = pool.snapshot().health_dict()
    assert set(health) == GUIDE_HEALTH_KEYS
    assert health["healthy"] is False
    assert health["error"] == "Redis was not asked"
    asked = dataclasses.replace(pool.snapshot(), redis=RedisReport(healthy=True, ping_ms=0.5))
    assert asked.health_dict()["ping_ms"] == 0.5
    assert asked.health_dict()["version"] is None  # unknown stays None, never ''
