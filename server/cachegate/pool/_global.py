"""The process-wide pool of the seed's API: `get_redis_pool()` / `close_redis_pool()`.

This is an entry point: it is the one place in the pool layer that reads the
environment, exactly as the seed's `api.services.redis_pool` did. Like the guide's
pool it talks to Redis (REDIS_HOST/REDIS_PORT, default localhost:6379) unless
CACHEGATE_BACKEND names another backend, `memory` included; the rule itself is
`cachegate.core.select_backend`, shared with the server.
"""

from __future__ import annotations

import logging
import os
import threading

from cachegate.core import load_config
from cachegate.pool._pool import RedisConnectionPool

__all__ = ["close_redis_pool", "get_redis_pool"]

log = logging.getLogger("cachegate.pool")

_lock = threading.Lock()
_pool: RedisConnectionPool | None = None


def get_redis_pool() -> RedisConnectionPool:
    """The process-wide pool, built from the environment on first use."""
    global _pool
    with _lock:
        if _pool is None:
            config = load_config(os.environ, default_backend="redis")
            _pool = RedisConnectionPool(config)
            # One line, readable without a JSON formatter: an app migrating from the
            # guide sees where its cache lives (the password masked).
            log.info(
                "cachegate pool: backend %s at %s (chosen by %s)",
                config.backend,
                config.backend_target,
                config.backend_chosen_by,
                extra={
                    "backend": config.backend,
                    "redis": config.backend_target,
                    "backend_chosen_by": config.backend_chosen_by,
                },
            )
        return _pool


def close_redis_pool() -> None:
    """Close the process-wide pool. Idempotent; the next get_redis_pool() builds a fresh one."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()
