"""AsyncNearCacheFeed: keeps AsyncRedisCache's NearCache coherent, on an asyncio task.

The same feed as the sync client's NearCacheFeed (_feed.py), with the same decisions
(`Following`, _following.py: what an event does to the near cache and to "live", the
backoff): one task subscribes to the server's invalidations (every key of the caller),
drops the keys that changed, clears the near cache on a reset and at the end of a
stream, and subscribes again after the backoff. This module only awaits.

The task starts in the running loop on `start()` (AsyncRedisCache calls it on first
use, so the cache can be made before any loop runs), in the loop the client belongs to.
`stop()` cancels it and waits for it to end.
"""

from __future__ import annotations

import asyncio

from cachegate.client._following import Following
from cachegate.client._near import NearCache
from cachegate.client.aio._client import AsyncCacheClient

__all__ = ["AsyncNearCacheFeed"]


class AsyncNearCacheFeed(Following[asyncio.Event]):
    """Follows `client.invalidations()` for `near` from `start()` to `stop()`.
    `backoff`: backoff_base and backoff_cap, seconds (see Following)."""

    def __init__(self, client: AsyncCacheClient, near: NearCache, **backoff: float) -> None:
        # An asyncio.Event binds to a loop only when first waited on: made outside one, fine.
        super().__init__(near, asyncio.Event(), **backoff)
        self._client = client
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        """Start the task in the running loop; once (later calls, and calls after
        `stop()`, do nothing)."""
        if self._task is None and not self._stopped:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name="near-cache-feed")

    @property
    def running(self) -> bool:
        """True from `start()` until the task has ended."""
        return self._task is not None and not self._task.done()

    async def wait_live(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._live.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended (its stream cancelled, the near
        cache cleared)."""
        self._stopped = True
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        # asyncio.wait, not `await task`: a cancel of the caller itself must still
        # reach the caller, and the task's own CancelledError must not.
        await asyncio.wait([task])

    async def _run(self) -> None:
        while True:
            stream = self._client.invalidations()
            self._opened()
            error: Exception | None = None
            try:
                async for event in stream:
                    self._apply(event)
            except Exception as exc:  # whatever ended it, the feed subscribes again
                error = exc
            finally:  # on stop() too (CancelledError): the RPC ends, nothing is trusted
                stream.cancel()
                delay = self._ended(error)
            await asyncio.sleep(delay)
