"""The thin cachegate client: needs only grpcio and protobuf.

- `CacheClient`: the typed client (get, set_ex, delete, pipeline, stream, stats, health).
- `RedisCache`: the migration guide's compatibility API (one import to change).
- `NearCache`: an opt-in local cache with bounded size and staleness, kept coherent
  by the server's invalidations (`NearCacheFeed`, `CacheClient.invalidations`).
- Operations `Get`, `SetEx`, `Delete` and their `Result`s for pipelines.
- `CacheEntry`: a value with its stale flag and age (`CacheClient.get_entry`).
- Exceptions, mapped from gRPC status codes in `cachegate.client._errors`.

The asyncio client is `cachegate.client.aio` (`AsyncCacheClient`, `AsyncRedisCache`).
"""

from cachegate.client._channel import DEFAULT_TARGET, SERVICE_NAME
from cachegate.client._client import CacheClient
from cachegate.client._compat import RedisCache
from cachegate.client._errors import (
    CacheClientError,
    CacheUnavailableError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidRequestError,
    ResourceExhaustedError,
    ServerError,
)
from cachegate.client._feed import NearCacheFeed
from cachegate.client._invalidations import Invalidation, InvalidationStream
from cachegate.client._messages import HealthStatus
from cachegate.client._near import NearCache, NearCacheStats
from cachegate.client._ops import CacheEntry, Delete, Get, Operation, Result, SetEx

__all__ = [
    "DEFAULT_TARGET",
    "SERVICE_NAME",
    "CacheClient",
    "CacheClientError",
    "CacheEntry",
    "CacheUnavailableError",
    "DeadlineExceededError",
    "Delete",
    "FailedPreconditionError",
    "Get",
    "HealthStatus",
    "InvalidRequestError",
    "Invalidation",
    "InvalidationStream",
    "NearCache",
    "NearCacheFeed",
    "NearCacheStats",
    "Operation",
    "RedisCache",
    "ResourceExhaustedError",
    "Result",
    "ServerError",
    "SetEx",
]
