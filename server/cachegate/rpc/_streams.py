"""Fair Pipeline streams: a share of the stream slots per caller, and an idle timeout.

An open Pipeline stream holds one of the process's stream slots (CACHEGATE_MAX_STREAMS)
and a server thread for its whole life. Two rules keep one caller from holding them all:

- **A share per caller.** One caller holds at most CACHEGATE_STREAM_SHARE of the slots
  (at least one). With tokens a caller is its tenant: all of a tenant's clients share
  one share. Without tokens a caller is the client's IP address, the peer gRPC reports
  less its port. The port names one connection, and a caller may open as many
  connections as it likes, so a share per port would bound nothing; the price is that
  all clients on one host, or behind one proxy, share one share (give them tokens to
  tell them apart). Other transports (a unix socket) are one caller each.
- **An idle timeout.** A stream that goes CACHEGATE_STREAM_IDLE_SECONDS without a batch
  is ended with RESOURCE_EXHAUSTED and a message naming the setting; its slot and its
  thread come back. The clock runs while the stream waits for its next batch (from
  admission on) and stops while a batch is being served.

The handler's thread waits for a batch inside grpc's request iterator, which nothing in
grpc's public API can wake with a status of our choosing: `context.cancel()` ends the
call CANCELLED, a code the README's error table does not list. grpc core can: a server
call cancelled with a status (`grpc_call_cancel_with_status`, which grpcio exposes as
`cancel(code, details)` on the call behind the servicer context) sends that status as
the stream's trailers and wakes the waiting iterator with an RpcError, so the handler
unwinds through its `finally` and gives the slot back. One watchdog thread per process
looks for idle streams, and only while streams are open: no thread per stream.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import grpc

from cachegate.rpc._endcall import end_call
from cachegate.rpc._status import STREAM_IDLE, TooBusyError

__all__ = ["OpenStream", "StreamGate", "caller_of", "status_closer"]

log = logging.getLogger("cachegate.service")

T = TypeVar("T")

Clock = Callable[[], float]
Close = Callable[[str], None]
"""Ends one stream from another thread, with the given message (see status_closer)."""

# The watchdog looks this often (a quarter of the idle timeout, within these bounds), so
# an idle stream ends at most that long after its timeout.
_MIN_TICK, _MAX_TICK = 0.05, 1.0


def caller_of(peer: str, tenant: str | None) -> str:
    """Who holds a stream, for its share: the tenant, else the peer's address less its port."""
    if tenant is not None:
        return f"tenant {tenant}"
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, _port = address.rpartition(":")
        return host or address
    return peer or "unknown peer"


def status_closer(context: grpc.ServicerContext) -> Close:
    """A way to end this call from another thread with STREAM_IDLE and a message."""
    return lambda message: end_call(context, STREAM_IDLE, message)


class OpenStream:
    """One admitted stream: who holds it and since when it waits for a batch."""

    __slots__ = ("_clock", "caller", "close", "idle_closed", "waiting_since")

    def __init__(self, caller: str, close: Close, clock: Clock) -> None:
        self.caller = caller
        self.close = close
        self._clock = clock
        # None while a batch is being served; the watchdog only reads it.
        self.waiting_since: float | None = clock()
        self.idle_closed = False

    def watch(self, requests: Iterable[T]) -> Iterator[T]:
        """The requests, unchanged; the idle clock stops while each one is served."""
        clock = self._clock
        for request in requests:
            self.waiting_since = None
            yield request
            self.waiting_since = clock()


class StreamGate:
    """Admits Pipeline streams within the slots and each caller's share; ends idle ones.

    `admit` raises TooBusyError (RESOURCE_EXHAUSTED) with a message naming the setting
    that refused; every admitted stream must be given back with `release`.
    """

    def __init__(
        self,
        max_streams: int,
        share: float,
        idle_seconds: float,
        *,
        clock: Clock = time.monotonic,
        watchdog: bool = True,
    ) -> None:
        self.max_streams = max_streams
        self.share = share
        self.per_caller = max(1, math.floor(max_streams * share))
        self.idle_seconds = idle_seconds
        self.idle_message = (
            f"Pipeline stream closed: no batch for {idle_seconds:g} s "
            "(CACHEGATE_STREAM_IDLE_SECONDS); open a new stream when there is work"
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._streams: set[OpenStream] = set()
        self._held: dict[str, int] = {}
        self._watchdog_enabled = watchdog and idle_seconds > 0
        self._watchdog: threading.Thread | None = None
        self._tick = min(max(idle_seconds / 4, _MIN_TICK), _MAX_TICK)

    def admit(self, caller: str, close: Close) -> OpenStream:
        with self._lock:
            if len(self._streams) >= self.max_streams:
                raise TooBusyError(
                    f"{self.max_streams} streams (Pipeline and Subscribe) are open already "
                    "(CACHEGATE_MAX_STREAMS); retry later or batch more per stream"
                )
            held = self._held.get(caller, 0)
            if held >= self.per_caller:
                raise TooBusyError(
                    f"{caller} holds {held} streams (Pipeline and Subscribe) already, its "
                    f"share of the {self.max_streams} stream slots "
                    f"(CACHEGATE_STREAM_SHARE={self.share:g}); "
                    "end a stream or batch more per stream"
                )
            stream = OpenStream(caller, close, self._clock)
            self._streams.add(stream)
            self._held[caller] = held + 1
            if self._watchdog_enabled and self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch, name="stream-watchdog", daemon=True
                )
                self._watchdog.start()
        return stream

    def release(self, stream: OpenStream) -> None:
        with self._lock:
            if stream not in self._streams:
                return
            self._streams.remove(stream)
            left = self._held[stream.caller] - 1
            if left:
                self._held[stream.caller] = left
            else:
                del self._held[stream.caller]

    def open_streams(self, caller: str | None = None) -> int:
        with self._lock:
            return len(self._streams) if caller is None else self._held.get(caller, 0)

    def take_idle(self, now: float) -> list[OpenStream]:
        """The streams idle past the timeout at `now`, each taken once (marked closed)."""
        if self.idle_seconds <= 0:
            return []
        with self._lock:
            due = [
                stream
                for stream in self._streams
                if not stream.idle_closed
                and (since := stream.waiting_since) is not None
                and now - since >= self.idle_seconds
            ]
            for stream in due:
                stream.idle_closed = True
        return due

    def sweep(self) -> int:
        """End every stream idle past the timeout; how many were ended."""
        due = self.take_idle(self._clock())
        for stream in due:
            # A batch that arrives in the instant between the check and this cancel is
            # lost with the stream; its caller sees the status, as with any failed call.
            try:
                stream.close(self.idle_message)
            except Exception:  # the call may be gone already; its handler releases it
                log.debug("closing an idle stream failed", exc_info=True)
        if due:
            log.info(
                "closed idle Pipeline streams",
                extra={"streams": len(due), "idle_seconds": self.idle_seconds},
            )
        return len(due)

    def _watch(self) -> None:
        while True:
            time.sleep(self._tick)
            self.sweep()
            with self._lock:
                if not self._streams:  # admit() starts a new watchdog when one is needed
                    self._watchdog = None
                    return
