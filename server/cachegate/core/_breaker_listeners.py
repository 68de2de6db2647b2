"""The circuit breaker's listeners, and the announcing of its transitions to them."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import TypeAlias

from cachegate.core._breaker_states import CircuitState

__all__ = ["StateListener", "TransitionAnnouncer"]

StateListener: TypeAlias = Callable[[CircuitState, CircuitState], None]
"""Called with ``(old, new)`` once per state change, outside the breaker's lock."""


class TransitionAnnouncer:
    """
    Announces a breaker's transitions to its listeners: in the order they
    happened, once each, and never while the breaker's lock is held.

    The breaker calls `queue` with its own lock held, so the queue's order is
    the transitions' order; this object's lock is only ever taken inside the
    breaker's or alone (never the other way round), so the two cannot deadlock.
    After releasing its lock the breaker calls `announce`.

    Args:
        owner: The breaker's name, for error messages.
    """

    __slots__ = ("_announcing", "_listeners", "_lock", "_owner", "_pending")

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._lock = threading.Lock()
        # Copy-on-write tuple: a transition captures the listeners registered
        # at that moment without copying.
        self._listeners: tuple[StateListener, ...] = ()
        self._pending: deque[tuple[CircuitState, CircuitState, tuple[StateListener, ...]]] = deque()
        # Whether some thread is announcing; see announce().
        self._announcing = False

    def add(self, listener: StateListener) -> None:
        """Register *listener* (again, if it already is: then it is called twice)."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove(self, listener: StateListener) -> None:
        """
        Unregister the first registration of *listener*.

        Raises:
            ValueError: if *listener* isn't registered (like `list.remove`).
        """
        with self._lock:
            listeners = list(self._listeners)
            try:
                listeners.remove(listener)
            except ValueError:
                msg = f"{listener!r} is not a registered listener of {self._owner!r}"
                raise ValueError(msg) from None
            self._listeners = tuple(listeners)

    def queue(self, old: CircuitState, new: CircuitState) -> bool:
        """Queue the transition for the listeners registered now; whether to `announce`."""
        with self._lock:
            if not self._listeners:
                return False
            self._pending.append((old, new, self._listeners))
            return True

    def announce(self) -> None:
        """
        Announce queued transitions to their listeners.

        Only one thread announces at a time and it drains the queue in order,
        so listeners see transitions in the order they happened even when
        several threads trigger them concurrently. A listener that calls back
        into the breaker (even one that causes another transition) merely
        queues more work for the loop below instead of deadlocking or
        reordering.
        """
        with self._lock:
            if self._announcing:
                return
            self._announcing = True
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._announcing = False
                        return
                    old, new, listeners = self._pending.popleft()
                for listener in listeners:
                    # A broken metrics hook must not take the breaker -- and
                    # with it every Redis call -- down, nor starve the
                    # listeners after it. The pure core does no logging, so
                    # the error is swallowed: a listener that wants its errors
                    # reported has to catch and report them itself.
                    with contextlib.suppress(Exception):
                        listener(old, new)
        except BaseException:
            # KeyboardInterrupt & co. propagate, but must not leave the flag
            # set: that would silence all future notifications. Whatever is
            # still queued goes out with the next transition.
            with self._lock:
                self._announcing = False
            raise
