"""What a near cache's invalidation feed decides, whatever runs it.

`Following` is the base of the thread feed (`NearCacheFeed`, _feed.py) and of the
asyncio task feed (`AsyncNearCacheFeed`, aio/_feed.py), which only open streams, read
them and wait:

- a reset clears the near cache; the feed is "live" after a reset that says the
  server tracks every change, and not after one that says it lost its tracking
  (entries then age out by their TTL until tracking is back);
- a "keys" event drops those keys;
- the end of a stream, for any reason, clears the near cache and ends "live": what
  changed from then until the next reset is unknown;
- before subscribing again, a backoff: 50 ms doubling to 5 s, jittered (half to all
  of the step), back to the start once a stream has delivered its first event.
"""

from __future__ import annotations

import logging
import random
from typing import Generic, Protocol, TypeVar

from cachegate.client._errors import CacheClientError
from cachegate.client._invalidations import Invalidation
from cachegate.client._near import NearCache

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "Flag", "FlagT", "Following"]

log = logging.getLogger("cachegate.client")

BACKOFF_BASE, BACKOFF_CAP = 0.05, 5.0


class Flag(Protocol):
    """The "live" flag as each feed waits for it: a threading.Event or an asyncio.Event."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def is_set(self) -> bool: ...


FlagT = TypeVar("FlagT", bound=Flag)


class Following(Generic[FlagT]):
    """The base of both feeds: the near cache, "live" and the backoff, moved by the
    events of the streams a subclass opens (`_opened`, `_apply`, `_ended`)."""

    def __init__(
        self,
        near: NearCache,
        live: FlagT,
        *,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        self._near = near
        self._live = live
        self._base, self._cap = backoff_base, backoff_cap
        self._subscriptions = 0
        self._failures = 0  # streams in a row that ended before delivering
        self._delivered = False

    @property
    def live(self) -> bool:
        """True while a stream is open and the server says it hears every change."""
        return self._live.is_set()

    @property
    def subscriptions(self) -> int:
        """Streams opened so far."""
        return self._subscriptions

    def _opened(self) -> None:
        """A new stream was opened."""
        self._subscriptions += 1
        self._delivered = False

    def _apply(self, event: Invalidation) -> None:
        """One event of the open stream."""
        if event.kind == "reset":
            self._near.clear()
            if event.tracking:
                self._live.set()
            else:
                self._live.clear()
            self._delivered = True
        else:
            self._near.invalidate_many(event.keys)

    def _ended(self, error: BaseException | None) -> float:
        """The open stream ended (`error`: why, None for a stop): forget everything,
        and return the seconds to wait before subscribing again."""
        self._live.clear()
        self._near.clear()
        if isinstance(error, CacheClientError):
            log.debug("invalidation stream ended; subscribing again", exc_info=error)
        elif error is not None:  # a bug must not leave the near cache trusted and unfollowed
            log.error("invalidation feed failed; subscribing again", exc_info=error)
        self._failures = 1 if self._delivered else self._failures + 1
        ceiling = min(self._cap, self._base * 2 ** min(self._failures - 1, 16))
        return random.uniform(ceiling / 2, ceiling)
