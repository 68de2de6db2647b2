"""The four backends, each built from redis-py's own clients and pools.

Every backend offers the same small surface to the pool: run one command with
a read timeout, run a batch, report connection counts and server info, close.
memory, redis and sentinel share one implementation over a redis-py
`ConnectionPool` (fakeredis supplies the connection class of the embedded one;
redis-py's Sentinel supplies a pool that follows the master); cluster uses
`RedisCluster`, which routes by slot and follows failovers itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis
import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoPermissionError, NoScriptError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from cachegate.core import Config
from cachegate.pool._bounded import (
    BOUNDED_READ_LUA,
    LUA_COPY_BYTES,
    read_known,
    script_sizes,
    worst_case_fits,
)
from cachegate.pool._parking import ParkingPool

__all__ = ["Backend", "PoolCounts", "ServerInfo", "make_backend"]

Command = Sequence[Any]

log = logging.getLogger("cachegate.pool")


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


def _no_retry() -> Retry:
    # redis-py 8 retries 10 times by default; our pool has the one retry layer.
    return Retry(NoBackoff(), 0)


def _connection_kwargs(config: Config) -> dict[str, Any]:
    settings, pool = config.redis, config.pool
    kwargs: dict[str, Any] = {
        "db": settings.db,
        "username": settings.username,
        "password": settings.password.value if settings.password else None,
        "socket_timeout": pool.socket_timeout,
        "socket_connect_timeout": pool.connect_timeout,
        "health_check_interval": pool.health_check_interval,
        "retry": _no_retry(),
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


def _human_bytes(n: int) -> str:
    """Redis's own `used_memory_human` style (1.50M), for sums across cluster nodes."""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.2f}{unit}" if unit != "B" else f"{n}B"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _info_from(sections: Mapping[str, Any]) -> ServerInfo:
    return ServerInfo(
        version=str(sections.get("redis_version", "")),
        connected_clients=int(sections.get("connected_clients", 0)),
        used_memory_human=str(sections.get("used_memory_human", "")),
        keyspace_hits=int(sections.get("keyspace_hits", 0)),
        keyspace_misses=int(sections.get("keyspace_misses", 0)),
    )


class IdleReaping:
    """Mixin for redis-py pools: close connections left idle longer than a limit.

    redis-py keeps every connection it ever opened; after a burst, Redis would
    count them forever. Connections are stamped when released, and the oldest
    idle ones are closed by `reap_idle()` (the pool calls it now and then).
    """

    _lock: Any  # redis-py: threading.RLock
    _available_connections: list[Any]
    _created_connections: int

    def release(self, connection: Any) -> None:
        self.release_idle_since(connection, time.monotonic())

    def release_idle_since(self, connection: Any, since: float) -> None:
        """Release a connection that has been idle since `since` (a monotonic time)."""
        connection._cachegate_idle_since = since
        super().release(connection)  # type: ignore[misc]

    def reap_idle(self, max_idle: float) -> int:
        if isinstance(self, ParkingPool):  # parked long enough: idle since they were parked
            for connection, parked_at in self.unpark(max_idle):
                self.release_idle_since(connection, parked_at)
        cutoff = time.monotonic() - max_idle
        with self._lock:
            stale = [
                c
                for c in self._available_connections
                if getattr(c, "_cachegate_idle_since", cutoff) < cutoff
            ]
            for conn in stale:
                self._available_connections.remove(conn)
            self._created_connections -= len(stale)
        for conn in stale:
            conn.disconnect()
        return len(stale)


class ReapingConnectionPool(ParkingPool, IdleReaping, redis.ConnectionPool):
    """redis-py's pool with parking (see _parking.py) and idle reaping."""


class ReapingSentinelConnectionPool(IdleReaping, SentinelConnectionPool):
    """No parking: redis-py's release checks that a connection still reaches the master."""


# How long the diagnosis of a refused connection may wait for Redis's reason.
PROBE_TIMEOUT = 0.2


