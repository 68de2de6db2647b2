"""A counting gate in front of the connection pool: fair waits with a timeout, and counts.

redis-py's plain ConnectionPool fails at once when full, and its
BlockingConnectionPool's wait time is one pool-wide attribute. This gate gives
each caller its own wait (capped by its deadline) and says how many wait.

The free slots are tokens on a C `queue.SimpleQueue`: while nobody waits, taking
and giving back a slot is one C call each, with no Python-level lock on the path
every call takes (a Condition here measured dearer under load; docs/performance.md).

Waiters queue first come, first served. Without more, a thread that frees a slot
and calls again takes it back before the waiter it woke gets to run, every time
it runs first: with many more threads than slots a few waiters lost that race
again and again until their timeout failed the call, although the pool was never
stuck (issue 17). So once the longest waiter has waited OVERTAKE_SHARE of its own
timeout, a freed slot is handed straight to it, reserved: it never goes back to
the free tokens, and neither the releasing thread nor a newcomer can take it.

Before that point a freed slot goes back to the tokens and the longest waiter is
woken to take it, and the releasing thread may still take it first. That short
grace is what keeps a busy pool's throughput: every hand-off makes the releasing
thread wait and the waiter's thread run, a thread switch that moves the GIL, and
when the waiter's thread sleeps on another CPU that switch costs a cross-CPU
wake-up. Handing every slot over at once made the calls of a process whose
threads use several CPUs markedly dearer (`scripts/bench_pool.py` shows both
layouts); with the grace they cost what they cost before, and no wait gets much
longer than the grace. `overtake_share=0` hands every slot over at once.

A waiter whose timeout passes, or whose wait is interrupted (an exception raised
in its thread), leaves the queue under the lock: from then on no slot is handed to
it. A slot handed over just before it left is its own, or passed on when it raises.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable

__all__ = ["OVERTAKE_SHARE", "Slots"]

# How long, as a share of its own timeout, a waiter may see freed slots taken by
# others before every freed slot is reserved for it (2%: 20 ms of the default
# 1 s REDIS_POOL_TIMEOUT; a call with a short deadline gets its turn sooner).
OVERTAKE_SHARE = 0.02


class _Waiter:
    """One queued caller. `wake` is locked while it sleeps; released to wake it."""

    __slots__ = ("awake", "granted", "reserve_from", "since", "wake")

    def __init__(self, since: float, reserve_from: float) -> None:
        self.since = since
        self.reserve_from = reserve_from  # from then on freed slots are handed to it
        self.wake = threading.Lock()
        self.wake.acquire()
        self.awake = False  # `wake` released and not yet taken again (under the gate's lock)
        self.granted = False  # a slot was handed to it (under the gate's lock)


class Slots:
    """At most `size` holders at once; others wait, first come first served, up to
    their own timeout."""

    __slots__ = (
        "_clock",
        "_lock",
        "_overtake_share",
        "_size",
        "_tokens",
        "_wait_seconds_total",
        "_waiters",
    )

    def __init__(
        self,
        size: int,
        *,
        overtake_share: float = OVERTAKE_SHARE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._size = size
        self._overtake_share = overtake_share
        self._clock = clock
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(size):
            self._tokens.put(None)
        # Guards the waiters, every hand-over and the wait figures (the slow path only).
        self._lock = threading.Lock()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._wait_seconds_total = 0.0

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting at most `timeout` seconds; False when none came free."""
        try:
            self._tokens.get_nowait()  # the fast path: no clock, no lock
            return True
        except queue.Empty:
            if timeout <= 0:
                return False
        return self._wait(timeout)

    def release(self) -> None:
        if self._waiters:  # someone waits: the slot may be theirs already
            with self._lock:
                self._give_back()
            return
        if self._tokens.qsize() >= self._size:
            raise RuntimeError("Slots.release() without a matching acquire()")
        self._tokens.put(None)
        if self._waiters:  # a caller queued while the token went back: wake it for it
            with self._lock:
                self._nudge()

    @property
    def size(self) -> int:
        return self._size

    @property
    def held(self) -> int:
        """Slots taken, handed-over ones included (they never went back to the tokens)."""
        return self._size - self._tokens.qsize()

    @property
    def pending(self) -> int:
        """Callers queued for a slot now."""
        return len(self._waiters)

    @property
    def wait_seconds_total(self) -> float:
        with self._lock:
            return self._wait_seconds_total

    # --- the slow path (everything below runs with the lock held, except _wait) ----

    def _wait(self, timeout: float) -> bool:
        clock = self._clock
        now = clock()
        waiter = _Waiter(now, now + timeout * self._overtake_share)
        deadline = now + timeout
        with self._lock:
            self._waiters.append(waiter)
            # A slot freed after the fast path missed went to the tokens: the longest
            # waiter (us, if nobody waits longer) is woken to take it.
            self._nudge()
        try:
            while True:
                left = deadline - clock()
                woke = left > 0 and waiter.wake.acquire(timeout=min(left, threading.TIMEOUT_MAX))
                with self._lock:
                    if waiter.granted:
                        return True
                    if not woke:  # its time is up: it leaves, and no slot comes to it now
                        self._leave_queue(waiter)
                        return False
                    waiter.awake = False
                    try:
                        self._tokens.get_nowait()  # woken for a free token
                    except queue.Empty:
                        continue  # overtaken within its grace: wait on, still first in line
                    self._leave_queue(waiter)
                    return True
        except BaseException:
            with self._lock:
                if waiter.granted:  # interrupted as the slot came: it goes on, not lost
                    self._give_back()
                elif waiter in self._waiters:
                    self._leave_queue(waiter)
            raise

    def _give_back(self) -> None:
        """A held slot comes free: handed to the longest waiter once its grace is over,
        else back to the tokens (and that waiter is woken to take it)."""
        waiters = self._waiters
        if waiters and self._clock() >= waiters[0].reserve_from:
            waiter = waiters.popleft()
            waiter.granted = True
            self._wait_seconds_total += self._clock() - waiter.since
            self._wake(waiter)
            self._nudge()  # a token it was woken for, if any, is for the next waiter now
            return
        self._tokens.put(None)
        self._nudge()

    def _nudge(self) -> None:
        """Wake the longest waiter when a token is free (it may take it)."""
        if self._waiters and self._tokens.qsize():
            self._wake(self._waiters[0])

    def _leave_queue(self, waiter: _Waiter) -> None:
        self._waiters.remove(waiter)
        self._wait_seconds_total += self._clock() - waiter.since
        self._nudge()  # a token it leaves free goes to the next waiter

    @staticmethod
    def _wake(waiter: _Waiter) -> None:
        if not waiter.awake:
            waiter.awake = True
            waiter.wake.release()
