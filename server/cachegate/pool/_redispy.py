"""The one place the pool leans on redis-py below its public client API.

The pool runs commands on redis-py's connections itself instead of through
`Redis.execute_command`, for what that method cannot give:

- a read timeout per call (the caller's deadline): `execute_command` waits the
  pool-wide socket timeout, `read_response(timeout=)` waits what the call has left;
- redis-py's health PING of an idle connection within that same timeout (its own
  `check_health()` waits the whole socket timeout, past any deadline);
- parked connections in front of redis-py's checkout (`_parking.py`) and closing of
  connections left idle (`_reaping.py`), which reach into the pool's idle list;
- MGET and EVALSHA packed by hiredis in C (docs/performance.md says what each saves).

What this module relies on, each checked by tests/integration/test_redispy_contract.py
against the installed redis-py and a real redis-server, so that an upgrade that
changes any of it fails there and not in production:

1. `Connection.send_command(*args, check_health=False)`,
   `send_packed_command(chunks, check_health=False)`, `pack_commands(commands)` and
   `read_response(timeout=)`: send without redis-py's own health check; read one
   reply waiting at most `timeout`, raising redis.TimeoutError (and disconnecting)
   when none comes, so a late reply is never read by the next caller.
   `read_response()` without a timeout waits `Connection.socket_timeout` and leaves
   the socket's timeout alone (with one, redis-py sets it and sets it back).
2. `Connection.health_check_interval` and `next_health_check`: when redis-py would
   PING a connection before use (after `health_check_interval` seconds idle), and
   the text of its failure, "Bad response from PING health check".
3. `Connection.can_read()`, `pid`, `is_connected`, `should_reconnect()`: redis-py's
   checkout test (nothing to read), and what its release looks at.
4. `ConnectionPool._checkpid()`: after a fork it calls `reset()`, which `__init__`
   calls too, so a subclass's `reset()` sees every new start of the pool.
5. `ConnectionPool._lock`, `_available_connections`, `_created_connections`: the idle
   connections (LIFO, popped from the end) and the count of open ones, under the lock;
   and that a connection object takes an attribute of ours (when it went idle).
6. `ConnectionPool.get_connection_count()`: `[(idle, attributes), (in_use, attributes)]`.
7. `ConnectionPool.connection_class` and `connection_kwargs`: how to open one more
   connection like the pool's own, to ask Redis why it refused one.
8. `Redis.response_callbacks`: the reply callbacks `execute_command` applies, keyed by
   the command's name, or by "NAME SUB" for commands such as CONFIG GET (redis-py's
   `config_get()` sends "CONFIG GET" as one word; the pool's callers send two).
9. The messages "Connection not ready" / "Connection has data": redis-py's checkout of
   a new connection on which Redis wrote something (an error, then it hung up).
10. Redis's error texts, as redis-py raises them: "WRONGTYPE ..." as a ResponseError,
    "NOPERM ..." as NoPermissionError, "unknown command" as a ResponseError.
11. `hiredis.pack_command(tuple)`: packs a command of any length (its stub says a 1-tuple).

Nothing else in cachegate touches a private attribute of redis-py or matches its text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import hiredis
import redis
from redis.exceptions import NoPermissionError

__all__ = [
    "PING_FAILED",
    "Connection",
    "PoolBase",
    "ResponseCallbacks",
    "check_health",
    "fork_check",
    "idle_since",
    "is_lasting_refusal",
    "is_wrong_type",
    "new_connection_refused",
    "open_connections",
    "pack_command",
    "read",
    "ready_to_send",
    "request",
    "request_packed",
    "reusable",
    "send",
    "send_many",
    "send_packed",
    "stamp_idle",
    "take_idle",
    "why_refused",
]

# redis-py's connections are untyped to us: any of Connection, SSLConnection,
# SentinelManagedConnection or fakeredis's FakeRedisConnection.
Connection = Any

# Mixins of redis-py's ConnectionPool (parking, reaping) are typed as one, so that
# their super() calls are checked; at run time they are plain classes placed before
# the pool class (see ReapingConnectionPool).
if TYPE_CHECKING:
    PoolBase = redis.ConnectionPool
else:
    PoolBase = object

# redis-py's text for a health PING that got no PONG (relied-on item 2).
PING_FAILED = "Bad response from PING health check"

# How long asking Redis why it refused a connection may wait.
PROBE_TIMEOUT = 0.2

# (4) redis-py's fork check, taken as a plain function: one C-level call per checkout.
fork_check: Callable[[redis.ConnectionPool], None] = redis.ConnectionPool._checkpid

# (11) hiredis packs in C; redis-py's own packer walks every argument in Python.
pack_command = cast("Callable[[tuple[Any, ...]], bytes]", hiredis.pack_command)


# --- one connection: send, read, the health PING (1, 2, 3) -------------------------------


def check_health(conn: Connection, timeout: float) -> None:
    """redis-py's PING of a connection idle past its health interval, waiting `timeout` at most."""
    if conn.health_check_interval and time.monotonic() > conn.next_health_check:
        _ping(conn, timeout)


def _ping(conn: Connection, timeout: float) -> None:
    conn.send_command("PING", check_health=False)
    if read(conn, timeout) not in (b"PONG", "PONG"):
        conn.disconnect()
        raise redis.ConnectionError(PING_FAILED)