def _check_health(conn: Any, timeout: float) -> None:
    """redis-py's PING of an idle (or new) connection, but within the caller's timeout.

    redis-py sends it from send_command() and waits the full socket timeout for the
    reply, past any deadline; here the same check waits `timeout` at most.
    """
    if conn.health_check_interval and time.monotonic() > conn.next_health_check:
        conn.send_command("PING", check_health=False)
        if conn.read_response(timeout=timeout) not in (b"PONG", "PONG"):
            conn.disconnect()
            raise redis.ConnectionError("Bad response from PING health check")


def _wrong_type(exc: Exception) -> bool:
    """A WRONGTYPE reply: the key holds another type (a miss for MGET's rule)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("WRONGTYPE")


def _pipelined(conn: Any, wire: Sequence[Command], timeout: float) -> list[Any]:
    """Send `wire` in one write and read every reply: an error reply stands in its
    command's place (Redis answered: only that command failed), and the connection
    is left with nothing unread."""
    conn.send_packed_command(conn.pack_commands(wire), check_health=False)
    replies: list[Any] = []
    for _ in wire:
        try:
            replies.append(conn.read_response(timeout=timeout))
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


def _value_and_ttl(replies: Sequence[Any]) -> tuple[Any, Any]:
    """GET's and PTTL's replies out of MULTI/EXEC's, or the error that stopped them."""
    executed = replies[-1]
    if not isinstance(executed, list):  # EXECABORT: a queued command was refused
        raise next(reply for reply in replies if isinstance(reply, Exception))
    value, pttl = executed
    for reply in executed:
        if isinstance(reply, Exception):
            raise reply
    return value, pttl


def _coalesce_gets(commands: Sequence[Command]) -> tuple[list[Command], list[int]]:
    """Runs of GET become one MGET; spans[i] is how many GETs wire[i] answers (0: not an MGET).

    MGET answers nil for a key of another type where GET would say WRONGTYPE: in a
    batch, such a key reads as missing (documented in README.md, "The contract").
    """
    wire: list[Command] = []
    spans: list[int] = []
    run: list[Any] = []
    for command in commands:
        if command[0] == "GET":
            run.append(command[1])
            continue
        if run:
            wire.append(("MGET", *run))
            spans.append(len(run))
            run = []
        wire.append(command)
        spans.append(0)
    if run:
        wire.append(("MGET", *run))
        spans.append(len(run))
    return wire, spans


