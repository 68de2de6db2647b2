"""The invalidation stream as the client sees it: typed events, and a way to cancel.

`CacheClient.invalidations()` opens InvalidationService.Subscribe (see
invalidation.proto). The first event is a reset, sent once the server tracks
changes; after it, every change to a watched key comes as a "keys" event, and a
reset whenever the server cannot say what changed. The end of the stream, for
whatever reason, means the same as a reset: what changed since is unknown.

`event_of` and `stream_error` are the wire's meaning, shared with the asyncio
stream (`cachegate.client.aio._invalidations`), which only awaits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from cachegate.client._errors import CacheClientError, from_rpc_error
from cachegate.v1 import invalidation_pb2 as pb

__all__ = ["Invalidation", "InvalidationStream", "event_of", "stream_error"]


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One event: `keys` changed ("keys"), or anything may have changed ("reset").

    A reset's `tracking` says whether the server hears every change from then on
    (False: it lost its tracking; a reset with True follows once it is back).
    """

    kind: Literal["keys", "reset"]
    keys: tuple[str, ...] = ()
    reason: str = ""
    tracking: bool = False


def event_of(message: pb.SubscribeResponse) -> Invalidation | None:
    """The event a message carries; None for a kind this client does not know (ignored,
    as proto3 readers do)."""
    if message.kind == pb.INVALIDATION_KIND_RESET:
        return Invalidation("reset", reason=message.reason, tracking=message.tracking)
    if message.kind == pb.INVALIDATION_KIND_KEYS:
        return Invalidation("keys", tuple(message.keys))
    return None


def stream_error(exc: grpc.RpcError, cancelled: bool) -> CacheClientError | None:
    """What the end of a stream raises: None for the caller's own cancel (the stream
    simply ends), else the status's CacheClientError."""
    if cancelled and exc.code() == grpc.StatusCode.CANCELLED:
        return None
    return from_rpc_error(exc)


class InvalidationStream:
    """Iterate for events (blocks until the next one); `cancel()` from any thread ends it.

    Iteration raises a CacheClientError when the stream ends with a status other
    than the caller's own cancel, after which the stream is done.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[Invalidation]:
        try:
            for message in self._call:
                event = event_of(message)
                if event is not None:
                    yield event
        except grpc.RpcError as exc:
            error = stream_error(exc, self._cancelled.is_set())
            if error is not None:
                raise error from exc

    def cancel(self) -> None:
        self._cancelled.set()
        self._call.cancel()
