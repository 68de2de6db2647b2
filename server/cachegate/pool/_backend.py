"""What every backend offers the pool, and what the redis-py backends share.

Every backend offers the same small surface to the pool: run one command with
a read timeout, run a batch, report connection counts and server info, close.
memory, redis and sentinel share one implementation over a redis-py
`ConnectionPool` (`_connection_backend.py`; the embedded one is `_memory.py`);
cluster uses `RedisCluster`, which routes by slot and follows failovers itself
(`_cluster.py`). `_backends.make_backend` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from cachegate.core import Config

__all__ = [
    "Backend",
    "Command",
    "PoolCounts",
    "ServerInfo",
    "connection_kwargs",
    "human_bytes",
    "info_from",
    "no_retry",
    "value_and_ttl",
]

Command = Sequence[Any]


@dataclass(frozen=True, slots=True)
class PoolCounts:
    created: int
    idle: int
    in_use: int


@dataclass(frozen=True, slots=True)
class ServerInfo:
    version: str
    connected_clients: int
    used_memory_human: str
    keyspace_hits: int | None  # None when the server does not count them
    keyspace_misses: int | None


class Backend(Protocol):
    kind: str

    @property
    def client(self) -> redis.Redis | RedisCluster:
        """A redis-py client over this backend's pool (what `get_client()` hands out)."""
        ...

    def run(self, command: Command, timeout: float) -> Any:
        """Run one command; wait at most `timeout` seconds for its reply."""
        ...

    def run_batch(
        self, commands: Sequence[Command], timeout: float, max_bytes: int | None = None
    ) -> list[Any]:
        """Run commands as one pipeline; an error reply stands in its place as an exception.

        With `max_bytes`, the values its GETs return add up to at most that many bytes;
        a value left out stands as TooLarge (see _bounded.py).
        """
        ...

    def get_many(
        self, keys: Sequence[str | bytes], timeout: float, max_bytes: int | None = None
    ) -> list[Any]:
        """Values of `keys`, in order, None for a miss; with `max_bytes`, as run_batch."""
        ...

    def run_each(self, commands: Sequence[Command], timeout: float) -> list[Any]:
        """Run commands as one pipeline, each as itself (no GETs read as one MGET, so a
        key of another type is WRONGTYPE as for a single GET): one reply per command,
        an error reply standing as an exception in its place (auto-batching)."""
        ...

    def get_with_ttl(self, key: str | bytes, timeout: float) -> tuple[Any, Any]:
        """GET and PTTL of `key` as one transaction (MULTI/EXEC): the replies belong to
        the same instant. An error reply (WRONGTYPE, a refused command) is raised."""
        ...

    def counts(self) -> PoolCounts: ...

    def reap_idle(self, max_idle: float) -> int:
        """Close connections idle for longer than `max_idle` seconds; how many closed."""
        ...

    def info(self, timeout: float) -> ServerInfo: ...

    def close(self) -> None: ...


def no_retry() -> Retry:
    # redis-py 8 retries 10 times by default; our pool has the one retry layer.
    return Retry(NoBackoff(), 0)


def connection_kwargs(config: Config) -> dict[str, Any]:
    """redis-py connection settings from the config (standalone, sentinel, cluster)."""
    settings, pool = config.redis, config.pool
    kwargs: dict[str, Any] = {
        "db": settings.db,
        "username": settings.username,
        "password": settings.password.value if settings.password else None,
        "socket_timeout": pool.socket_timeout,
        "socket_connect_timeout": pool.connect_timeout,
        "health_check_interval": pool.health_check_interval,
        "retry": no_retry(),
        # No CLIENT SETNAME / SETINFO on connect: without a password a new connection
        # then costs no round trip, so the caller's deadline bounds it like any read.
        "driver_info": None,
        # RESP2, not redis-py 8's default RESP3: no HELLO round trip per new connection.
        "protocol": 2,
    }
    if settings.tls:
        kwargs.update(
            ssl_ca_certs=settings.tls_ca_file,
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
        )
    return kwargs


def human_bytes(n: int) -> str:
    """Redis's own `used_memory_human` style (1.50M), for sums across cluster nodes."""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.2f}{unit}" if unit != "B" else f"{n}B"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def info_from(sections: Mapping[str, Any]) -> ServerInfo:
    """ServerInfo from redis-py's parsed INFO reply."""
    return ServerInfo(
        version=str(sections.get("redis_version", "")),
        connected_clients=int(sections.get("connected_clients", 0)),
        used_memory_human=str(sections.get("used_memory_human", "")),
        keyspace_hits=int(sections.get("keyspace_hits", 0)),
        keyspace_misses=int(sections.get("keyspace_misses", 0)),
    )


def value_and_ttl(replies: Sequence[Any]) -> tuple[Any, Any]:
    """GET's and PTTL's replies out of MULTI/EXEC's, or the error that stopped them."""
    executed = replies[-1]
    if not isinstance(executed, list):  # EXECABORT: a queued command was refused
        raise next(reply for reply in replies if isinstance(reply, Exception))
    value, pttl = executed
    for reply in executed:
        if isinstance(reply, Exception):
            raise reply
    return value, pttl
