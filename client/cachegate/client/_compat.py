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

from cachegate.client._channel import SERVICE_NAME
from cachegate.client._client import CacheClient
from cachegate.client._errors import CacheClientError
from cachegate.client._feed import NearCacheFeed
from cachegate.client._legacy import (
    HEALTH_KEYS,
    LegacyCache,
    encode_value,
    health_report,
    unreachable_report,
)
from cachegate.client._near import NearCache

__all__ = ["HEALTH_KEYS", "RedisCache"]


class RedisCache(LegacyCache[CacheClient, NearCacheFeed]):
    """get / set / delete / health_check, as the old RedisCache had them.

    RedisCache(target=None, *, decode_responses=False, near_cache=None, client=None,
    timeout=5.0, token=None, stale_if_error=0): see LegacyCache.
    """

    client_type = CacheClient

    def _follow(self, near_cache: NearCache) -> NearCacheFeed:
        return NearCacheFeed(self.client, near_cache).start()

    def get(self, key: str) -> Any:
        """The value (bytes, or str with decode_responses), or None on a miss."""
        hit, value = self._lookup(key)
        if hit:
            return value
        entry = None
        try:
            entry = self.client.get_entry(key, stale_if_error=self.stale_if_error)
        finally:
            self._finish(key, entry)
        return self._value(entry)

    def set(self, key: str, value: bytes | str | int | float, ttl: int = 3600) -> bool:
        """Store `value` for `ttl` seconds (the guide's default: one hour)."""
        data = encode_value(value)
        self._before_write(key)
        self.client.set_ex(key, data, ttl)
        return self._written(key, data, ttl)

    def delete(self, key: str) -> bool:
        """True when the key existed."""
        self._before_write(key)
        return self.client.delete(key)

    def health_check(self) -> dict[str, Any]:
        """The guide's health dict, from the server's Stats (see health_report). Never
        raises: an unreachable server gives healthy=False and an `error` (the gRPC
        status and message)."""
        try:
            stats, serving = self.client.stats(), self.client.health(SERVICE_NAME)
        except CacheClientError as exc:
            return unreachable_report(exc)
        return health_report(stats, serving)

    def close(self) -> None:
        if self.feed is not None:
            self.feed.stop()
        self.client.close()
