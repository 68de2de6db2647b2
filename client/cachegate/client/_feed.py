"""NearCacheFeed: keeps a NearCache coherent with writes made anywhere, on a thread.

One daemon thread subscribes to the server's invalidations (every key of the
caller) and drops the keys that changed. A reset, and the end of the stream for
any reason, clears the near cache: whatever changed in between is unknown. The
thread then subscribes again, after a backoff (50 ms doubling to 5 s, jittered,
back to the start once a stream has delivered its first event). So an entry is
never older than the near cache's TTL, and while the stream flows an entry
outlives a change by about the time an event takes to arrive.

The decisions are `Following`'s (_following.py), shared with the asyncio feed;
this module only runs them on a thread.
"""

from __future__ import annotations

import threading
from typing import Protocol

from cachegate.client._following import Following
from cachegate.client._invalidations import InvalidationStream
from cachegate.client._near import NearCache

__all__ = ["NearCacheFeed"]


class Subscriber(Protocol):
    """What the feed needs of a CacheClient."""

    def invalidations(self) -> InvalidationStream: ...


class NearCacheFeed(Following[threading.Event]):
    """Follows `client.invalidations()` for `near` until `stop()`; see the module.
    `backoff`: backoff_base and backoff_cap, seconds (see Following)."""

    def __init__(self, client: Subscriber, near: NearCache, **backoff: float) -> None:
        super().__init__(near, threading.Event(), **backoff)
        self._client = client
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stream: InvalidationStream | None = None
        self._thread = threading.Thread(target=self._run, name="near-cache-feed", daemon=True)

    def start(self) -> NearCacheFeed:
        self._thread.start()
        return self

    def wait_live(self, timeout: float) -> bool:
        return self._live.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = self._client.invalidations()
            with self._lock:
                self._stream = stream
                self._opened()
            if self._stop.is_set():  # stop() came before the stream was known to it
                stream.cancel()
            error: Exception | None = None
            try:
                for event in stream:
                    self._apply(event)
            except Exception as exc:  # whatever ended it, the feed subscribes again
                error = exc
            finally:  # even on a BaseException: no near cache left trusted and unfollowed
                with self._lock:
                    self._stream = None
                delay = self._ended(error)
            self._stop.wait(delay)
