"""The invalidation stream as the client sees it: typed events, and a way to cancel.

`CacheClient.invalidations()` opens InvalidationService.Subscribe (see
invalidation.proto). The first event is a reset, sent once the server tracks
changes; after it, every change to a watched key comes as a "keys" event, and a
reset whenever the server cannot say what changed. The end of the stream, for
whatever reason, means the same as a reset: what changed since is unknown.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from cachegate.client._errors import from_rpc_error
from cachegate.v1 import invalidation_pb2 as pb

__all__ = ["Invalidation", "InvalidationStream"]


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
            for event in self._call:
                if event.kind == pb.INVALIDATION_KIND_RESET:
                    yield Invalidation("reset", reason=event.reason, tracking=event.tracking)
                elif event.kind == pb.INVALIDATION_KIND_KEYS:
                    yield Invalidation("keys", tuple(event.keys))
                # a kind this client does not know: ignore, as proto3 readers do
        except grpc.RpcError as exc:
            if self._cancelled.is_set() and exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(exc) from exc

    def cancel(self) -> None:
        self._cancelled.set()
        self._call.cancel()
