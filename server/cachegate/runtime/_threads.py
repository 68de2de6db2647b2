"""The server's thread pool: a few hot threads, and more only while long calls hold them.

grpc's sync server runs every RPC on a thread of the executor it is given. The usual
choice, a thread per RPC in flight, wakes a sleeping thread for nearly every call,
and each wake-up is a context switch that can cost more than the call's own work
(docs/performance.md, "Why each mechanism exists"). A small pool lets a thread that
finishes a call take the next one without sleeping.

A fixed small pool would starve, though: a Pipeline stream holds its thread for its
whole life, a hanging Redis holds unary calls up to their deadlines, and a slow or
overloaded Redis holds every call for tens of milliseconds (in the waits for a
connection and for a reply). So this pool counts a thread as held when it has been
busy for longer than `held_after`, or for longer than `blocked_after` while the
process leaves CPU time unused: then the threads wait on something other than the
CPU, and more threads can run. While calls wait and fewer than `core` threads are
free of held work, it starts more threads, up to `limit` (the server's RPC limit, so
every admitted RPC can still get a thread, as with a thread per RPC). When the CPU
is saturated instead, a call that takes a few milliseconds is waiting for the CPU,
and more threads would only contend for it. A thread above `core` leaves once the
held calls it was started for have ended (after a call, when more than `core`
threads are free), or after `idle_exit` seconds without work.

Calls queue on the C `queue.SimpleQueue` the stdlib pool also uses (no Python-level
lock per hand-off, where a Condition measured dearer); the held-thread check runs on
a watcher thread that wakes every `2 * blocked_after` while the pool is busy and
reads the process's CPU time to tell the two kinds of busy apart (`CpuGauge`).

"CPU time unused" is judged against the CPU this process may use (`cpu_share`: its
part of the affinity set and of the cgroup quota, at most the one CPU the GIL lets it
use; `_cpus.process_cpu_share`), never against a fixed figure: a process held to half
a CPU by its quota never uses more than that, and would otherwise look idle while it
waits for the CPU. Under a quota the process runs, then is throttled, within each
quota period: there the CPU time is also averaged over at least one period, so a
throttled stretch does not look like idle CPU.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from typing import Any, ParamSpec, TypeVar

__all__ = ["CPU_ROOM", "CPU_SMOOTHING", "CpuGauge", "RpcThreadPool"]

# The process counts as leaving CPU time unused while the CPU time it used, averaged
# over the last ticks, stays below this part of the CPU it may use (`cpu_share`): a
# saturated worker and one serving a slow Redis (drill 10) fall on either side of it
# (docs/performance.md has the figures). Single ticks can look idle even when
# saturated, which is why one tick alone decides nothing.
CPU_ROOM = 0.5
# Weight of the newest tick in that average: about the last five ticks count.
CPU_SMOOTHING = 0.3


class CpuGauge:
    """Tells from the process's CPU time whether it leaves CPU unused (pure: the
    caller passes the clock readings, one per watcher tick).

    `share`: the CPU the process may use, in CPUs. Two averages must both be below
    CPU_ROOM of it: one over the last ticks (it follows a slow Redis within a few
    ticks), and, under a CPU quota (`period` > 0, in seconds), one over at least a
    whole quota period: a process at its quota runs, then is throttled, within each
    period, and a throttled stretch must not look like idle CPU. Until a period has
    been read it answers "no room" (as if saturated: a guess must not start threads).
    """

    __slots__ = ("_average", "_last", "_period", "_room_below", "_samples")

    def __init__(self, share: float, period: float, wall: float, cpu: float) -> None:
        if share <= 0 or period < 0:
            raise ValueError(f"need share > 0 and period >= 0, got {share}, {period}")
        self._room_below = CPU_ROOM * share
        self._period = period
        self._average = share  # start as if saturated
        self._last = (wall, cpu)
        self._samples: deque[tuple[float, float]] = deque([(wall, cpu)])

    def room(self, wall: float, cpu: float) -> bool:
        """Add a reading (wall clock, process CPU time); did the process use less than
        CPU_ROOM of its share lately?"""
        last_wall, last_cpu = self._last
        self._last = (wall, cpu)
        if wall > last_wall:
            used = (cpu - last_cpu) / (wall - last_wall)
            self._average += CPU_SMOOTHING * (used - self._average)
        if not self._period:
            return self._average < self._room_below
        samples = self._samples
        samples.append((wall, cpu))
        # Keep the newest reading at least a period old as the window's start.
        while len(samples) > 2 and wall - samples[1][0] >= self._period:
            samples.popleft()
        first_wall, first_cpu = samples[0]
        span = wall - first_wall
        return (
            self._average < self._room_below
            and span >= self._period
            and (cpu - first_cpu) / span < self._room_below
        )


P = ParamSpec("P")
T = TypeVar("T")

_Work = tuple["futures.Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None


class RpcThreadPool(futures.Executor):
    """An executor with `core` hot threads that grows past threads held by long calls."""

    def __init__(
        self,
        core: int,
        limit: int,
        *,
        held_after: float = 0.05,
        blocked_after: float = 0.005,
        idle_exit: float = 60.0,
        cpu_share: float = 1.0,
        cpu_period: float = 0.0,
        name: str = "cachegate-rpc",
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        """`cpu_share`: the CPU this process may use, in CPUs; `cpu_period`: its CPU
        quota's period in seconds (0: no quota). Both from `_cpus.py` via the plan."""
        if not 1 <= core <= limit:
            raise ValueError(f"need 1 <= core <= limit, got core={core} limit={limit}")
        self._core = core
        self._limit = limit
        self._held_after = held_after
        self._blocked_after = blocked_after
        self._cpu_clock = cpu_clock
        # Set by the watcher every tick: did the process leave CPU time unused?
        self._cpu_room = False
        self._idle_exit = idle_exit
        self._name = name
        self._clock = clock
        self._gauge = CpuGauge(cpu_share, cpu_period, clock(), cpu_clock())
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards the thread count and shutdown
        self._threads = 0
        self._started_total = 0
        # Worker thread id -> when its current call began (dict writes are atomic).
        self._busy_since: dict[int, float] = {}
        self._busy = threading.Event()  # set while the watcher should keep looking
        self._shutdown = False
        self._watcher = threading.Thread(target=self._watch, name=f"{name}-watcher", daemon=True)
        self._watcher.start()

    # --- futures.Executor ----------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> futures.Future[T]:
        if self._shutdown:
            raise RuntimeError("cannot submit to a pool that was shut down")
        future: futures.Future[T] = futures.Future()
        self._queue.put((future, fn, args, kwargs))
        if self._threads < self._core:  # a racy read; _start_thread checks again
            self._start_thread(below=self._core)
        if not self._busy.is_set():
            self._busy.set()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = self._threads
        if cancel_futures:
            while True:
                try:
                    work = self._queue.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
        for _ in range(threads):
            self._queue.put(None)  # one stop mark per worker, behind the queued calls
        self._busy.set()
        if wait:
            self._watcher.join()
            while self.threads:
                time.sleep(0.01)

    # --- figures (tests, debugging) ------------------------------------------------

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        with self._lock:
            return self._threads

    def now(self) -> float:
        """The pool's clock (the times `running_before` compares)."""
        return self._clock()

    def running_before(self, when: float) -> int:
        """Calls running now that started before `when` (a time of `now()`); a graceful
        stop waits for these (calls queued or started later are not counted)."""
        return sum(1 for since in list(self._busy_since.values()) if since < when)

    @property
    def started_total(self) -> int:
        """Worker threads started since the pool was made."""
        with self._lock:
            return self._started_total

    # --- internals -------------------------------------------------------------------

    def _start_thread(self, *, below: int) -> bool:
        with self._lock:
            if self._shutdown or self._threads >= below:
                return False
            self._threads += 1
            self._started_total += 1
            name = f"{self._name}-{self._started_total}"
        threading.Thread(target=self._work, name=name, daemon=True).start()
        return True

    def _free_threads(self) -> int:
        """Threads not held by a long call (see the module's docstring)."""
        cutoff = self._clock() - (self._blocked_after if self._cpu_room else self._held_after)
        held = sum(1 for since in list(self._busy_since.values()) if since < cutoff)
        return self._threads - held

    def _grow_past_held(self) -> None:
        """Start threads so that `core` of them are free of held calls (up to `limit`).

        While the threads block with CPU to spare, every waiting call gets a thread at
        once: each will block too, and a queue in front of them only delays the
        answer (a shed call's RESOURCE_EXHAUSTED, above all).
        """
        waiting = self._queue.qsize()
        if not waiting or len(self._busy_since) < self._threads:  # a free thread will take it
            return
        missing = self._core - self._free_threads()
        if self._cpu_room and missing > 0:
            missing = waiting
        for _ in range(min(missing, waiting)):
            if not self._start_thread(below=self._limit):
                break

    def _watch(self) -> None:
        gauge = self._gauge
        while not self._shutdown:
            self._busy.wait()
            # Look again once a thread could have been held for long.
            time.sleep(2 * self._blocked_after)
            self._cpu_room = gauge.room(self._clock(), self._cpu_clock())
            self._grow_past_held()
            if not self._busy_since and not self._queue.qsize():
                self._busy.clear()  # nothing runs: sleep until the next submit
                if self._busy_since or self._queue.qsize():  # raced with a submit
                    self._busy.set()

    def _work(self) -> None:
        me = threading.get_ident()
        busy_since, clock, get = self._busy_since, self._clock, self._queue.get
        while True:
            try:
                # Threads above `core` wait a limited time, then leave.
                work = get(timeout=self._idle_exit) if self._threads > self._core else get()
            except queue.Empty:
                if self._retire(only_above_core=True):
                    return
                continue
            if work is None:  # shutdown's stop mark
                self._retire(only_above_core=False)
                return
            busy_since[me] = clock()
            try:
                _run(*work)
            finally:
                del work  # drop the call's references before we wait again
                del busy_since[me]
            # Under steady load a spare thread never idles long enough to leave;
            # so it leaves as soon as the held calls it was started for have ended.
            if self._threads > self._core and self._retire_surplus():
                return

    def _retire_surplus(self) -> bool:
        with self._lock:
            if self._threads <= self._core or self._free_threads() <= self._core:
                return False
            self._threads -= 1
            return True

    def _retire(self, *, only_above_core: bool) -> bool:
        with self._lock:
            if only_above_core and self._threads <= self._core:
                return False
            self._threads -= 1
            return True


def _run(
    future: futures.Future[Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # the future carries it to whoever waits, as in the stdlib
        future.set_exception(exc)
    else:
        future.set_result(result)
