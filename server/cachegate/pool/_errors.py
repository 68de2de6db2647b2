"""The pool's exceptions, and the one place that maps redis-py's errors onto them.

They hang under the server side's one root, `cachegate.core.CacheError`; the whole
tree, with the bases each class keeps for the guide's ``except ConnectionError`` and
for code written against redis-py, is drawn in `cachegate.core._errors`.
"""

from __future__ import annotations

import builtins
from enum import Enum

import redis.exceptions as rex

from cachegate.core import CacheError

__all__ = [
    "CommandError",
    "ErrorKind",
    "PoolExhaustedError",
    "RedisOutOfMemoryError",
    "RedisTimeoutError",
    "RedisUnavailableError",
    "classify",
]


class RedisUnavailableError(CacheError, rex.ConnectionError, builtins.ConnectionError):
    """Redis could not be reached or dropped the connection (an outage, for the breaker)."""


class RedisTimeoutError(RedisUnavailableError, rex.TimeoutError, builtins.TimeoutError):
    """Redis did not answer within the socket timeout or the caller's deadline."""


class PoolExhaustedError(CacheError, builtins.ConnectionError):
    """Every connection stayed busy for the whole wait timeout (capacity, not an outage)."""


class CommandError(CacheError):
    """Redis rejected the command (WRONGTYPE, wrong arguments, ...): the server is fine."""


class RedisOutOfMemoryError(CommandError):
    """Redis reached maxmemory (with a no-eviction policy) and refused a write."""


class ErrorKind(Enum):
    """What an error from redis-py says about Redis, which decides breaker and retry."""

    OUTAGE = "outage"  # connection refused/reset, cluster down: counts against Redis
    TIMEOUT = "timeout"  # no reply in time: counts against Redis, may be retried
    CAPACITY = "capacity"  # our own pool is full: says nothing about Redis
    REPLY = "reply"  # Redis answered with an error: Redis is up


def classify(exc: BaseException) -> ErrorKind | None:
    """Sort a redis-py exception; None for anything that is not redis-py's."""
    if isinstance(exc, rex.MaxConnectionsError):
        return ErrorKind.CAPACITY
    if isinstance(exc, rex.TimeoutError | TimeoutError):
        return ErrorKind.TIMEOUT
    # ClusterDownError is a ResponseError too, but it means the cluster cannot serve.
    if isinstance(exc, rex.ConnectionError | rex.ClusterError | rex.RedisClusterException):
        return ErrorKind.OUTAGE
    if isinstance(exc, rex.TryAgainError):
        return ErrorKind.OUTAGE
    if isinstance(exc, rex.RedisError):
        return ErrorKind.REPLY
    if isinstance(exc, OSError):
        return ErrorKind.OUTAGE
    return None


def translate(exc: BaseException, kind: ErrorKind) -> CacheError:
    """Our exception for a classified redis-py error (raise it `from exc`)."""
    if kind is ErrorKind.TIMEOUT:
        return RedisTimeoutError(f"Redis did not answer in time: {exc}")
    if kind is ErrorKind.OUTAGE:
        return RedisUnavailableError(f"Redis is unavailable: {exc}")
    if kind is ErrorKind.CAPACITY:
        return PoolExhaustedError(f"no Redis connection free: {exc}")
    if isinstance(exc, rex.OutOfMemoryError):
        return RedisOutOfMemoryError(str(exc))
    return CommandError(str(exc))
