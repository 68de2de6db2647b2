"""The asyncio client, on grpc.aio: still grpcio and protobuf only.

- `AsyncCacheClient`: `CacheClient`'s methods as coroutines (and async iterators for
  `stream`, `watch_health` and `invalidations`), with the same deadlines, retry policy
  and exceptions.
- `AsyncRedisCache`: the migration guide's RedisCache API as coroutines; its near cache
  follows the server's invalidations on an asyncio task (`AsyncNearCacheFeed`).

Operations (`Get`, `SetEx`, `Delete`), `Result`, `NearCache` and the exceptions are
the sync client's own: import them from `cachegate.client`.
"""

from cachegate.client.aio._client import AsyncCacheClient
from cachegate.client.aio._compat import AsyncRedisCache
from cachegate.client.aio._feed import AsyncNearCacheFeed
from cachegate.client.aio._invalidations import AsyncInvalidationStream

__all__ = ["AsyncCacheClient", "AsyncInvalidationStream", "AsyncNearCacheFeed", "AsyncRedisCache"]
