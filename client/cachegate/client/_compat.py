"""RedisCache: the migration guide's compatibility API, served by a cachegate server.

Legacy code changes one import and keeps working:

    from cachegate.client import RedisCache      # was: from api.cache import RedisCache
    cache = RedisCache()                         # connects to $CACHEGATE_TARGET
    cache.set("key", "value", ttl=3600)
    cache.get("key")                             # b"value" (or "value" with decode_responses)

Encoding: values travel as bytes. `str` is sent as UTF-8 and `int`/`float` as
their decimal text, like redis-py; `get` returns bytes, or str when the cache
was made with `decode_responses=True` (redis-py's option of the same name).
With the server unreachable or its breaker open, calls raise
CacheUnavailableError, a builtin ConnectionError, so the guide's
`except ConnectionError:` keeps working. `RedisCache(stale_if_error=30)` lets
`get` return a value up to 30 s old that the server kept, while Redis cannot
answer (see CacheClient.get); without one the call raises as before.
"""

from __future__ import annotations

from typing import Any

from cachegate.client._client import SERVICE_NAME, CacheClient
from cachegate.client._errors import CacheClientError
from cachegate.client._near import NearCache
from cachegate.v1 import cache_pb2 as pb

__all__ = ["HEALTH_KEYS", "RedisCache"]

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
CIRCUIT_STATES = {1: "closed", 2: "open", 3: "half-open"}


def _encode(value: bytes | str | int | float) -> bytes:
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


class RedisCache:
    """get / set / delete / health_check, as the old RedisCache had them."""

    def __init__(
        self,
        target: str | None = None,
        *,
        decode_responses: bool = False,
        near_cache: NearCache | None = None,
        client: CacheClient | None = None,
        timeout: float = 5.0,
        token: str | None = None,
        stale_if_error: int = 0,
    ) -> None:
        self.client = client or CacheClient(target, timeout=timeout, token=token)
        self.decode_responses = decode_responses
        self.near_cache = near_cache
        self.stale_if_error = stale_if_error

    def get(self, key: str) -> Any:
        """The value (bytes, or str with decode_responses), or None on a miss."""
        value = self.near_cache.get(key) if self.near_cache else None
        if value is None:
            entry = self.client.get_entry(key, stale_if_error=self.stale_if_error)
            value = None if entry is None else entry.value
            # A stale value is not put in the near cache: it would outlive its allowance.
            if entry is not None and not entry.stale and self.near_cache:
                self.near_cache.put(key, entry.value)
        if value is None or not self.decode_responses:
            return value
        return value.decode("utf-8")

    def set(self, key: str, value: bytes | str | int | float, ttl: int = 3600) -> bool:
        """Store `value` for `ttl` seconds (the guide's default: one hour)."""
        data = _encode(value)
        if self.near_cache:
            self.near_cache.invalidate(key)  # even if the write fails: no stale hit after
        self.client.set_ex(key, data, ttl)
        if self.near_cache:
            self.near_cache.put(key, data, ttl)
        return True

    def delete(self, key: str) -> bool:
        """True when the key existed."""
        if self.near_cache:
            self.near_cache.invalidate(key)
        return self.client.delete(key)

    def health_check(self) -> dict[str, Any]:
        """The guide's health dict, from the server's Stats. Never raises.

        Same keys as the in-process pool's health_check (HEALTH_KEYS); None for
        whatever is unknown. An unreachable server gives healthy=False and an
        `error` (the gRPC status and message). The Redis figures are the server's
        latest background probe, `age_seconds` old (Stats never waits for Redis).
        `hit_rate` is hits / (hits + misses) of the reads the answering server
        process made, None before any read. A client-role token's Stats carries no
        Redis, pool or call figures (they need an admin token): those are None and
        health rests on the gRPC health service alone.
        """
        report: dict[str, Any] = dict.fromkeys(HEALTH_KEYS)
        report["healthy"] = False
        report["pool"] = dict.fromkeys(POOL_KEYS)
        try:
            stats = self.client.stats()
            serving = self.client.health(SERVICE_NAME)
        except CacheClientError as exc:
            report["error"] = f"{exc.code.name}: {exc}"
            return report
        report["backend"] = stats.backend or None
        report["circuit_state"] = CIRCUIT_STATES.get(stats.breaker.state)
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

    def close(self) -> None:
        self.client.close()


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
