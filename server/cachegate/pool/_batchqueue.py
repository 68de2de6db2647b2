"""Auto-batching's decisions, pure: who goes to Redis when, and what goes on the wire.

Natural batching, with no timer window: a call that finds no round trip of its
pool's batcher in flight goes to Redis at once, alone, exactly as without
batching. Calls that arrive while a round trip is in flight queue; when it
returns, one of them is woken to send the next round trip (the leader: its thread
does the I/O), and when its thread runs it takes every call queued by then (at most
`max_batch`, in arrival order). So a call alone waits for nothing, and under
concurrency a round trip carries every call that arrived during the one before it,
and during its leader's wake-up too.

Each call keeps its own deadline. A call whose deadline passes while it is queued
leaves the queue (DEADLINE_EXCEEDED) and is never sent; one whose deadline passes
while its round trip is in flight stops waiting, and its reply is dropped. The
leader is the queued call with the latest deadline, and its round trip carries only
calls whose deadline is no later than its own (a later one waits for the next): the
round trip waits for Redis as long as its sender may and no longer, no caller is
failed by a deadline shorter than its own, and the leader is never held past its own.

A queued call waits for the round trip in flight at most `patience` seconds (the
pool's REDIS_POOL_TIMEOUT, the wait it would accept for a free connection): past
that, Redis is slow or hung, and the call leaves the queue and goes on its own
connection, as without batching. A hung Redis then costs each caller what it cost
before (its own attempt, its own verdict for the breaker, RESOURCE_EXHAUSTED when
no connection is free), rather than a place behind one round trip that cannot end.

Single-flight (`plan`): in one round trip, identical GETs are sent once and every
caller gets the one reply, unless a write of that key lies between them. Only calls
not yet sent share a read: a read already on the wire may have been sent before a
caller's own write (through another worker) was acknowledged, so joining it could
answer that caller with a value older than its write.

Not thread-safe: the batcher (`_autobatch.py`) calls it under its one lock.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Sequence
from typing import Any

__all__ = ["BatchQueue", "Command", "State", "Ticket", "plan"]

Command = tuple[Any, ...]


class State(enum.Enum):
    QUEUED = "queued"  # waiting for the round trip in flight to return
    SENT = "sent"  # in a round trip another call sends
    LEADS = "leads"  # in a round trip this call must send (its thread does the I/O)
    DONE = "done"  # its reply or error is set
    EXPIRED = "expired"  # its deadline passed before its reply came: DEADLINE_EXCEEDED
    ALONE = "alone"  # left the queue after `patience`: it goes on its own connection


class Ticket:
    """One call as the queue sees it (mutable: its state moves under the batcher's lock)."""

    __slots__ = ("arrived", "command", "error", "expires", "reply", "state", "wake")

    def __init__(self, command: Command, expires: float | None, arrived: float) -> None:
        self.command = command
        self.expires = expires  # the deadline on the pool's clock; None: none
        self.arrived = arrived
        self.state = State.QUEUED
        self.reply: Any = None
        self.error: BaseException | None = None
        self.wake: Any = None  # the batcher's handle to wake the waiting thread


def _later(ticket: Ticket) -> float:
    return float("inf") if ticket.expires is None else ticket.expires


def _arrival(ticket: Ticket) -> float:
    return ticket.arrived


class BatchQueue:
    """Whether a round trip is in flight, and the calls queued for the next one."""

    __slots__ = ("_busy", "_max_batch", "_patience", "_queue")

    def __init__(self, max_batch: int, patience: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._max_batch = max_batch
        self._patience = patience
        self._busy = False
        self._queue: collections.deque[Ticket] = collections.deque()

    @property
    def busy(self) -> bool:
        """A round trip is in flight (or being handed to its leader)."""
        return self._busy

    @property
    def queued(self) -> int:
        return len(self._queue)

    def arrive(self, ticket: Ticket) -> bool:
        """True: nothing in flight, the call goes at once, alone (now in flight).
        False: it is queued for the round trip after the one in flight."""
        if not self._busy:
            self._busy = True
            ticket.state = State.SENT
            return True
        ticket.state = State.QUEUED
        self._queue.append(ticket)
        return False

    def returned(self, now: float) -> tuple[Ticket | None, list[Ticket]]:
        """The round trip in flight returned: the call that sends the next one (LEADS,
        out of the queue; its thread takes its batch when it runs, `take`), or None when
        nothing is queued (idle now); and the queued calls whose deadline passed
        (EXPIRED, never sent)."""
        expired = self._drop_expired(now)
        if not self._queue:
            self._busy = False
            return None, expired
        leader = max(self._queue, key=_later)  # the latest deadline, the oldest of equals
        self._queue.remove(leader)
        leader.state = State.LEADS
        return leader, expired

    def take(self, leader: Ticket, now: float) -> tuple[list[Ticket], list[Ticket]]:
        """The round trip `leader` sends, taken as its thread runs: the leader and the
        calls queued by now whose deadline is no later than its own, at most
        `max_batch`, in arrival order; and the queued calls whose deadline passed."""
        expired = self._drop_expired(now)
        limit = _later(leader)
        batch = [leader]
        kept: collections.deque[Ticket] = collections.deque()
        for ticket in self._queue:
            if len(batch) < self._max_batch and _later(ticket) <= limit:
                ticket.state = State.SENT
                batch.append(ticket)
            else:
                kept.append(ticket)
        self._queue = kept
        batch.sort(key=_arrival)
        return batch, expired

    def _drop_expired(self, now: float) -> list[Ticket]:
        expired = [t for t in self._queue if t.expires is not None and t.expires <= now]
        for ticket in expired:
            ticket.state = State.EXPIRED
            self._queue.remove(ticket)
        return expired

    def wait_limit(self, ticket: Ticket, now: float) -> float | None:
        """How long the waiting call may sleep before `timed_out` must look at it
        (None: until woken, which its round trip always does)."""
        limit = None if ticket.expires is None else ticket.expires - now
        if ticket.state is State.QUEUED:
            patience = ticket.arrived + self._patience - now
            limit = patience if limit is None else min(limit, patience)
        return limit

    def timed_out(self, ticket: Ticket, now: float) -> State:
        """A waiting call's sleep ran out: its state now (EXPIRED, ALONE, or as it was
        when neither its deadline nor its patience has run out yet)."""
        state = ticket.state
        if state not in (State.QUEUED, State.SENT):
            return state
        if ticket.expires is not None and ticket.expires <= now:
            ticket.state = State.EXPIRED
        elif state is State.QUEUED and now - ticket.arrived >= self._patience:
            ticket.state = State.ALONE
        else:
            return state
        if state is State.QUEUED:
            self._queue.remove(ticket)
        return ticket.state


def _key(key: Any) -> bytes | None:
    """A key as Redis sees it (redis-py sends a str as UTF-8); None: not shareable."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    return None


def plan(commands: Sequence[Command]) -> tuple[list[Command], list[int]]:
    """The commands of one round trip, and for each call the index of the command
    whose reply is its own: identical GETs share one read (single-flight) unless a
    SETEX or DEL of that key lies between them. Order is kept: every write and
    every first read goes where its call arrived."""
    wire: list[Command] = []
    at: list[int] = []
    reads: dict[bytes, int] = {}
    for command in commands:
        if command[0] == "GET" and len(command) == 2:
            key = _key(command[1])
            shared = None if key is None else reads.get(key)
            if shared is not None:
                at.append(shared)
                continue
            if key is not None:
                reads[key] = len(wire)
        else:  # a write: later reads of its keys read again
            keys = command[1:2] if command[0] == "SETEX" else command[1:]
            for written in keys:
                found = _key(written)
                if found is None:
                    reads.clear()  # a key we cannot compare: share nothing across it
                else:
                    reads.pop(found, None)
        at.append(len(wire))
        wire.append(command)
    return wire, at