class ConnectionBackend:
    """memory, redis and sentinel: one redis-py ConnectionPool, one connection per call."""

    def __init__(
        self,
        kind: str,
        pool: redis.ConnectionPool,
        info: Callable[[ConnectionBackend, float], ServerInfo] | None = None,
        rewrite: Callable[[Command], Command] | None = None,
        *,
        value_limit: int = 1024 * 1024,
        scripts: bool = True,
    ) -> None:
        self.kind = kind
        self._value_limit = value_limit
        # Lua bounded reads; switched off for good when Redis refuses them (an ACL
        # without EVALSHA): the chunked reads need only MGET, STRLEN and GET.
        self._scripts = scripts
        self._script_sha = hashlib.sha1(
            BOUNDED_READ_LUA.encode(), usedforsecurity=False
        ).hexdigest()  # Redis names scripts by SHA-1
        self._rewrite = rewrite
        self._pool = pool
        self._client = redis.Redis(connection_pool=pool)
        self._callbacks: dict[str, Callable[..., Any]] = dict(self._client.response_callbacks)
        self._info = info

    @property
    def client(self) -> redis.Redis:
        return self._client

    @property
    def connection_pool(self) -> redis.ConnectionPool:
        return self._pool

    def run(self, command: Command, timeout: float) -> Any:
        if self._rewrite is not None:
            command = self._rewrite(command)
        with self._connection(timeout) as conn:
            conn.send_command(*command, check_health=False)
            response = conn.read_response(timeout=timeout)
        callback = self._callback(command)
        return callback(response) if callback else response

    def run_batch(
        self, commands: Sequence[Command], timeout: float, max_bytes: int | None = None
    ) -> list[Any]:
        # Consecutive GETs go as one MGET (order kept, one reply to parse instead of
        # one per key): the batch path's biggest saving. Only consecutive runs, so a
        # SETEX followed by a GET of the same key still reads the new value.
        if self._rewrite is not None:
            commands = [self._rewrite(command) for command in commands]
        wire, spans = _coalesce_gets(commands)
        if max_bytes is not None and not worst_case_fits(sum(spans), self._value_limit, max_bytes):
            # Each run of gets is read within what is left of the bound, after the
            # commands before it (a run's size is known only once it is read).
            with self._connection(timeout) as conn:
                return self._run_segments(conn, wire, spans, timeout, max_bytes)
        with self._connection(timeout) as conn:
            replies = _pipelined(conn, wire, timeout)
        results: list[Any] = []
        for command, span, reply in zip(wire, spans, replies, strict=True):
            if span:  # an MGET standing for `span` GETs
                results.extend(reply if isinstance(reply, list) else [reply] * span)
            elif isinstance(reply, Exception):
                results.append(reply)
            else:
                callback = self._callback(command)
                results.append(callback(reply) if callback else reply)
        return results

    def get_with_ttl(self, key: str | bytes, timeout: float) -> tuple[Any, Any]:
        # A transaction, not a Lua script: it costs Redis less (docs/performance.md)
        # and fakeredis runs it without lupa. All four replies are read before any
        # error is raised, so the connection goes back clean.
        wire = [("MULTI",), ("GET", key), ("PTTL", key), ("EXEC",)]
        with self._connection(timeout) as conn:
            return _value_and_ttl(_pipelined(conn, wire, timeout))

    def get_many(
        self, keys: Sequence[str | bytes], timeout: float, max_bytes: int | None = None
    ) -> list[Any]:
        # hiredis packs the whole MGET in C; redis-py's own packer first walks every
        # argument in Python, which costs more than the read itself at batch sizes.
        # hiredis's stub types the argument as a 1-tuple; it packs any number of them.
        if worst_case_fits(len(keys), self._value_limit, max_bytes) or max_bytes is None:
            packed = hiredis.pack_command(("MGET", *keys))  # type: ignore[arg-type]
            with self._connection(timeout) as conn:
                conn.send_packed_command([packed], check_health=False)
                result: list[Any] = conn.read_response(timeout=timeout)
            return result
        with self._connection(timeout) as conn:
            return self._read_bounded(conn, keys, timeout, max_bytes)

    def _read_bounded(
        self, conn: Any, keys: Sequence[str | bytes], timeout: float, max_bytes: int
    ) -> list[Any]:
        if worst_case_fits(len(keys), self._value_limit, max_bytes):
            conn.send_command("MGET", *keys, check_health=False)
            values: list[Any] = conn.read_response(timeout=timeout)
            return values
        if self._scripts:
            reply = self._bounded_script(conn, keys, timeout, min(max_bytes, LUA_COPY_BYTES))
            if reply is not None:
                sizes, _, are_values = script_sizes(reply)
                if are_values:
                    return sizes
                return read_known(
                    keys,
                    sizes,
                    max_bytes,
                    self._value_limit,
                    lambda chunk: self._ask(conn, timeout, "MGET", *chunk),
                )
        return read_known(
            keys,
            self._sizes(conn, keys, timeout),
            max_bytes,
            self._value_limit,
            lambda chunk: self._ask(conn, timeout, "MGET", *chunk),
        )

    def _sizes(self, conn: Any, keys: Sequence[str | bytes], timeout: float) -> list[int]:
        """STRLEN of each key, as one pipeline of the distinct ones (-1: another type)."""
        distinct = list(dict.fromkeys(keys))
        conn.send_packed_command(
            conn.pack_commands([("STRLEN", key) for key in distinct]), check_health=False
        )
        sizes: dict[str | bytes, int] = {}
        refused: redis.ResponseError | None = None
        for key in distinct:  # every reply is read, so the connection stays in step
            try:
                sizes[key] = int(conn.read_response(timeout=timeout))
            except redis.ResponseError as exc:
                sizes[key] = -1  # another type: a miss, as MGET says
                if not _wrong_type(exc):
                    refused = exc
        if refused is not None:  # NOPERM and the like: never read as misses
            raise refused
        return [sizes[key] for key in keys]

    @staticmethod
    def _ask(conn: Any, timeout: float, *command: Any) -> Any:
        conn.send_command(*command, check_health=False)
        return conn.read_response(timeout=timeout)

    def _bounded_script(
        self, conn: Any, keys: Sequence[str | bytes], timeout: float, max_bytes: int
    ) -> list[Any] | None:
        """The bounded script's reply, or None when Redis will not run scripts for us."""
        tail = (len(keys), *keys, max_bytes)
        packed = hiredis.pack_command(("EVALSHA", self._script_sha, *tail))  # type: ignore[arg-type]
        conn.send_packed_command([packed], check_health=False)
        try:
            reply: list[Any] = conn.read_response(timeout=timeout)
            return reply
        except NoScriptError:  # a fresh or restarted Redis: EVAL loads it
            conn.send_command("EVAL", BOUNDED_READ_LUA, *tail, check_health=False)
            try:
                loaded: list[Any] = conn.read_response(timeout=timeout)
            except redis.ResponseError as exc:
                self._no_scripts(exc)
            else:
                return loaded
        except redis.ResponseError as exc:  # NOPERM, scripting disabled
            self._no_scripts(exc)
        return None

    def _no_scripts(self, exc: Exception) -> None:
        # Only a lasting refusal switches the script off for good: a user without
        # EVALSHA/EVAL (NOPERM) or a Redis without them (unknown command). A passing
        # error (BUSY, OOM, ...) costs this call its script; the next one tries again.
        text = str(exc)
        lasting = isinstance(exc, NoPermissionError) or text.startswith("NOPERM")
        if not lasting and "unknown command" not in text.lower():
            log.debug("bounded-read script failed once; reading in chunks", exc_info=exc)
            return
        self._scripts = False
        log.warning(
            "Redis refused the bounded-read script; large batches of gets are read in "
            "chunks instead (allow EVALSHA, EVAL and STRLEN to keep them one round trip)",
            extra={"error": str(exc)},
        )

    def _run_segments(
        self,
        conn: Any,
        wire: Sequence[Command],
        spans: Sequence[int],
        timeout: float,
        max_bytes: int,
    ) -> list[Any]:
        """run_batch without scripts: the commands before each run of gets go as one
        pipeline, then the run is read in chunks within what is left of the bound."""
        results: list[Any] = []
        pending: list[Command] = []
        room = max_bytes

        def flush() -> None:
            if not pending:
                return
            for command, reply in zip(pending, _pipelined(conn, pending, timeout), strict=True):
                callback = None if isinstance(reply, Exception) else self._callback(command)
                results.append(callback(reply) if callback else reply)
            pending.clear()

        for command, span in zip(wire, spans, strict=True):
            if not span:
                pending.append(command)
                continue
            flush()
            values = self._read_bounded(conn, command[1:], timeout, room)
            room -= sum(len(v) for v in values if isinstance(v, bytes))
            results.extend(values)
        flush()
        return results

    @contextlib.contextmanager
    def _connection(self, timeout: float) -> Iterator[Any]:
        """A checked-out, health-checked connection, given back on any exit.

        redis-py disconnects a connection on any error or interruption while reading,
        so a late reply can never be read by the next caller (CVE-2023-28858).
        """
        conn = self._checkout()
        try:
            _check_health(conn, timeout)
            yield conn
        finally:
            self._pool.release(conn)

    def _checkout(self) -> Any:
        try:
            return self._pool.get_connection()
        except redis.ConnectionError as exc:
            # redis-py reports a new connection on which Redis already wrote something
            # (an error, then it hung up) as "Connection not ready"/"has data", and the
            # error itself is lost. Ask Redis once more to name it (max clients, ...).
            if "not ready" not in str(exc) and "has data" not in str(exc):
                raise
            reason = self._why_refused()
            if reason is None:
                raise
            raise redis.ConnectionError(reason) from exc

    def _why_refused(self) -> str | None:
        probe = self._pool.connection_class(**self._pool.connection_kwargs)
        try:
            probe.connect()
            probe.send_command("PING", check_health=False)
            probe.read_response(timeout=PROBE_TIMEOUT)
        except redis.RedisError as exc:
            return str(exc)
        finally:
            probe.disconnect()
        return None

    def _callback(self, command: Command) -> Callable[..., Any] | None:
        name = str(command[0]).upper()
        if len(command) > 1 and isinstance(command[1], str):
            sub = self._callbacks.get(f"{name} {command[1].upper()}")
            if sub is not None:
                return sub
        return self._callbacks.get(name)

    def reap_idle(self, max_idle: float) -> int:
        if isinstance(self._pool, IdleReaping):
            return self._pool.reap_idle(max_idle)
        return 0

    def counts(self) -> PoolCounts:
        (idle, _), (in_use, _) = self._pool.get_connection_count()
        return PoolCounts(created=idle + in_use, idle=idle, in_use=in_use)

    def info(self, timeout: float) -> ServerInfo:
        if self._info is not None:
            return self._info(self, timeout)
        return _info_from(self.run(("INFO",), timeout))

    def close(self) -> None:
        self._pool.disconnect()


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


