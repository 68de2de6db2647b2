"""Auto-batching of single GET, SETEX and DEL calls that meet in one pool.

The decisions (who goes when, which calls share a read) are `_batchqueue.py`'s; this
module is their threads. There is no batching thread: the call that finds nothing in
flight sends itself, and when a round trip returns, the thread that sent it wakes
one of the queued calls' threads to send the next one (with every call queued by the
time it runs), and returns its own reply. Every other caller sleeps on a lock of its own until
its reply is set, its deadline passes or its patience runs out (see _batchqueue.py).

`alone(command, deadline)` is the pool's single-call path (retries, breaker,
counters); `shared(commands, deadline)` sends many calls as one round trip and returns
one reply per call, an error reply standing as an exception in its place. An error of
the round trip as a whole (Redis down, the breaker open) is every caller's error; the
breaker counts the round trip once, as the pool counts any call.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

from cachegate.core import Deadline
from cachegate.pool._batchqueue import BatchQueue, Command, State, Ticket
from cachegate.pool._errors import RedisTimeoutError, RedisUnavailableError

__all__ = ["MAX_BATCH", "AutoBatcher"]

# Calls one round trip carries at most; the rest go in the next. A worker rarely has
# more calls waiting than RPC threads, so this bounds the odd burst (an in-process
# pool with many threads), not the common case.
MAX_BATCH = 64

Alone = Callable[[Command, Deadline], Any]
Shared = Callable[[list[Command], Deadline], list[Any]]

_WAITING = (State.QUEUED, State.SENT)
_IN_TRIP = (State.SENT, State.LEADS)


def _asleep() -> threading.Lock:
    """A wake-up handle: held now, released once to wake the thread blocked on it."""
    lock = threading.Lock()
    lock.acquire()
    return lock


def _own(error: BaseException) -> BaseException:
    """A caller's own copy of an error shared by a round trip (an exception object
    raised in several threads at once would collect all their tracebacks)."""
    try:
        return copy.copy(error)
    except Exception:  # an exception type that cannot be rebuilt from its args
        return error


class AutoBatcher:
    """Natural batching of one pool's single calls: see _batchqueue.py."""

    def __init__(
        self,
        alone: Alone,
        shared: Shared,
        *,
        patience: float,
        max_batch: int = MAX_BATCH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._alone = alone
        self._shared = shared
        self._clock = clock
        self._lock = threading.Lock()  # guards the queue and every ticket's state
        self._queue = BatchQueue(max_batch, patience)

    @property
    def busy(self) -> bool:
        """A round trip is in flight: a call now would queue for the next one."""
        return self._queue.busy

    @property
    def queued(self) -> int:
        """Calls queued now for the round trip after the one in flight."""
        return self._queue.queued

    def call(self, command: Command, deadline: Deadline) -> Any:
        """`command`'s reply, sent alone at once or in the next shared round trip."""
        ticket = Ticket(command, deadline.at, self._clock())
        with self._lock:
            alone = self._queue.arrive(ticket)
            if not alone:
                ticket.wake = _asleep()
        if alone:
            try:
                return self._alone(command, deadline)
            finally:
                self._returned()
        return self._wait(ticket, deadline)

    # --- a queued call -------------------------------------------------------------------

    def _wait(self, ticket: Ticket, deadline: Deadline) -> Any:
        lock, queue, clock = self._lock, self._queue, self._clock
        while True:
            with lock:
                state = ticket.state
                limit = queue.wait_limit(ticket, clock()) if state in _WAITING else 0.0
            if state in _WAITING:
                if limit is None:
                    ticket.wake.acquire()
                elif limit > 0:
                    ticket.wake.acquire(timeout=min(limit, threading.TIMEOUT_MAX))
            with lock:
                state = queue.timed_out(ticket, clock())
            if state is State.DONE:
                return self._result(ticket)
            if state is State.LEADS:
                self._lead(ticket)
                return self._result(ticket)
            if state is State.EXPIRED:
                raise _expired()
            if state is State.ALONE:  # the round trip in flight is stuck: go without it
                return self._alone(ticket.command, deadline)

    @staticmethod
    def _result(ticket: Ticket) -> Any:
        if ticket.state is State.EXPIRED:  # the leader found its deadline gone
            raise _expired()
        error = ticket.error
        if error is None:
            return ticket.reply
        raise _own(error) from error

    # --- the round trip ------------------------------------------------------------------

    def _lead(self, leader: Ticket) -> None:
        """Take the round trip `leader` (this thread) sends, as it runs now; send it,
        set every caller's reply, then hand the next round trip on."""
        live: list[Ticket] = []
        try:
            with self._lock:
                now = self._clock()
                batch, expired = self._queue.take(leader, now)
                for ticket in expired:
                    ticket.wake.release()
                if leader.expires is not None and leader.expires <= now:
                    # Its deadline was the batch's latest: every call in it is past its own.
                    for ticket in batch:
                        ticket.state = State.EXPIRED  # never sent
                        if ticket is not leader:
                            ticket.wake.release()
                else:
                    live = batch
            if live:
                self._send(leader, live)
        finally:
            # Whatever went wrong here, no caller of this batch is left waiting (a state
            # never moves back into a round trip, so this read needs no lock).
            if any(ticket.state in _IN_TRIP for ticket in live):
                self._settle(leader, live, [_unsettled()] * len(live))
            self._returned()

    def _send(self, leader: Ticket, live: list[Ticket]) -> None:
        # The leader has the latest deadline of the batch: the round trip waits that long.
        deadline = Deadline(leader.expires, self._clock)
        try:
            replies = self._shared([ticket.command for ticket in live], deadline)
        except BaseException as exc:
            shared: BaseException = exc
            if not isinstance(exc, Exception):  # the leader's thread was interrupted
                shared = RedisUnavailableError(f"the shared round trip was interrupted: {exc!r}")
            self._settle(leader, live, [shared] * len(live))
            if shared is not exc:
                raise
            return
        self._settle(leader, live, replies)

    def _settle(self, leader: Ticket, live: list[Ticket], replies: list[Any]) -> None:
        with self._lock:
            for ticket, reply in zip(live, replies, strict=True):
                if ticket.state not in _IN_TRIP:
                    continue  # its deadline passed while the round trip was in flight
                if isinstance(reply, BaseException):
                    ticket.error = reply
                else:
                    ticket.reply = reply
                ticket.state = State.DONE
                if ticket is not leader:
                    ticket.wake.release()

    def _returned(self) -> None:
        """The round trip in flight is over: wake the next one's leader, if any, and
        the queued calls whose deadline passed."""
        with self._lock:
            leader, expired = self._queue.returned(self._clock())
            for ticket in expired:
                ticket.wake.release()
            if leader is not None:
                leader.wake.release()


def _expired() -> RedisTimeoutError:
    return RedisTimeoutError(
        "deadline exceeded waiting for Redis: the caller's deadline passed while its call "
        "waited for a round trip shared with other calls"
    )


def _unsettled() -> RedisUnavailableError:
    return RedisUnavailableError("the shared round trip carrying this call ended without its reply")
