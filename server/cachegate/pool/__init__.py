"""The breaker-guarded Redis pool: the seed's API, usable in-process or behind the service.

    from cachegate.pool import get_redis_pool
    pool = get_redis_pool()
    pool.execute("setex", "user_session", 300, data)
    with pool.get_client() as client:
        pipe = client.pipeline()
        ...

Exceptions are drawn in `cachegate.pool._errors`.
"""

from cachegate.core import CircuitOpenError
from cachegate.pool._bounded import PartialRead, TooLarge
from cachegate.pool._errors import (
    CacheError,
    CommandError,
    PoolExhaustedError,
    RedisOutOfMemoryError,
    RedisTimeoutError,
    RedisUnavailableError,
)
from cachegate.pool._global import close_redis_pool, get_redis_pool
from cachegate.pool._pool import RedisConnectionPool
from cachegate.pool._tracking import InvalidationTracker, TrackingListener, tracker_for

__all__ = [
    "CacheError",
    "CircuitOpenError",
    "CommandError",
    "InvalidationTracker",
    "PartialRead",
    "PoolExhaustedError",
    "RedisConnectionPool",
    "RedisOutOfMemoryError",
    "RedisTimeoutError",
    "RedisUnavailableError",
    "TooLarge",
    "TrackingListener",
    "close_redis_pool",
    "get_redis_pool",
    "tracker_for",
]
