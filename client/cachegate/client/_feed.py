"""NearCacheFeed: keeps a NearCache coherent with writes made anywhere.

One daemon thread subscribes to the server's invalidations (every key of the
caller) and drops the keys that changed. A reset, and the end of the stream for
any reason, clears the near cache: whatever changed in between is unknown. The
thread then subscribes again, after a backoff (50 ms doubling to 5 s, jittered,
back to the start once a stream has delivered its first event). So an entry is
never older than the near cache's TTL, and while the stream flows an entry
outlives a change by about the time an event takes to arrive.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Protocol

from cachegate.client._errors import CacheClientError
from cachegate.client._invalidations import InvalidationStream
from cachegate.client._near import NearCache

__all__ = ["NearCacheFeed"]

log = logging.getLogger("cachegate.client")

BACKOFF_BASE, BACKOFF_CAP = 0.05, 5.0


class Subscriber(Protocol):
    """What the feed needs of a CacheClient."""

    def invalidations(self) -> InvalidationStream: ...


class NearCacheFeed:
    """Follows `client.invalidations()` for `near` until `stop()`; see the module."""

    def __init__(
        self,
        client: Subscriber,
        near: NearCache,
        *,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        self._client = client
        self._near = near
        self._base, self._cap = backoff_base, backoff_cap
        self._stop = threading.Event()
        self._live = threading.Event()
        self._lock = threading.Lock()
        self._stream: InvalidationStream | None = None
        self.subscriptions = 0  # streams opened so far
        self._thread = threading.Thread(target=self._run, name="near-cache-feed", daemon=True)

    def start(self) -> NearCacheFeed:
        self._thread.start()
        return self

    @property
    def live(self) -> bool:
        """True while a stream is open and the server says it hears every change."""
        return self._live.is_set()

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
        failures = 0
        while not self._stop.is_set():
            stream = self._client.invalidations()
            with self._lock:
                self._stream = stream
                self.subscriptions += 1
            if self._stop.is_set():  # stop() came before the stream was known to it
                stream.cancel()
            delivered = False
            try:
                for event in stream:
                    if event.kind == "reset":
                        self._near.clear()
                        if event.tracking:
                            self._live.set()
                        else:  # entries age out by their TTL until tracking is back
                            self._live.clear()
                        delivered = True
                    else:
                        self._near.invalidate_many(event.keys)
            except CacheClientError as exc:
                log.debug("invalidation stream ended; subscribing again", exc_info=exc)
            except Exception:  # a bug must not leave the near cache trusted and unfollowed
                log.exception("invalidation feed failed; subscribing again")
            finally:
                self._live.clear()
                self._near.clear()  # what changed from now until the next reset is unknown
                with self._lock:
                    self._stream = None
            failures = 1 if delivered else failures + 1
            ceiling = min(self._cap, self._base * 2 ** min(failures - 1, 16))
            self._stop.wait(random.uniform(ceiling / 2, ceiling))
