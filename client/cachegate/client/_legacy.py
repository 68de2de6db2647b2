"""The migration guide's RedisCache API, minus the waiting: shared by `RedisCache`
(sync) and `AsyncRedisCache` (asyncio).

Everything a legacy call decides is here, once: how a value is encoded, how the near
cache is consulted and kept current around reads and writes, how a read is decoded,
and how Stats and health become the guide's health dict. The two classes only call
their client, with or without `await`.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from cachegate.client._channel import ClientBase
from cachegate.client._errors import CacheClientError
from cachegate.client._messages import HealthStatus
from cachegate.client._near import NearCache
from cachegate.client._ops import CacheEntry
from cachegate.v1 import cache_pb2 as pb

__all__ = [
    "CIRCUIT_STATE_FROM_PROTO",
    "HEALTH_KEYS",
    "POOL_KEYS",
    "LegacyCache",
    "encode_value",
    "health_report",
    "unreachable_report",
]

# The keys of health_check()'s dict, the same as the server's in-process
# RedisConnectionPool.health_check() (the client does not import the server: the
# shape is a documented rule that tests check on both sides). "pool" holds
# created_connections, available_connections and in_use_connections.
HEALTH_KEYS = (  # in the guide's order, then cachegate's additions
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
)
POOL_KEYS = ("created_connections", "available_connections", "in_use_connections")
# The client's one map from the wire's breaker states to the names the server's
# in-process health_check() gives them (its CircuitState values; the server's way
# there is cachegate.rpc._admin.CIRCUIT_STATE_TO_PROTO). Unknown values map to None.
CIRCUIT_STATE_FROM_PROTO: dict[pb.CircuitState, str] = {
    pb.CIRCUIT_STATE_CLOSED: "closed",
    pb.CIRCUIT_STATE_OPEN: "open",
    pb.CIRCUIT_STATE_HALF_OPEN: "half-open",
}

ClientT = TypeVar("ClientT", bound=ClientBase[Any])
FeedT = TypeVar("FeedT")  # the near cache's invalidation feed: a thread, or a task


def encode_value(value: bytes | str | int | float) -> bytes:
    """`str` as UTF-8, `int`/`float` as their decimal text (as redis-py does)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):  # bool is an int; redis-py refuses it too
        raise TypeError("bool values are ambiguous: store b'1'/b'0' or 'true'/'false'")
    if isinstance(value, int | float):
        return repr(value).encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"cannot store a {type(value).__name__}: use bytes, str, int or float")


class LegacyCache(Generic[ClientT, FeedT]):
    """The state of a RedisCache and every decision its calls make.

    Subclasses set `client_type`, make the near cache's feed (`_follow`), and implement
    get / set / delete / health_check as calls of `client` between the steps below.
    `stale_if_error` (seconds, 0 for none) is what every get allows: a value up to that
    old that the server kept, while Redis cannot answer (see CacheClient.get); without
    one a get raises as before.
    """

    client_type: type[ClientT]

    def __init__(
        self,
        target: str | None = None,
        *,
        decode_responses: bool = False,
        near_cache: NearCache | None = None,
        client: ClientT | None = None,
        timeout: float = 5.0,
        token: str | None = None,
        invalidations: bool = True,
        stale_if_error: int = 0,
    ) -> None:
        self.client = client or self.client_type(target, timeout=timeout, token=token)
        self.decode_responses = decode_responses
        self.near_cache = near_cache
        self.stale_if_error = stale_if_error
        # The near cache follows the server's invalidations (see _following.py);
        # without them only its TTL bounds how stale it gets.
        self.feed: FeedT | None = None
        if near_cache is not None and invalidations:
            self.feed = self._follow(near_cache)

    def _follow(self, near_cache: NearCache) -> FeedT:
        """The near cache's invalidation feed (started now, or on first use)."""
        raise NotImplementedError

    def _lookup(self, key: str) -> tuple[bool, Any]:
        """(True, value) on a near-cache hit. Otherwise (False, None), and with a near
        cache a load of `key` begins: end it with `_finish`, whatever happens."""
        if self.near_cache is None:
            return False, None
        cached = self.near_cache.get(key)
        if cached is not None:
            return True, self._decode(cached)
        self.near_cache.begin_load(key)
        return False, None

    def _finish(self, key: str, entry: CacheEntry | None) -> None:
        """End the load `_lookup` began. The value is kept unless the key changed
        meanwhile (see NearCache) or it is stale: a stale value would outlive its
        allowance there."""
        if self.near_cache is not None:
            fresh = entry.value if entry is not None and not entry.stale else None
            self.near_cache.end_load(key, fresh)

    def _value(self, entry: CacheEntry | None) -> Any:
        return None if entry is None else self._decode(entry.value)

    def _decode(self, value: bytes | None) -> Any:
        if value is None or not self.decode_responses:
            return value
        return value.decode("utf-8")

    def _before_write(self, key: str) -> None:
        """Forget `key` before a write or delete goes out: even if it fails, no stale hit."""
        if self.near_cache:
            self.near_cache.invalidate(key)

    def _written(self, key: str, data: bytes, ttl: int) -> bool:
        if self.near_cache and self.feed is None:
            # With a feed the write's own invalidation follows at once: a value put
            # here would be dropped by it, or could outlive a write made in between.
            self.near_cache.put(key, data, ttl)
        return True


def unreachable_report(error: CacheClientError) -> dict[str, Any]:
    """The health dict when Stats or health failed: healthy False, the status as error."""
    report: dict[str, Any] = dict.fromkeys(HEALTH_KEYS)
    report["healthy"] = False
    report["pool"] = dict.fromkeys(POOL_KEYS)
    report["error"] = f"{error.code.name}: {error}"
    return report


def health_report(stats: pb.StatsResponse, serving: HealthStatus) -> dict[str, Any]:
    """The guide's health dict, from the server's Stats and its cache service's health.

    Same keys as the in-process pool's health_check (HEALTH_KEYS); None for
    whatever is unknown. The Redis figures are the server's latest background
    probe, `age_seconds` old (Stats never waits for Redis). `hit_rate` is
    hits / (hits + misses) of the reads the answering server process made, None
    before any read. A client-role token's Stats carries no Redis, pool or call
    figures (they need an admin token): those are None and health rests on the gRPC
    health service alone.
    """
    report: dict[str, Any] = dict.fromkeys(HEALTH_KEYS)
    report["pool"] = dict.fromkeys(POOL_KEYS)
    report["backend"] = stats.backend or None
    report["circuit_state"] = CIRCUIT_STATE_FROM_PROTO.get(stats.breaker.state)
    if stats.HasField("pool"):
        report["pool"] = {name: getattr(stats.pool, name) for name in POOL_KEYS}
    if stats.HasField("calls"):
        reads = stats.calls.hits_total + stats.calls.misses_total
        report["hit_rate"] = stats.calls.hits_total / reads if reads else None
    redis_healthy = True
    if stats.HasField("redis"):
        report.update(_redis_fields(stats.redis))
        redis_healthy = stats.redis.healthy
    report["healthy"] = redis_healthy and serving == "SERVING"
    if not report["healthy"] and report["error"] is None:
        report["error"] = f"the server's health service says {serving}"
    return report


def _redis_fields(redis: pb.RedisInfo) -> dict[str, Any]:
    """RedisInfo's figures, with the wire's 0 / "" (unknown) as None."""
    return {
        "ping_ms": redis.ping_ms or None,
        "version": redis.version or None,
        "connected_clients": redis.connected_clients or None,
        "used_memory_human": redis.used_memory_human or None,
        "error": redis.error or None,
        "age_seconds": redis.age_seconds,
    }
