"""AsyncInvalidationStream: the invalidation stream (see cachegate.client._invalidations)
as an async iterator.

The events and the errors are the sync stream's (`event_of`, `stream_error`); this
module only awaits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import grpc.aio

from cachegate.client._invalidations import Invalidation, event_of, stream_error

__all__ = ["AsyncInvalidationStream"]


class AsyncInvalidationStream(AsyncIterator[Invalidation]):
    """`async for` the events; `cancel()`, from any thread, ends it.

    Iteration raises a CacheClientError when the stream ends with a status other
    than the caller's own cancel, after which the stream is done. Cancelling the task
    that iterates cancels the RPC too (and raises CancelledError, as any await does).
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, Any]) -> None:
        self._call = call
        # grpc.aio's calls belong to the loop they were made on: a cancel from
        # another thread is handed to it (the sync stream's cancel() works anywhere).
        self._loop = _running_loop()
        self._cancelled = False
        self._events = self._read()

    def __aiter__(self) -> AsyncInvalidationStream:
        return self

    async def __anext__(self) -> Invalidation:
        return await anext(self._events)

    def cancel(self) -> None:
        """End the stream: iteration stops without an error. Safe from any thread; off
        the client's loop the cancel runs on that loop soon after (a closed loop has
        ended the call already)."""
        self._cancelled = True
        loop = self._loop
        if loop is None or _running_loop() is loop:
            self._call.cancel()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._call.cancel)

    async def aclose(self) -> None:
        """Cancel the RPC and finish the iteration (for `contextlib.aclosing`)."""
        self.cancel()
        await self._events.aclose()

    async def _read(self) -> AsyncGenerator[Invalidation, None]:
        try:
            async for message in self._call:
                event = event_of(message)
                if event is not None:
                    yield event
        except grpc.RpcError as exc:
            error = stream_error(exc, self._cancelled)
            if error is not None:
                raise error from exc
        except asyncio.CancelledError:
            # grpc.aio ends a call cancelled here with CancelledError rather than a
            # status: after our own cancel that is the stream's end, but a cancel of
            # the iterating task must go on up.
            task = asyncio.current_task()
            if not self._cancelled or (task is not None and task.cancelling()):
                raise
        finally:
            self._call.cancel()  # a consumer that stops early must not leave the RPC open


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # no loop runs in this thread
        return None
