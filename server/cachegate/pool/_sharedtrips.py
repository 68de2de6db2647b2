"""The pool's side of auto-batching: calls the AutoBatcher gathered, as one round trip.

With `auto_batch` (the server turns it on: CACHEGATE_AUTO_BATCH), single GET, SETEX
and DEL calls that meet in the pool share round trips (`_autobatch.py`,
`_batchqueue.py`): a call alone goes at once on the call path (`CallPath.run_alone`);
calls that arrive while a round trip is in flight go together as the next one,
here, through the same path (one permit, one verdict for the breaker, retries, a
slot), each with its own reply or error. Off on Cluster, where a round trip's keys
would span slots and nodes: there every call goes alone.
"""

from __future__ import annotations

from typing import Any

from cachegate.core import CallCounters, Deadline
from cachegate.pool._backend import Backend
from cachegate.pool._batchqueue import Command, plan
from cachegate.pool._callpath import CallPath
from cachegate.pool._errors import ErrorKind, classify, translate

__all__ = ["BATCHED", "SharedTrips"]

# The calls auto-batching carries (the service's unary calls), by name and argument count.
BATCHED: dict[str, int] = {"GET": 1, "SETEX": 3, "DEL": 1}


class SharedTrips:
    """Round trips shared by batched calls, run on one pool's call path."""

    def __init__(self, calls: CallPath, backend: Backend, counters: CallCounters) -> None:
        self._calls = calls
        self._backend = backend
        self._counters = counters

    def run(self, commands: list[Command], deadline: Deadline) -> list[Any]:
        """Calls batched by the AutoBatcher as one round trip: each call's reply, or the
        error Redis answered it with in its place (CommandError, ...). An outage fails
        the round trip as a whole, counted once for the breaker like any call, and is
        retried as any call of these idempotent commands is."""
        wire, at = plan(commands)
        if len(commands) > 1:
            self._counters.shared(len(commands) - 1)
        if len(wire) == 1:  # one command (identical GETs): the single call's own path
            command = wire[0]
            replies = [
                self._calls.with_retries(
                    lambda read_timeout: self._backend.run(command, read_timeout),
                    deadline,
                    retryable=True,
                )
            ]
        else:
            replies = self._calls.with_retries(
                lambda read_timeout: self._replies_of(wire, read_timeout), deadline, retryable=True
            )
        results = [replies[index] for index in at]
        hits = misses = 0
        for command, result in zip(commands, results, strict=True):
            if command[0] == "GET" and not isinstance(result, Exception):
                if result is None:
                    misses += 1
                else:
                    hits += 1
        if hits or misses:
            self._counters.reads(hits, misses)
        return results

    def _replies_of(self, wire: list[Command], read_timeout: float) -> list[Any]:
        """One attempt of a shared round trip; an error reply that says Redis cannot
        serve (as the call alone would have raised it) fails the attempt as a whole."""
        replies = self._backend.run_each(wire, read_timeout)
        for index, reply in enumerate(replies):
            if isinstance(reply, Exception):
                kind = classify(reply) or ErrorKind.REPLY
                if kind is not ErrorKind.REPLY:
                    raise reply
                error = translate(reply, kind)
                error.__cause__ = reply
                replies[index] = error
        return replies