def request(conn: Connection, command: Sequence[Any], timeout: float) -> Any:
    """One command and its raw reply (no callback), the health PING first when due."""
    if conn.health_check_interval and time.monotonic() > conn.next_health_check:
        _ping(conn, timeout)
    conn.send_command(*command, check_health=False)
    return read(conn, timeout)


def request_packed(conn: Connection, packed: bytes, timeout: float) -> Any:
    """One command packed already (`pack_command`) and its raw reply, PING first when due."""
    if conn.health_check_interval and time.monotonic() > conn.next_health_check:
        _ping(conn, timeout)
    conn.send_packed_command([packed], check_health=False)
    return read(conn, timeout)


def send(conn: Connection, *command: Any) -> None:
    conn.send_command(*command, check_health=False)


def send_packed(conn: Connection, packed: bytes) -> None:
    conn.send_packed_command([packed], check_health=False)


def send_many(conn: Connection, commands: Sequence[Sequence[Any]]) -> None:
    """Commands as one write (a pipeline without MULTI); read one reply per command."""
    conn.send_packed_command(conn.pack_commands(commands), check_health=False)


def read(conn: Connection, timeout: float) -> Any:
    """One raw reply, waiting at most `timeout`; an error reply is raised (ResponseError)."""
    if timeout == conn.socket_timeout:
        # The socket waits this long already. A timeout of its own costs two
        # `settimeout` calls (set, then restore), each a system call that lets go of
        # the GIL: under load, a hand-off to another thread and back.
        return conn.read_response()
    return conn.read_response(timeout=timeout)


def ready_to_send(conn: Connection) -> bool:
    """redis-py's own checkout test: nothing to read (no stray reply, no EOF from Redis)."""
    try:
        return not conn.can_read()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def reusable(pool: redis.ConnectionPool, conn: Connection) -> bool:
    """Made by this process, connected and not marked for a reconnect (redis-py's release)."""
    return bool(conn.pid == pool.pid and conn.is_connected and not conn.should_reconnect())


# --- reply callbacks (8) -------------------------------------------------------------------


class ResponseCallbacks:
    """The callbacks redis-py's `execute_command` applies to replies, looked up as it does."""

    __slots__ = ("_callbacks",)

    def __init__(self, client: redis.Redis) -> None:
        self._callbacks: Mapping[str, Callable[..., Any]] = dict(client.response_callbacks)

    def parse(self, command: Sequence[Any], reply: Any) -> Any:
        """`reply` as `Redis.execute_command(*command)` would return it."""
        name = str(command[0]).upper()
        callbacks = self._callbacks
        if len(command) > 1 and isinstance(command[1], str):
            sub = callbacks.get(f"{name} {command[1].upper()}")
            if sub is not None:
                return sub(reply)
        callback = callbacks.get(name)
        return callback(reply) if callback else reply


# --- the pool's idle list and counts (5, 6, 7, 9) --------------------------------------------


# Our stamp on redis-py's connection objects: when it was last released (monotonic).
_IDLE_SINCE = "_cachegate_idle_since"


def stamp_idle(conn: Connection, since: float) -> None:
    """Note on the connection that it has been idle since `since` (a monotonic time)."""
    setattr(conn, _IDLE_SINCE, since)


def idle_since(conn: Connection, default: float) -> float:
    """When `stamp_idle` last noted the connection idle; `default` if never."""
    since: float = getattr(conn, _IDLE_SINCE, default)
    return since


def take_idle(pool: redis.ConnectionPool, idle_before: Callable[[Connection], bool]) -> list[Any]:
    """Take the idle connections `idle_before` picks out of redis-py's pool (they stop
    counting as open); the caller disconnects them."""
    with pool._lock:
        available: list[Any] = pool._available_connections
        stale = [c for c in available if idle_before(c)]
        for conn in stale:
            available.remove(conn)
        pool._created_connections -= len(stale)
    return stale


def open_connections(pool: redis.ConnectionPool) -> tuple[int, int]:
    """(idle, in use) as the pool counts them."""
    (idle, _), (in_use, _) = pool.get_connection_count()
    return idle, in_use


def new_connection_refused(exc: redis.ConnectionError) -> bool:
    """redis-py's checkout failed because Redis wrote on a new connection (and hung up),
    its own words for it hiding what Redis said."""
    text = str(exc)
    return "not ready" in text or "has data" in text


def why_refused(pool: redis.ConnectionPool) -> str | None:
    """What Redis says to one more connection like the pool's (max clients, ...), if anything."""
    probe = pool.connection_class(**pool.connection_kwargs)
    try:
        probe.connect()
        probe.send_command("PING", check_health=False)
        probe.read_response(timeout=PROBE_TIMEOUT)
    except redis.RedisError as exc:
        return str(exc)
    finally:
        probe.disconnect()
    return None


# --- Redis's error texts (10) ----------------------------------------------------------------


def is_wrong_type(exc: BaseException) -> bool:
    """A WRONGTYPE reply: the key holds another type (a miss, by MGET's rule)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("WRONGTYPE")


def is_lasting_refusal(exc: BaseException) -> bool:
    """Redis will refuse the command to this user for good: NOPERM, or an unknown command."""
    text = str(exc)
    if isinstance(exc, NoPermissionError) or text.startswith("NOPERM"):
        return True
    return "unknown command" in text.lower()
