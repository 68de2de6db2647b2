"""AsyncRedisCache: the migration guide's RedisCache API as coroutines.

    from cachegate.client.aio import AsyncRedisCache
    cache = AsyncRedisCache()                    # connects to $CACHEGATE_TARGET
    await cache.set("key", "value", ttl=3600)
    await cache.get("key")                       # b"value" (or "value" with decode_responses)

Encoding, near cache, errors (a builtin ConnectionError when the server is
unreachable or its breaker is open), `stale_if_error` and the health dict are
RedisCache's: the decisions live in `cachegate.client._legacy`, shared by both.
"""

from __future__ import annotations

from typing import Any

from cachegate.client._channel import SERVICE_NAME
from cachegate.client._errors import CacheClientError
from cachegate.client._legacy import LegacyCache, encode_value, health_report, unreachable_report
from cachegate.client.aio._client import AsyncCacheClient
from cachegate.client.aio._closing import AsyncClosing

__all__ = ["AsyncRedisCache"]


class AsyncRedisCache(LegacyCache[AsyncCacheClient], AsyncClosing):
    """get / set / delete / health_check of the old RedisCache, to be awaited.

    AsyncRedisCache(target=None, *, decode_responses=False, near_cache=None,
    client=None, timeout=5.0, token=None, stale_if_error=0): see LegacyCache. The near
    cache has no invalidation feed here (that takes the sync client's stream on a
    thread): its TTL bounds how stale it gets.
    """

    client_type = AsyncCacheClient

    async def get(self, key: str) -> Any:
        """The value (bytes, or str with decode_responses), or None on a miss."""
        hit, value = self._lookup(key)
        if hit:
            return value
        entry = None
        try:
            entry = await self.client.get_entry(key, stale_if_error=self.stale_if_error)
        finally:
            self._finish(key, entry)
        return self._value(entry)

    async def set(self, key: str, value: bytes | str | int | float, ttl: int = 3600) -> bool:
        """Store `value` for `ttl` seconds (the guide's default: one hour)."""
        data = encode_value(value)
        self._before_write(key)
        await self.client.set_ex(key, data, ttl)
        return self._written(key, data, ttl)

    async def delete(self, key: str) -> bool:
        """True when the key existed."""
        self._before_write(key)
        return await self.client.delete(key)

    async def health_check(self) -> dict[str, Any]:
        """The guide's health dict (see health_report). Never raises: an unreachable
        server gives healthy=False and an `error` (the gRPC status and message)."""
        try:
            stats, serving = await self.client.stats(), await self.client.health(SERVICE_NAME)
        except CacheClientError as exc:
            return unreachable_report(exc)
        return health_report(stats, serving)

    async def close(self) -> None:
        await self.client.close()
