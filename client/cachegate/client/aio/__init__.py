"""The asyncio client, on grpc.aio: still grpcio and protobuf only.

- `AsyncCacheClient`: `CacheClient`'s methods as coroutines (and async iterators for
  `stream` and `watch_health`), with the same deadlines, retry policy and exceptions.
- `AsyncRedisCache`: the migration guide's RedisCache API as coroutines.

Operations (`Get`, `SetEx`, `Delete`), `Result`, `NearCache` and the exceptions are
the sync client's own: import them from `cachegate.client`.
"""

from cachegate.client.aio._client import AsyncCacheClient
from cachegate.client.aio._compat import AsyncRedisCache

__all__ = ["AsyncCacheClient", "AsyncRedisCache"]
