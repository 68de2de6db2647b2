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
`except ConnectionError:` keeps working.
"""

from __future__ import annotations

from typing import Any

from cachegate.client._client import SERVICE_NAME, CacheClient
from cachegate.client._near import NearCache

__all__ = ["RedisCache"]

CIRCUIT_STATES = {0: "unknown", 1: "closed", 2: "open", 3: "half-open"}


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
    ) -> None:
        self.client = client or CacheClient(target, timeout=timeout, token=token)
        self.decode_responses = decode_responses
        self.near_cache = near_cache

    def get(self, key: str) -> Any:
        """The value (bytes, or str with decode_responses), or None on a miss."""
        value = self.near_cache.get(key) if self.near_cache else None
        if value is None:
            value = self.client.get(key)
            if value is not None and self.near_cache:
                self.near_cache.put(key, value)
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
        """The guide's health dict, from the server's Stats. Raises ConnectionError when down.

        A client-role token's Stats carries no Redis figures (they need an admin
        token): then health rests on the health service alone, and the Redis and
        pool fields are empty.
        """
        stats = self.client.stats()
        redis_healthy = stats.redis.healthy if stats.HasField("redis") else True
        return {
            "healthy": redis_healthy and self.client.health(SERVICE_NAME) == "SERVING",
            "ping_ms": stats.redis.ping_ms,
            "version": stats.redis.version,
            "connected_clients": stats.redis.connected_clients,
            "used_memory_human": stats.redis.used_memory_human,
            "hit_rate": stats.redis.hit_rate,
            "circuit_state": CIRCUIT_STATES.get(stats.breaker.state, "unknown"),
            "pool": {
                "created_connections": stats.pool.created_connections,
                "available_connections": stats.pool.available_connections,
                "in_use_connections": stats.pool.in_use_connections,
            },
        }

    def close(self) -> None:
        self.client.close()
