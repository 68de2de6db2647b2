"""AsyncRedisCache: the migration guide's RedisCache API as coroutines.

    from cachegate.client.aio import AsyncRedisCache
    cache = AsyncRedisCache()                    # connects to $CACHEGATE_TARGET
    await cache.set("key", "value", ttl=3600)
    await cache.get("key")                       # b"value" (or "value" with decode_responses)

Encoding, near cache and its invalidation feed, errors (a builtin ConnectionError when
the server is unreachable or its breaker is open), `stale_if_error` and the health
dict are RedisCache's: the decisions live in `cachegate.client._legacy` and
`cachegate.client._following`, shared by both.
"""

from __future__ import annotations

from typing import Any

from cachegate.client._channel import SERVICE_NAME
from cachegate.client._errors import CacheClientError
from cachegate.client._legacy import LegacyCache, encode_value, health_report, unreachable_report
from cachegate.client._near import NearCache
from cachegate.client.aio._client import AsyncCacheClient
from cachegate.client.aio._closing import AsyncClosing
from cachegate.client.aio._feed import AsyncNearCacheFeed

__all__ = ["AsyncRedisCache"]


class AsyncRedisCache(LegacyCache[AsyncCacheClient, AsyncNearCacheFeed], AsyncClosing):
    """get / set / delete / health_check of the old RedisCache, to be awaited.

    AsyncRedisCache(target=None, *, decode_responses=False, near_cache=None,
    client=None, timeout=5.0, token=None, invalidations=True, stale_if_error=0): see
    LegacyCache. A near cache follows the server's invalidations as RedisCache's does,
    on an asyncio task (`feed`, an AsyncNearCacheFeed) instead of a thread: the task
    starts on the first call, in its running loop (the loop the client belongs to),
    and `close()` ends it. `invalidations=False`: no feed, the TTL alone bounds how
    stale the near cache gets.
    """

    client_type = AsyncCacheClient

    def _follow(self, near_cache: NearCache) -> AsyncNearCacheFeed:
        return AsyncNearCacheFeed(self.client, near_cache)  # started by _started

    def _started(self) -> None:
        """Start the feed, on the first call: the cache may have been made before any
        loop ran, and the task belongs in the one the calls run in."""
        if self.feed is not None:
            self.feed.start()

    async def get(self, key: str) -> Any:
        """The value (bytes, or str with decode_responses), or None on a miss."""
        self._started()
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
        self._started()
        data = encode_value(value)
        self._before_write(key)
        await self.client.set_ex(key, data, ttl)
        return self._written(key, data, ttl)

    async def delete(self, key: str) -> bool:
        """True when the key existed."""
        self._started()
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
        """End the feed's task (if it runs), then close the client."""
        if self.feed is not None:
            await self.feed.stop()
        await self.client.close()
