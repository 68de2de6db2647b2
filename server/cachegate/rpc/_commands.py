"""Breaker commands: what an admin RPC asks of the breaker, and how far it reached.

The gRPC layer knows only the `BreakerCommands` protocol. One process applies a
command to its own breaker at once (`LocalBreakerCommands`); in worker mode the
process runtime hands in `SharedBreakerCommands` (runtime/_board.py), which carries
each command to every worker.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from cachegate.core import CircuitBreaker

__all__ = ["BreakerCommands", "Forced", "LocalBreakerCommands", "Reach"]


class Forced(enum.IntEnum):
    """The breaker command in force across the workers."""

    NONE = 0  # released (ResetBreaker, or never forced)
    OPEN = 1
    CLOSED = 2

    def apply(self, breaker: CircuitBreaker) -> None:
        if self is Forced.OPEN:
            breaker.force_open()
        elif self is Forced.CLOSED:
            breaker.force_closed()
        else:
            breaker.reset()


@dataclass(frozen=True, slots=True)
class Reach:
    """How far a command got: its generation, and the live workers that did not ack it."""

    generation: int
    workers: int
    pending: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.pending


class BreakerCommands(Protocol):
    """What AdminServicer calls: apply `forced` to every worker's breaker (bounded wait)."""

    def command(self, forced: Forced, timeout: float) -> Reach: ...


class LocalBreakerCommands:
    """One process: the command applies to its own breaker at once."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    def command(self, forced: Forced, timeout: float) -> Reach:
        forced.apply(self._breaker)
        return Reach(generation=0, workers=1)
