"""redis-py's pools with idle connections closed, and the two pool classes cachegate uses.

redis-py keeps every connection it ever opened; after a burst, Redis would count
them forever. Connections are stamped when released, and the oldest idle ones
are closed by `reap_idle()` (the pool calls it now and then). What of redis-py
this relies on is in _redispy.py.
"""

from __future__ import annotations

import time

import redis
from redis.sentinel import SentinelConnectionPool

from cachegate.pool._parking import ParkingPool
from cachegate.pool._redispy import Connection, PoolBase, idle_since, stamp_idle, take_idle

__all__ = ["IdleReaping", "ReapingConnectionPool", "ReapingSentinelConnectionPool"]


class IdleReaping(PoolBase):
    """Mixin for redis-py pools: close connections left idle longer than a limit."""

    def release(self, connection: Connection) -> None:
        self.release_idle_since(connection, time.monotonic())

    def release_idle_since(self, connection: Connection, since: float) -> None:
        """Release a connection that has been idle since `since` (a monotonic time)."""
        stamp_idle(connection, since)
        super().release(connection)

    def reap_idle(self, max_idle: float) -> int:
        if isinstance(self, ParkingPool):  # parked long enough: idle since they were parked
            for connection, parked_at in self.unpark(max_idle):
                self.release_idle_since(connection, parked_at)
        cutoff = time.monotonic() - max_idle
        stale = take_idle(self, lambda c: idle_since(c, cutoff) < cutoff)
        for conn in stale:
            conn.disconnect()
        return len(stale)


class ReapingConnectionPool(ParkingPool, IdleReaping, redis.ConnectionPool):
    """redis-py's pool with parking (see _parking.py) and idle reaping."""


class ReapingSentinelConnectionPool(IdleReaping, SentinelConnectionPool):
    """No parking: redis-py's release checks that a connection still reaches the master."""
