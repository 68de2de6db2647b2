"""The embedded memory backend: redis-py's pool over fakeredis, no Redis process.

For tests, demos and the guide's in-process use: the same ConnectionBackend as the
redis backend, with fakeredis's connection class under redis-py's pool, so every
path (parking, reaping, batches) runs as it does against a real Redis.
"""

from __future__ import annotations

import importlib.metadata

from cachegate.core import Config
from cachegate.pool._backend import Command, ServerInfo, no_retry
from cachegate.pool._connection_backend import ConnectionBackend
from cachegate.pool._reaping import ReapingConnectionPool

__all__ = ["memory_backend"]


def _memory_info(backend: ConnectionBackend, timeout: float) -> ServerInfo:
    # fakeredis has no INFO command; report what is true of the embedded server.
    backend.run(("PING",), timeout)
    return ServerInfo(
        version=f"fakeredis-{importlib.metadata.version('fakeredis')}",
        connected_clients=backend.counts().created,
        used_memory_human="n/a",
        keyspace_hits=None,
        keyspace_misses=None,
    )


def _setex_as_set(command: Command) -> Command:
    # fakeredis's SETEX stores int(now + ttl) as the expiry, cutting up to a second off
    # (a ttl of 1 written late in a second is gone at once); SET ... EX keeps it whole.
    if str(command[0]).upper() == "SETEX" and len(command) == 4:
        _, key, ttl, value = command
        return ("SET", key, value, "EX", ttl)
    return command


def memory_backend(config: Config) -> ConnectionBackend:
    import fakeredis  # only the memory backend needs it

    pool = ReapingConnectionPool(
        connection_class=fakeredis.FakeRedisConnection,
        server=fakeredis.FakeServer(),
        max_connections=config.pool.max_connections,
        retry=no_retry(),
    )
    # fakeredis runs Lua only with the optional lupa package: bounded reads go in chunks.
    return ConnectionBackend(
        "memory",
        pool,
        _memory_info,
        _setex_as_set,
        value_limit=config.limits.max_value_bytes,
        scripts=False,
    )
