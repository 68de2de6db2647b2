"""A LIFO of released connections in front of redis-py's ConnectionPool.

Under load, redis-py 8's checkout and release cost more CPU per call than our whole
pool layer (docs/performance.md): its lock and in-use set, two observability
records per checkout and a release event per release. Between back-to-back calls
the connection does not need any of it, so `ParkingPool.release()` parks a healthy
connection on a LIFO, and `get_connection()` hands the most recently parked one out
first.

The connections stay redis-py's: it made them, counts them (a parked connection is
"in use" to redis-py's bookkeeping; `get_connection_count()` reports it as idle),
health-checks them and closes them. What redis-py checks on checkout still runs: fork safety
(`_checkpid`) and its socket test (a connection Redis closed, or one holding stray
bytes, goes through redis-py's own checkout, which reconnects it). The LIFO never
grows past what callers hold at their peak, because a connection comes from
redis-py only when the LIFO is empty.

Every user of the pool, redis.Redis clients included, goes through the same two
methods, so parked connections are never invisible to a caller that needs one.
Not for Sentinel pools: their release asks the sentinels whether the connection
still points at the master, which parking would skip.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import redis

__all__ = ["ParkingPool", "ready_to_send"]


def ready_to_send(connection: Any) -> bool:
    """redis-py's own checkout test: nothing to read (no stray reply, no EOF from Redis)."""
    try:
        return not connection.can_read()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


class ParkingPool:
    """Mixin for a redis-py ConnectionPool (it must come before the pool class)."""

    pid: int
    _parked: collections.deque[tuple[Any, float]]  # (connection, parked at)

    def reset(self) -> None:  # redis-py calls it from __init__ and after a fork
        super().reset()  # type: ignore[misc]
        self._parked = collections.deque()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        # Arguments pass through untouched: redis-py 8 deprecates any it is given.
        self._checkpid()  # type: ignore[attr-defined]  # after a fork: reset, LIFO included
        try:
            connection, _ = self._parked.pop()  # deque.pop is atomic: no lock needed
        except IndexError:
            return super().get_connection(*args, **kwargs)  # type: ignore[misc]
        if ready_to_send(connection):
            return connection
        super().release(connection)  # type: ignore[misc]  # its checkout reconnects it
        return super().get_connection(*args, **kwargs)  # type: ignore[misc]

    def release(self, connection: Any) -> None:
        if (
            connection.pid == self.pid
            and connection.is_connected
            and not connection.should_reconnect()
        ):
            self._parked.append((connection, time.monotonic()))
        else:
            super().release(connection)  # type: ignore[misc]

    def get_connection_count(self) -> list[tuple[int, dict[str, Any]]]:
        """redis-py's (idle, in use) counts, with parked connections counted as idle."""
        (idle, idle_attributes), (in_use, used_attributes) = super().get_connection_count()  # type: ignore[misc]
        parked = min(len(self._parked), in_use)
        return [(idle + parked, idle_attributes), (in_use - parked, used_attributes)]

    def unpark(self, older_than: float) -> list[tuple[Any, float]]:
        """Take connections parked for longer than `older_than` seconds off the LIFO.

        Returns them with the time they were parked; the caller hands each back to
        redis-py (`unpark` itself does not, so a subclass can stamp idle times).
        """
        cutoff = time.monotonic() - older_than
        taken: list[tuple[Any, float]] = []
        while True:
            try:
                connection, parked_at = self._parked.popleft()  # the oldest first
            except IndexError:
                return taken
            if parked_at >= cutoff:
                self._parked.appendleft((connection, parked_at))
                return taken
            taken.append((connection, parked_at))

    def disconnect(self, inuse_connections: bool = True) -> None:
        # Parked connections are idle: back to redis-py first, so that a disconnect
        # of idle connections only (inuse_connections=False) closes them too.
        for connection, _ in self.unpark(0.0):
            super().release(connection)  # type: ignore[misc]
        super().disconnect(inuse_connections)  # type: ignore[misc]
