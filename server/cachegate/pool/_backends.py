"""The backend that the config names, each built from redis-py's own clients and pools.

memory (`_memory.py`), redis and sentinel share one implementation over a redis-py
`ConnectionPool` (`_connection_backend.py`; redis-py's Sentinel supplies a pool
that follows the master); cluster uses `RedisCluster` (`_cluster.py`).
"""

from __future__ import annotations

import redis
from redis.sentinel import Sentinel

from cachegate.core import Config
from cachegate.pool._backend import Backend, connection_kwargs, no_retry
from cachegate.pool._cluster import ClusterBackend
from cachegate.pool._connection_backend import ConnectionBackend
from cachegate.pool._memory import memory_backend
from cachegate.pool._reaping import ReapingConnectionPool, ReapingSentinelConnectionPool

__all__ = ["make_backend"]


def _standalone(config: Config) -> ConnectionBackend:
    settings = config.redis
    kwargs = connection_kwargs(config)
    if settings.tls:
        kwargs["connection_class"] = redis.SSLConnection
    pool = ReapingConnectionPool(
        host=settings.host,
        port=settings.port,
        max_connections=config.pool.max_connections,
        **kwargs,
    )
    return ConnectionBackend("redis", pool, value_limit=config.limits.max_value_bytes)


def _sentinel(config: Config) -> ConnectionBackend:
    settings, pool_settings = config.redis, config.pool
    sentinel = Sentinel(
        [(a.host, a.port) for a in settings.sentinels],
        sentinel_kwargs={
            "socket_timeout": pool_settings.socket_timeout,
            "socket_connect_timeout": pool_settings.connect_timeout,
            "retry": no_retry(),
        },
    )
    kwargs = connection_kwargs(config)
    if settings.tls:
        kwargs["ssl"] = True
    # master_for's pool asks the sentinels for the master on every (re)connect, and its
    # connections turn a READONLY reply into a ConnectionError, so a failover leads to
    # rediscovery instead of repeated writes to a demoted master.
    client = sentinel.master_for(
        settings.sentinel_master,
        connection_pool_class=ReapingSentinelConnectionPool,
        max_connections=pool_settings.max_connections,
        **kwargs,
    )
    return ConnectionBackend(
        "sentinel", client.connection_pool, value_limit=config.limits.max_value_bytes
    )


def make_backend(config: Config) -> Backend:
    """The backend that `config.backend` names."""
    if config.backend == "memory":
        return memory_backend(config)
    if config.backend == "redis":
        return _standalone(config)
    if config.backend == "sentinel":
        return _sentinel(config)
    return ClusterBackend(config)
