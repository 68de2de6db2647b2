"""The background prober of an open breaker: PINGs of Redis with no user call.

While the breaker is OPEN, a prober thread PINGs Redis on the core's `ProbeSchedule`:
about a second after the opening, then at doubling intervals up to
REDIS_RECOVERY_TIMEOUT. A PING that answers ends the breaker's wait (OPEN ->
HALF_OPEN, `CircuitBreaker.probe_succeeded`), so a Redis that stalled for a few
seconds costs seconds, not the whole recovery timeout; a Redis that stays down gets
at most one PING per interval from each process. The thread starts when the breaker
opens (its state listener), ends when the breaker is no longer waiting (half-open,
closed, or forced open by an operator, which a probe never undoes) and on `stop()`
(the pool's close()); there is no thread while the breaker is closed. A probe takes a
connection slot like any call, so REDIS_MAX_CONNECTIONS holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cachegate.core import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    ProbePolicy,
    ProbeSchedule,
)
from cachegate.pool._backend import Backend
from cachegate.pool._slots import Slots

__all__ = ["Prober"]

log = logging.getLogger("cachegate.pool")


class Prober:
    """One pool's prober: listens to `breaker` from its construction on.

    `timeout` bounds each probe's wait for a connection slot and for Redis's answer.
    """

    def __init__(
        self,
        breaker: CircuitBreaker,
        slots: Slots,
        backend: Backend,
        policy: ProbePolicy,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._breaker = breaker
        self._slots = slots
        self._backend = backend
        self._timeout = timeout
        self._lock = threading.Lock()  # guards the schedule and the thread handle
        self._schedule = ProbeSchedule(policy, clock)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._probes = {"success": 0, "failure": 0}
        breaker.add_listener(self._on_breaker_change)

    @property
    def succeeded(self) -> int:
        """Probes Redis answered."""
        return self._probes["success"]

    @property
    def failed(self) -> int:
        """Probes Redis did not answer (or that found every connection busy)."""
        return self._probes["failure"]

    def stop(self) -> None:
        """No more probes; waits for one in flight (it ends within its own timeout)."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._timeout + 1.0)

    def sooner(self, exc: CircuitOpenError) -> CircuitOpenError:
        """The breaker's rejection, with the retry hint cut to the next probe when that
        comes before the end of the recovery timeout (the earliest a call can pass)."""
        with self._lock:
            if self._thread is None or not self._breaker.waiting:  # forced: no probes
                return exc
            next_probe = self._schedule.wait()
        if next_probe >= exc.retry_after:
            return exc
        return CircuitOpenError(exc.name, exc.state, next_probe)

    def _on_breaker_change(self, old: CircuitState, new: CircuitState) -> None:
        """The breaker's listener: start the prober when it opens; reset the schedule
        when it closes (Redis proved healthy, so the next outage starts at the first delay)."""
        with self._lock:
            if new is CircuitState.CLOSED:
                self._schedule.closed()
                return
            if new is not CircuitState.OPEN:
                return
            self._schedule.opened()
            if self._thread is not None or self._stop.is_set() or not self._schedule.policy.enabled:
                return
            self._thread = threading.Thread(
                target=self._loop, name="cachegate-breaker-probe", daemon=True
            )
            self._thread.start()

    def _loop(self) -> None:
        breaker = self._breaker
        while True:
            with self._lock:
                # Decided under the lock the listener takes after a transition: either
                # this thread sees the new OPEN and goes on, or the listener sees no
                # thread and starts one.
                if self._stop.is_set() or not breaker.waiting:
                    self._thread = None
                    return
                # Capped: a wait read between a reopening and its listener is inf.
                wait = min(self._schedule.wait(), self._schedule.policy.max_delay)
            if wait > 0:
                if self._stop.wait(wait):
                    with self._lock:
                        self._thread = None
                    return
                continue  # look at the breaker (and the schedule) again
            ok = self._probe()
            with self._lock:
                self._schedule.probed()
                self._probes["success" if ok else "failure"] += 1
            if ok and breaker.probe_succeeded():
                log.info("Redis answered the breaker's probe: half-open")

    def _probe(self) -> bool:
        """One PING past the breaker (never holding its lock), through the connection gate."""
        timeout = self._timeout
        if not self._slots.acquire(timeout):
            return False  # every connection busy: no verdict, and no extra connection
        try:
            self._backend.run(("PING",), timeout)
        except Exception as exc:  # any failure: Redis did not prove it answers
            log.debug("breaker probe failed", extra={"reason": f"{type(exc).__name__}: {exc}"})
            return False
        finally:
            self._slots.release()
        return True
