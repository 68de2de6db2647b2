"""The backend over one redis-py ConnectionPool: memory, redis and sentinel.

One connection per call, taken from the pool and given back on any exit. Commands
go on the connection itself (through _redispy.py), not through
`Redis.execute_command`, so each read waits what the caller has left, not the
pool-wide socket timeout, and a batch's runs of gets go as MGETs packed in C.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from cachegate.pool._backend import Command, PoolCounts, ServerInfo, info_from, value_and_ttl
from cachegate.pool._bounded import (
    BOUNDED_READ_LUA,
    LUA_COPY_BYTES,
    read_known,
    script_sizes,
    worst_case_fits,
)
from cachegate.pool._reaping import IdleReaping
from cachegate.pool._redispy import (
    Connection,
    ResponseCallbacks,
    check_health,
    is_lasting_refusal,
    is_wrong_type,
    new_connection_refused,
    open_connections,
    pack_command,
    read,
    request,
    request_packed,
    send,
    send_many,
    send_packed,
    why_refused,
)

__all__ = ["ConnectionBackend", "coalesce_gets"]

log = logging.getLogger("cachegate.pool")


def coalesce_gets(commands: Sequence[Command]) -> tuple[list[Command], list[int]]:
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
        self._callbacks = ResponseCallbacks(self._client)
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
        # Not `with self._connection()`: the unary path skips a generator context.
        conn = self._checkout()
        try:
            response = request(conn, command, timeout)
        finally:
            self._pool.release(conn)
        return self._callbacks.parse(command, response)

    def run_batch(
        self, commands: Sequence[Command], timeout: float, max_bytes: int | None = None
    ) -> list[Any]:
        # Consecutive GETs go as one MGET (order kept, one reply to parse instead of
        # one per key): the batch path's biggest saving. Only consecutive runs, so a
        # SETEX followed by a GET of the same key still reads the new value.
        if self._rewrite is not None:
            commands = [self._rewrite(command) for command in commands]
        wire, spans = coalesce_gets(commands)
        if max_bytes is not None and not worst_case_fits(sum(spans), self._value_limit, max_bytes):
            # Each run of gets is read within what is left of the bound, after the
            # commands before it (a run's size is known only once it is read).
            with self._connection(timeout) as conn:
                return self._run_segments(conn, wire, spans, timeout, max_bytes)
        with self._connection(timeout) as conn:
            replies = _pipelined(conn, wire, timeout)
        results: list[Any] = []
        parse = self._callbacks.parse
        for command, span, reply in zip(wire, spans, replies, strict=True):
            if span:  # an MGET standing for `span` GETs
                results.extend(reply if isinstance(reply, list) else [reply] * span)
            elif isinstance(reply, Exception):
                results.append(reply)
            else:
                results.append(parse(command, reply))
        return results

    def run_each(self, commands: Sequence[Command], timeout: float) -> list[Any]:
        if self._rewrite is not None:
            commands = [self._rewrite(command) for command in commands]
        # Packed by hiredis in C, as one write; every reply is read, so the connection
        # goes back with nothing unread.
        packed = b"".join([pack_command(tuple(command)) for command in commands])
        replies: list[Any] = []
        with self._connection(timeout) as conn:
            send_packed(conn, packed)
            for _ in commands:
                try:
                    replies.append(read(conn, timeout))
                except redis.ResponseError as exc:
                    replies.append(exc)
        parse = self._callbacks.parse
        return [
            reply if isinstance(reply, Exception) else parse(command, reply)
            for command, reply in zip(commands, replies, strict=True)
        ]

    def get_with_ttl(self, key: str | bytes, timeout: float) -> tuple[Any, Any]:
        # A transaction, not a Lua script: it costs Redis less (docs/performance.md)
        # and fakeredis runs it without lupa. All four replies are read before any
        # error is raised, so the connection goes back clean.
        wire = [("MULTI",), ("GET", key), ("PTTL", key), ("EXEC",)]
        with self._connection(timeout) as conn:
            return value_and_ttl(_pipelined(conn, wire, timeout))

    def get_many(
        self, keys: Sequence[str | bytes], timeout: float, max_bytes: int | None = None
    ) -> list[Any]:
        # hiredis packs the whole MGET in C; redis-py's own packer first walks every
        # argument in Python, which costs more than the read itself at batch sizes.
        if worst_case_fits(len(keys), self._value_limit, max_bytes) or max_bytes is None:
            packed = pack_command(("MGET", *keys))
            conn = self._checkout()
            try:
                result: list[Any] = request_packed(conn, packed, timeout)
            finally:
                self._pool.release(conn)
            return result
        with self._connection(timeout) as conn:
            return self._read_bounded(conn, keys, timeout, max_bytes)

    def _read_bounded(
        self, conn: Connection, keys: Sequence[str | bytes], timeout: float, max_bytes: int
    ) -> list[Any]:
        if worst_case_fits(len(keys), self._value_limit, max_bytes):
            values: list[Any] = self._ask(conn, timeout, "MGET", *keys)
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

    def _sizes(self, conn: Connection, keys: Sequence[str | bytes], timeout: float) -> list[int]:
        """STRLEN of each key, as one pipeline of the distinct ones (-1: another type)."""
        distinct = list(dict.fromkeys(keys))
        send_many(conn, [("STRLEN", key) for key in distinct])
        sizes: dict[str | bytes, int] = {}
        refused: redis.ResponseError | None = None
        for key in distinct:  # every reply is read, so the connection stays in step
            try:
                sizes[key] = int(read(conn, timeout))
            except redis.ResponseError as exc:
                sizes[key] = -1  # another type: a miss, as MGET says
                if not is_wrong_type(exc):
                    refused = exc
        if refused is not None:  # NOPERM and the like: never read as misses
            raise refused
        return [sizes[key] for key in keys]

    @staticmethod
    def _ask(conn: Connection, timeout: float, *command: Any) -> Any:
        send(conn, *command)
        return read(conn, timeout)

    def _bounded_script(
        self, conn: Connection, keys: Sequence[str | bytes], timeout: float, max_bytes: int
    ) -> list[Any] | None:
        """The bounded script's reply, or None when Redis will not run scripts for us."""
        tail = (len(keys), *keys, max_bytes)
        send_packed(conn, pack_command(("EVALSHA", self._script_sha, *tail)))
        try:
            reply: list[Any] = read(conn, timeout)
            return reply
        except NoScriptError:  # a fresh or restarted Redis: EVAL loads it
            send(conn, "EVAL", BOUNDED_READ_LUA, *tail)
            try:
                loaded: list[Any] = read(conn, timeout)
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
        if not is_lasting_refusal(exc):
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
        conn: Connection,
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
                failed = isinstance(reply, Exception)
                results.append(reply if failed else self._callbacks.parse(command, reply))
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
    def _connection(self, timeout: float) -> Iterator[Connection]:
        """A checked-out, health-checked connection, given back on any exit.

        redis-py disconnects a connection on any error or interruption while reading,
        so a late reply can never be read by the next caller (CVE-2023-28858).
        """
        conn = self._checkout()
        try:
            check_health(conn, timeout)
            yield conn
        finally:
            self._pool.release(conn)

    def _checkout(self) -> Connection:
        try:
            return self._pool.get_connection()
        except redis.ConnectionError as exc:
            # redis-py reports a new connection on which Redis already wrote something
            # (an error, then it hung up) in its own words, and the error itself is
            # lost. Ask Redis once more to name it (max clients, ...).
            if not new_connection_refused(exc):
                raise
            reason = why_refused(self._pool)
            if reason is None:
                raise
            raise redis.ConnectionError(reason) from exc

    def reap_idle(self, max_idle: float) -> int:
        if isinstance(self._pool, IdleReaping):
            return self._pool.reap_idle(max_idle)
        return 0

    def counts(self) -> PoolCounts:
        idle, in_use = open_connections(self._pool)
        return PoolCounts(created=idle + in_use, idle=idle, in_use=in_use)

    def info(self, timeout: float) -> ServerInfo:
        if self._info is not None:
            return self._info(self, timeout)
        return info_from(self.run(("INFO",), timeout))

    def close(self) -> None:
        self._pool.disconnect()


def _pipelined(conn: Connection, wire: Sequence[Command], timeout: float) -> list[Any]:
    """Send `wire` in one write and read every reply: an error reply stands in its
    command's place (Redis answered: only that command failed), and the connection
    is left with nothing unread."""
    send_many(conn, wire)
    replies: list[Any] = []
    for _ in wire:
        try:
            replies.append(read(conn, timeout))
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies
