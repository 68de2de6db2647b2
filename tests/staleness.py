"""What the stale-if-error tests share (sync and asyncio clients): the server's
settings in front of a redis-server the test kills, the allowance, and the metric."""

from __future__ import annotations

from conftest import RunningServer
from redisprocs import RedisProcess

__all__ = ["ALLOW", "stale_answers", "stale_env"]

ALLOW = 30  # seconds of staleness the tests' readers allow


def stale_env(redis: RedisProcess, **extra: str) -> dict[str, str]:
    """A server in front of `redis`; the breaker opens after 3 failures and stays open."""
    return {
        "CACHEGATE_BACKEND": "redis",
        "REDIS_URL": redis.url,
        "REDIS_SOCKET_TIMEOUT": "0.5",
        "REDIS_FAILURE_THRESHOLD": "3",
        "REDIS_RECOVERY_TIMEOUT": "30",  # stays open for the whole test
        "REDIS_PROBE_DELAY": "0",
        "REDIS_RETRY_ATTEMPTS": "0",
        **extra,
    }


def stale_answers(server: RunningServer) -> float:
    """cachegate_stale_answers_total of the server's worker 0."""
    value = server.service.metrics.registry.get_sample_value(
        "cachegate_stale_answers_total", {"worker": "0"}
    )
    assert value is not None, "cachegate_stale_answers_total is not exported"
    return value
