"""A LIFO of released connections in front of redis-py's ConnectionPool.

redis-py 8's checkout and release take its lock, update its in-use set, write two
observability records per checkout and send a release event per release: work that
costs more than our whole pool layer under load (docs/performance.md, "parked
connections", has the figures). Between back-to-back calls the connection needs none
of it, so `ParkingPool.release()` parks a healthy connection on a LIFO, and
`get_connection()` hands the most recently parked one out first.

The connections stay redis-py's: it made them, counts them (a parked connection is
"in use" to redis-py's bookkeeping; `get_connection_count()` reports it as idle),
health-checks them and closes them. What redis-py checks on checkout still runs: fork safety
(its `_checkpid`) and its socket test (a connection Redis closed, or one holding stray
bytes, goes through redis-py's own checkout, which reconnects it). The LIFO never
grows past what callers hold at their peak, because a connection comes from
redis-py only when the LIFO is empty. What of redis-py this relies on is in _redispy.py.

Every user of the pool, redis.Redis clients included, goes through the same two
methods, so parked connections are never invisible to a caller that needs one.
Not for Sentinel pools: their release asks the sentinels whether the connection
still points at the master, which parking would skip.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from cachegate.pool._redispy import Connection, PoolBase, fork_check, ready_to_send, reusable

__all__ = ["ParkingPool"]


class ParkingPool(PoolBase):
    """Mixin for a redis-py ConnectionPool (it must come before the pool class)."""

    _parked: collections.deque[tuple[Connection, float]]  # (connection, parked at)

    def reset(self) -> None:  # redis-py calls it from __init__ and after a fork
        super().reset()
        self._parked = collections.deque()

    def get_connection(self, *args: Any, **kwargs: Any) -> Connection:
        # Arguments pass through untouched: redis-py 8 deprecates any it is given.
        fork_check(self)  # after a fork: reset, LIFO included
        try:
            connection, _ = self._parked.pop()  # deque.pop is atomic: no lock needed
        except IndexError:
            return super().get_connection(*args, **kwargs)
        if ready_to_send(connection):
            return connection
        super().release(connection)  # its checkout reconnects it
        return super().get_connection(*args, **kwargs)

    def release(self, connection: Connection) -> None:
        if reusable(self, connection):
            self._parked.append((connection, time.monotonic()))
        else:
            super().release(connection)

    def get_connection_count(self) -> list[tuple[int, dict[str, Any]]]:
        """redis-py's (idle, in use) counts, with parked connections counted as idle."""
        (idle, idle_attributes), (in_use, used_attributes) = super().get_connection_count()
        parked = min(len(self._parked), in_use)
        return [(idle + parked, idle_attributes), (in_use - parked, used_attributes)]

    def unpark(self, older_than: float) -> list[tuple[Connection, float]]:
        """Take connections parked for longer than `older_than` seconds off the LIFO.

        Returns them with the time they were parked; the caller hands each back to
        redis-py (`unpark` itself does not, so a subclass can stamp idle times).
        """
        cutoff = time.monotonic() - older_than
        taken: list[tuple[Connection, float]] = []
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
            super().release(connection)
        super().disconnect(inuse_connections)
