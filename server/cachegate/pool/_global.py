"""The process-wide pool of the seed's API: `get_redis_pool()` / `close_redis_pool()`.

This is an entry point: it is the one place in the pool layer that reads the
environment, exactly as the seed's `api.services.redis_pool` did.
"""

from __future__ import annotations

import os
import threading

from cachegate.core import load_config
from cachegate.pool._pool import RedisConnectionPool

__all__ = ["close_redis_pool", "get_redis_pool"]

_lock = threading.Lock()
_pool: RedisConnectionPool | None = None


def get_redis_pool() -> RedisConnectionPool:
    """The process-wide pool, built from the environment on first use."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = RedisConnectionPool(load_config(os.environ))
        return _pool


def close_redis_pool() -> None:
    """Close the process-wide pool. Idempotent; the next get_redis_pool() builds a fresh one."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()
