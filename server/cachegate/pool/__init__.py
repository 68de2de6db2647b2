"""The breaker-guarded Redis pool: the seed's API, usable in-process or behind the service.

    from cachegate.pool import get_redis_pool
    pool = get_redis_pool()
    pool.execute("setex", "user_session", 300, data)
    with pool.get_client() as client:
        pipe = client.pipeline()
        ...

Every exception here is a `CacheError` (the server side's one root, re-exported from
`cachegate.core`); the unavailable ones are also the builtin ConnectionError. The tree
is drawn in `cachegate.core._errors`. `pool.snapshot()` and `pool.health_report()`
give the figures of `get_stats()` and `health_check()` typed (`PoolSnapshot`). What
the pool relies on in redis-py is listed in `_redispy.py`.
"""

from cachegate.core import CacheError, CircuitOpenError
from cachegate.pool._bounded import PartialRead, TooLarge
from cachegate.pool._errors import (
    CommandError,
    PoolExhaustedError,
    RedisOutOfMemoryError,
    RedisTimeoutError,
    RedisUnavailableError,
)
from cachegate.pool._global import close_redis_pool, get_redis_pool
from cachegate.pool._pool import RedisConnectionPool
from cachegate.pool._snapshot import PoolSnapshot, RedisReport
from cachegate.pool._tracking import InvalidationTracker, TrackingListener, tracker_for

__all__ = [
    "CacheError",
    "CircuitOpenError",
    "CommandError",
    "InvalidationTracker",
    "PartialRead",
    "PoolExhaustedError",
    "PoolSnapshot",
    "RedisConnectionPool",
    "RedisOutOfMemoryError",
    "RedisReport",
    "RedisTimeoutError",
    "RedisUnavailableError",
    "TooLarge",
    "TrackingListener",
    "close_redis_pool",
    "get_redis_pool",
    "tracker_for",
]