def _memory(config: Config) -> ConnectionBackend:
    import fakeredis  # only the memory backend needs it

    pool = ReapingConnectionPool(
        connection_class=fakeredis.FakeRedisConnection,
        server=fakeredis.FakeServer(),
        max_connections=config.pool.max_connections,
        retry=_no_retry(),
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


def _standalone(config: Config) -> ConnectionBackend:
    settings = config.redis
    kwargs = _connection_kwargs(config)
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
            "retry": _no_retry(),
        },
    )
    kwargs = _connection_kwargs(config)
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


class ClusterBackend:
    """Redis Cluster through redis-py's RedisCluster (slot routing, MOVED/ASK, failover)."""

    kind = "cluster"

    def __init__(self, config: Config) -> None:
        settings = config.redis
        nodes = settings.cluster_nodes or ((settings.host, settings.port),)
        kwargs = _connection_kwargs(config)
        kwargs.pop("retry")  # RedisCluster refuses it in kwargs; it takes its own below
        kwargs.pop("db")  # a cluster has only db 0
        if settings.tls:
            kwargs["ssl"] = True
        self._client = RedisCluster(
            startup_nodes=[ClusterNode(str(n[0]), int(n[1])) for n in _pairs(nodes)],
            max_connections=config.pool.max_connections,
            # Cluster retries are how RedisCluster follows MOVED replies and failovers:
            # they stay on, bounded by our attempts and backoff.
            retry=Retry(
                ExponentialWithJitterBackoff(
                    cap=config.retry.backoff_cap, base=config.retry.backoff_base
                ),
                config.retry.attempts,
            ),
            **kwargs,
        )
        self._lock = threading.Lock()
        self._value_limit = config.limits.max_value_bytes

    @property
    def client(self) -> RedisCluster:
        return self._client

    def run(self, command: Command, timeout: float) -> Any:
        # RedisCluster has no per-call read timeout: REDIS_SOCKET_TIMEOUT bounds each read.
        return self._client.execute_command(*command)

    def run_batch(
        self, commands: Sequence[Command], timeout: float, max_bytes: int | None = None
    ) -> list[Any]:
        gets = sum(1 for command in commands if command[0] == "GET")
        if max_bytes is not None and not worst_case_fits(gets, self._value_limit, max_bytes):
            return self._run_segments(commands, max_bytes)
        return self._pipeline(commands)

    def _run_segments(self, commands: Sequence[Command], max_bytes: int) -> list[Any]:
        """The commands before each run of gets as one pipeline, then the run read in
        chunks within what is left of the bound (a run's keys span slots: no script)."""
        results: list[Any] = []
        pending: list[Command] = []
        run: list[Any] = []
        room = max_bytes
        for command in [*commands, ("END",)]:
            if command[0] == "GET":
                if pending:
                    results.extend(self._pipeline(pending))
                    pending = []
                run.append(command[1])
                continue
            if run:
                values = self.get_many(run, 0.0, room)
                room -= sum(len(v) for v in values if isinstance(v, bytes))
                results.extend(values)
                run = []
            if command[0] != "END":
                pending.append(command)
        if pending:
            results.extend(self._pipeline(pending))
        return results

    def _pipeline(self, commands: Sequence[Command]) -> list[Any]:
        # ClusterPipeline splits the batch by slot and sends one pipeline per node.
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for reply in replies:  # a node that could not be reached fails the whole batch
            if isinstance(reply, Exception) and not isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def get_with_ttl(self, key: str | bytes, timeout: float) -> tuple[Any, Any]:
        # One key, one slot: a transaction on the node that owns it.
        pipe = self._client.pipeline(transaction=True)
        pipe.execute_command("GET", key)
        pipe.execute_command("PTTL", key)
        return _value_and_ttl([pipe.execute(raise_on_error=False)])

    def get_many(
        self, keys: Sequence[str | bytes], timeout: float, max_bytes: int | None = None
    ) -> list[Any]:
        # One MGET per slot, sent as a pipeline per node (a plain MGET would be CROSSSLOT).
        if worst_case_fits(len(keys), self._value_limit, max_bytes) or max_bytes is None:
            result: list[Any] = self._client.mget_nonatomic(list(keys))
            return result

        distinct = list(dict.fromkeys(keys))
        pipe = self._client.pipeline(transaction=False)
        for key in distinct:
            pipe.strlen(key)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and not _wrong_type(reply):
                raise reply  # NOPERM, an unreachable node: never read as misses
        sizes = {
            key: -1 if isinstance(reply, Exception) else int(reply)
            for key, reply in zip(distinct, replies, strict=True)
        }
        return read_known(
            keys,
            [sizes[key] for key in keys],
            max_bytes,
            self._value_limit,
            lambda chunk: list(self._client.mget_nonatomic(list(chunk))),
        )

    def _pools(self) -> list[redis.ConnectionPool]:
        return [
            node.redis_connection.connection_pool
            for node in self._client.get_nodes()
            if node.redis_connection is not None
        ]

    def reap_idle(self, max_idle: float) -> int:
        return 0  # RedisCluster's per-node pools are its own business

    def counts(self) -> PoolCounts:
        idle = in_use = 0
        for pool in self._pools():
            (i, _), (u, _) = pool.get_connection_count()
            idle, in_use = idle + i, in_use + u
        return PoolCounts(created=idle + in_use, idle=idle, in_use=in_use)

    def info(self, timeout: float) -> ServerInfo:
        per_node: dict[str, Any] = self._client.info(target_nodes=RedisCluster.PRIMARIES)
        if per_node and "redis_version" in per_node:  # a single node answers flat
            per_node = {"node": per_node}
        nodes = list(per_node.values())
        first = nodes[0] if nodes else {}
        return ServerInfo(
            version=str(first.get("redis_version", "")),
            connected_clients=sum(int(n.get("connected_clients", 0)) for n in nodes),
            used_memory_human=_human_bytes(sum(int(n.get("used_memory", 0)) for n in nodes)),
            keyspace_hits=sum(int(n.get("keyspace_hits", 0)) for n in nodes),
            keyspace_misses=sum(int(n.get("keyspace_misses", 0)) for n in nodes),
        )

    def close(self) -> None:
        self._client.close()


def _pairs(nodes: Sequence[Any]) -> list[tuple[str, int]]:
    return [(n.host, n.port) if hasattr(n, "host") else (str(n[0]), int(n[1])) for n in nodes]


def make_backend(config: Config) -> Backend:
    """The backend that `config.backend` names."""
    if config.backend == "memory":
        return _memory(config)
    if config.backend == "redis":
        return _standalone(config)
    if config.backend == "sentinel":
        return _sentinel(config)
    return ClusterBackend(config)
