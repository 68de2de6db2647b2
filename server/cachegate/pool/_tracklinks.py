"""The connections that hear of every change to Redis: one link per Redis master.

Redis's client-side caching in broadcast mode, RESP2 redirect flavour: one
connection SUBSCRIBEs to `__redis__:invalidate`, and a second one turns on
`CLIENT TRACKING on REDIRECT <first's id> BCAST [PREFIX p ...]`. From then on
Redis publishes, on the first connection, the name of every key that changes
under those prefixes (written, deleted, expired, evicted), whoever changed it,
and a nil list when the database is flushed. Tracking lives as long as the
second connection: both are opened and closed together.

RESP2 and not RESP3 push messages: the pool's connections speak RESP2 (no HELLO
round trip), and a subscribed connection is redis-py's oldest, best-worn path.

The embedded memory backend (fakeredis) has no CLIENT TRACKING; it publishes a
keyspace notification after every command that wrote keys, which a connection
to the same in-process server hears with PSUBSCRIBE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from cachegate.core import Address, Config
from cachegate.pool._backend import connection_kwargs

__all__ = [
    "FLUSHED",
    "FakeLink",
    "Link",
    "RedisLink",
    "Reply",
    "cluster_masters",
    "link_kwargs",
]

# What a link reads stands for one of these: changed keys, a flush, or nothing of note.
FLUSHED = None
Reply = list[bytes] | None

INVALIDATE_CHANNEL = b"__redis__:invalidate"
KEYSPACE_PATTERN = b"__keyspace@*__:*"


def link_kwargs(config: Config) -> dict[str, Any]:
    """redis-py Connection arguments for a tracking link (the pool's, less its pooling).

    No health-check PING before commands (a subscribed connection answers PING
    in-band, among the messages); the link's own heartbeat checks it instead.
    """
    kwargs = connection_kwargs(config)
    kwargs["health_check_interval"] = 0
    return kwargs


def _connection(address: Address, kwargs: dict[str, Any], tls: bool) -> redis.Connection:
    cls = redis.SSLConnection if tls else redis.Connection
    conn = cls(host=address.host, port=address.port, **kwargs)
    conn.connect()
    return conn


class Link:
    """One source of changes; `replies()` reads what has arrived, never blocking long."""

    name = "link"

    def fileno(self) -> int | None:
        """The socket to wait on with select, or None (then `wait` blocks instead)."""
        return None

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds for something to read (links without a socket)."""
        raise NotImplementedError

    def pending(self) -> bool:
        """Is a whole reply already buffered or readable right now?"""
        raise NotImplementedError

    def read(self) -> Reply | bool:
        """The next reply: changed keys, FLUSHED, or False for one of no note."""
        raise NotImplementedError

    def heartbeat(self) -> None:
        """Raise unless the link still tracks (see RedisLink)."""

    def close(self) -> None:
        raise NotImplementedError


class RedisLink(Link):
    """The two connections that track one Redis master (see the module's docstring)."""

    def __init__(
        self, address: Address, kwargs: dict[str, Any], tls: bool, prefixes: Sequence[str]
    ) -> None:
        self.name = str(address)
        self._subscriber = _connection(address, kwargs, tls)
        self._tracker: redis.Connection | None = None
        self._awaiting_pong = False
        try:
            self._subscriber.send_command("CLIENT", "ID")
            client_id = int(self._subscriber.read_response())
            self._subscriber.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
            self._subscriber.read_response()  # [subscribe, channel, 1]
            self._tracker = _connection(address, kwargs, tls)  # kwargs' db: SELECTed on connect
            words: list[str | int] = ["CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST"]
            for prefix in prefixes:
                words += ["PREFIX", prefix]
            self._tracker.send_command(*words)
            self._tracker.read_response()  # OK, or an error reply raised here
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int | None:
        sock = self._subscriber._sock
        return None if sock is None else sock.fileno()

    def pending(self) -> bool:
        return bool(self._subscriber.can_read(timeout=0))

    def read(self) -> Reply | bool:
        reply = self._subscriber.read_response()
        if not isinstance(reply, list) or not reply:
            return False
        kind = reply[0]
        if kind == b"message" and len(reply) == 3 and reply[1] == INVALIDATE_CHANNEL:
            keys = reply[2]
            return FLUSHED if keys is None else [bytes(k) for k in keys]
        if kind == b"pong":
            self._awaiting_pong = False
        return False

    def heartbeat(self) -> None:
        """Both connections answer and this node is still a master.

        The tracking connection must still be there (tracking ends with it, and the
        subscriber would never know), and it must still be a master: after a
        failover, writes go to the new master, whose changes this link would miss.
        The subscriber answers PING in-band: a PING still unanswered at the next
        heartbeat means the link hears nothing any more.
        """
        if self._awaiting_pong:
            raise redis.ConnectionError(f"{self.name}: the invalidation connection went quiet")
        assert self._tracker is not None
        self._tracker.send_command("ROLE")
        role = self._tracker.read_response()
        if not role or role[0] != b"master":
            raise redis.ConnectionError(f"{self.name} is no longer a master")
        self._subscriber.send_command("PING")
        self._awaiting_pong = True

    def command(self, *args: Any) -> Any:
        """A command on the tracking connection (cluster topology checks)."""
        assert self._tracker is not None
        self._tracker.send_command(*args)
        return self._tracker.read_response()

    def close(self) -> None:
        for conn in (self._tracker, self._subscriber):
            if conn is not None:
                conn.disconnect()


class FakeLink(Link):
    """The memory backend's: keyspace notifications of the in-process fakeredis server."""

    name = "memory"

    def __init__(self, connection_class: type[redis.Connection], kwargs: dict[str, Any]) -> None:
        self._conn = connection_class(**kwargs)
        self._conn.connect()
        self._conn.send_command("PSUBSCRIBE", KEYSPACE_PATTERN)
        self._conn.read_response()

    def wait(self, timeout: float) -> bool:
        return bool(self._conn.can_read(timeout=timeout))

    def pending(self) -> bool:
        return bool(self._conn.can_read(timeout=0))

    def read(self) -> Reply | bool:
        reply = self._conn.read_response()
        if isinstance(reply, list) and len(reply) == 4 and reply[0] == b"pmessage":
            _, _, key = bytes(reply[2]).partition(b"__:")
            return [key]
        return False

    def close(self) -> None:
        self._conn.disconnect()


def cluster_masters(nodes_text: str) -> list[Address]:
    """The masters that serve slots, from CLUSTER NODES' text, sorted."""
    masters = []
    for line in nodes_text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = fields[2].split(",")
        if "master" not in flags or "fail" in flags or "noaddr" in flags or len(fields) < 9:
            continue
        host, _, port = fields[1].split("@")[0].split(",")[0].rpartition(":")
        if host and port.isdigit():
            masters.append(Address(host, int(port)))
    return sorted(masters, key=str)
