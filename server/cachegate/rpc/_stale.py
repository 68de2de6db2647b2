"""Stale-if-error: the servicer's calls to Redis that keep the worker's copy, and the
answers it gives when Redis cannot.

The copy (`cachegate.core.StaleCopy`) learns only what is sure: this worker's
acknowledged writes, and reads that carry an allowance, which read the key's TTL
beside its value: a unary Get as one transaction (GET and PTTL in MULTI/EXEC), a
batch with its PTTLs after each run of GETs in the same round trip (not atomic: a
run's keys may span Cluster slots, which no transaction can). It is consulted only when
the call to Redis failed because Redis could not answer (`CAN_GO_STALE`): the
breaker open, Redis refused or down, or too slow. Any other failure, and every
answer Redis gives, stays what it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cachegate.core import CircuitOpenError, StaleCopy, StaleValue
from cachegate.pool import RedisConnectionPool, RedisUnavailableError

__all__ = ["CAN_GO_STALE", "StaleReads"]

# Failures that let a call with an allowance be answered from the copy:
# UNAVAILABLE (breaker open, Redis refused or down) and DEADLINE_EXCEEDED
# (RedisTimeoutError, a RedisUnavailableError).
CAN_GO_STALE: tuple[type[BaseException], ...] = (CircuitOpenError, RedisUnavailableError)

# Of a call's deadline, what a read with an allowance leaves over for answering from
# the copy: a Redis that hangs would otherwise use it all, and the stale answer
# would come after the caller had given up.
ANSWER_MARGIN_SECONDS = 0.05

Command = tuple[Any, ...]


def _ttl_seconds(pttl: Any) -> tuple[bool, float | None]:
    """PTTL's reply as (known, seconds left): None for a key without a TTL; not
    known for no key (gone since the GET) or a reply that is no number."""
    if not isinstance(pttl, int) or pttl == -2:
        return False, None
    if pttl == -1:
        return True, None
    return True, max(0, pttl) / 1000


def _redis_share(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    return max(timeout - ANSWER_MARGIN_SECONDS, timeout / 2)


class StaleReads:
    """Calls to Redis through the pool that keep `copy` current, and stale answers."""

    def __init__(self, pool: RedisConnectionPool, copy: StaleCopy | None) -> None:
        self._pool = pool
        self._copy = copy or StaleCopy(0)
        self.enabled = self._copy.enabled

    # --- unary calls ------------------------------------------------------------------

    def get(self, key: bytes, allowance: int, timeout: float | None) -> bytes | StaleValue | None:
        """GET with an allowance: the value (None on a miss), or a StaleValue from the
        copy when Redis cannot answer and the copy can; else the pool's error."""
        copy = self._copy
        since = copy.begin()
        try:
            # One transaction: the TTL kept is the value's own, whoever writes the key.
            value, pttl = self._pool.get_with_ttl(key, timeout=_redis_share(timeout))
        except CAN_GO_STALE:
            answer = copy.serve(key, allowance)
            if answer is None:
                raise
            return answer
        self._learn(key, value, pttl, since)
        found: bytes | None = value
        return found

    def set_ex(self, key: bytes, ttl_seconds: int, value: bytes, timeout: float | None) -> None:
        """SETEX, then the copy holds the value (or drops the key if the outcome is unknown)."""
        since = self._copy.begin()
        try:
            self._pool.execute("SETEX", key, ttl_seconds, value, timeout=timeout)
        except BaseException as exc:
            self._write_failed(key, exc)
            raise
        self._copy.wrote(key, value, ttl_seconds, since)

    def delete(self, key: bytes, timeout: float | None) -> Any:
        """DEL; the copy drops the key whatever happens (before, so no stale answer is
        given while the delete is under way, and after, for reads that overlapped it)."""
        self._copy.forget(key)
        try:
            return self._pool.execute("DEL", key, timeout=timeout)
        finally:
            self._copy.forget(key)

    # --- batches --------------------------------------------------------------------------

    def execute_many(
        self,
        commands: Sequence[Command],
        allowance: int,
        *,
        timeout: float | None,
        max_bytes: int | None,
    ) -> list[Any]:
        """The pool's execute_many, keeping the copy: each run of GETs is followed by
        their PTTLs when the batch allows staleness (one reply per command, as there)."""
        copy = self._copy
        if not copy.enabled:
            return self._pool.execute_many(commands, timeout=timeout, max_bytes=max_bytes)
        wire, ttl_at = self._with_ttls(commands) if allowance else (list(commands), {})
        for command in commands:
            if command[0] == "DEL":  # no stale answer while a delete is under way
                copy.forget(command[1])
        since = copy.begin()
        try:
            replies = self._pool.execute_many(
                wire,
                timeout=_redis_share(timeout) if allowance else timeout,
                max_bytes=max_bytes,
            )
        except BaseException as exc:
            for command in commands:
                if command[0] == "DEL":
                    copy.forget(command[1])
                elif command[0] != "GET":
                    self._write_failed(command[1], exc)
            raise
        if ttl_at:
            ttls = {index: replies[at] for index, at in ttl_at.items()}
            extra = set(ttl_at.values())
            replies = [reply for at, reply in enumerate(replies) if at not in extra]
        for index, (command, reply) in enumerate(zip(commands, replies, strict=True)):
            name, key = command[0], command[1]
            if name == "GET":
                if index in ttl_at and not isinstance(reply, Exception):
                    self._learn(key, reply, ttls[index], since)
            elif name == "SETEX" and not isinstance(reply, Exception):
                copy.wrote(key, command[3], command[2], since)
            else:  # DEL, or a write Redis refused: the copy drops the key either way
                copy.forget(key)
        return replies

    def answers(
        self,
        commands: Sequence[Command],
        error: BaseException,
        allowance: int,
        max_bytes: int | None,
    ) -> dict[int, StaleValue]:
        """For a batch that failed as a whole: the gets the copy can answer, by index
        in `commands` (none unless Redis could not answer and the batch allows it).
        With `max_bytes`, the values answered add up to at most that many bytes."""
        if not allowance or not isinstance(error, CAN_GO_STALE):
            return {}
        found: dict[int, StaleValue] = {}
        room = max_bytes
        for index, command in enumerate(commands):
            if command[0] != "GET":
                continue
            answer = self._copy.serve(command[1], allowance)
            if answer is None:
                continue
            if room is not None:
                if len(answer.value) > room:
                    continue
                room -= len(answer.value)
            found[index] = answer
        return found

    # --- the copy's upkeep ------------------------------------------------------------

    def _learn(self, key: Any, value: Any, pttl: Any, since: float) -> None:
        known, ttl = _ttl_seconds(pttl)
        if isinstance(value, bytes) and known:
            self._copy.learned(key, value, ttl, since)
        elif value is None:
            self._copy.forget(key)  # gone from Redis: gone from the copy

    def _write_failed(self, key: Any, exc: BaseException) -> None:
        # An open breaker never touched Redis: what the copy holds is still Redis's.
        # Any other failure may have changed the key, or not: drop it.
        if not isinstance(exc, CircuitOpenError):
            self._copy.forget(key)

    @staticmethod
    def _with_ttls(commands: Sequence[Command]) -> tuple[list[Command], dict[int, int]]:
        """The batch with a PTTL after each run of GETs (runs stay whole, so the pool
        still reads each run as one MGET), and where each get's PTTL reply lands."""
        wire: list[Command] = []
        ttl_at: dict[int, int] = {}
        run: list[int] = []
        for index, command in enumerate([*commands, ("END",)]):
            if command[0] == "GET":
                run.append(index)
            elif run:
                for get in run:
                    ttl_at[get] = len(wire)
                    wire.append(("PTTL", commands[get][1]))
                run = []
            if command[0] != "END":
                wire.append(command)
        return wire, ttl_at
