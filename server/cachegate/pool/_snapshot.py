"""One typed snapshot of the pool: what `get_stats()`, `health_check()`, Stats and the
metrics all read, so that the figures of one report come from one moment.

`RedisConnectionPool.snapshot()` takes it without asking Redis (connections, the
breaker, the call counters); `health_report()` adds what a PING and an INFO learnt
of Redis (`RedisReport`). The guide's dicts are built from it: `stats_dict()` is
`get_stats()`, `health_dict()` is `health_check()`, key for key as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cachegate.core import BreakerSnapshot, CallStats
from cachegate.pool._backend import PoolCounts

__all__ = ["PoolSnapshot", "RedisReport"]


@dataclass(frozen=True, slots=True)
class RedisReport:
    """What one health check learnt of Redis; None for whatever it did not learn."""

    healthy: bool
    ping_ms: float | None = None
    version: str | None = None
    connected_clients: int | None = None
    used_memory_human: str | None = None
    error: str | None = None  # "ErrorClass: message" when not healthy


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """Pool, breaker and call figures of this process at one moment (and, from
    `health_report()`, Redis's)."""

    backend: str
    max_connections: int
    connections: PoolCounts
    pending_requests: int
    wait_seconds_total: float
    breaker: BreakerSnapshot
    calls: CallStats
    probes_succeeded: int
    probes_failed: int
    redis: RedisReport | None = None  # set by health_report(), None from snapshot()

    def stats_dict(self) -> dict[str, Any]:
        """`get_stats()`'s dict."""
        calls, breaker, connections = self.calls, self.breaker, self.connections
        return {
            "backend": self.backend,
            "max_connections": self.max_connections,
            "created_connections": connections.created,
            "available_connections": connections.idle,
            "in_use_connections": connections.in_use,
            "pending_requests": self.pending_requests,
            "wait_seconds_total": round(self.wait_seconds_total, 6),
            "circuit_state": breaker.state.value,
            "consecutive_failures": breaker.consecutive_failures,
            "retry_after": round(breaker.retry_after, 3),
            "breaker_opened_total": breaker.opened_total,
            "breaker_transitions_total": breaker.transitions_total,
            "calls": calls.calls_total,
            "failures": calls.failures_total,
            "retries": calls.retries_total,
            "rejected_calls": breaker.rejected_total,
            "breaker_probes_succeeded": self.probes_succeeded,
            "breaker_probes_failed": self.probes_failed,
            "pool_wait_timeouts": calls.wait_timeouts_total,
            "hits": calls.hits_total,
            "misses": calls.misses_total,
            "hit_rate": calls.hit_rate,  # None before any read (see CallStats.hit_rate)
            "round_trips_saved": calls.round_trips_saved_total,
        }

    def health_dict(self) -> dict[str, Any]:
        """`health_check()`'s dict (the seed's keys; see RedisConnectionPool.health_check)."""
        redis = self.redis or RedisReport(healthy=False, error="Redis was not asked")
        connections = self.connections
        return {
            "healthy": redis.healthy,
            "ping_ms": redis.ping_ms,
            "version": redis.version,
            "connected_clients": redis.connected_clients,
            "used_memory_human": redis.used_memory_human,
            "hit_rate": self.calls.hit_rate,
            "circuit_state": self.breaker.state.value,
            "pool": {
                "created_connections": connections.created,
                "available_connections": connections.idle,
                "in_use_connections": connections.in_use,
            },
            "backend": self.backend,
            "error": redis.error,
            "age_seconds": 0.0,  # the pool's own check: it just asked Redis
        }
