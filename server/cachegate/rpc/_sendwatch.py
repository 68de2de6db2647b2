"""Ending Pipeline streams whose caller stops reading replies.

grpc's sync server takes the next reply from a stream only once the previous one
has been sent, and a reply is sent only as fast as the caller reads it (HTTP/2
flow control). A caller that sends batches and never reads holds one reply, and
the thread that built it, for as long as it likes. Each reply is armed here before
it is handed to grpc and disarmed when grpc asks for the next one; one thread
checks a few times per timeout and ends streams whose reply waited too long, with
a status from the README's table, so their memory and thread come back.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

import grpc

__all__ = ["SendWatch"]

log = logging.getLogger("cachegate.service")


class SendWatch:
    """Deadlines for replies handed to grpc; `expire` is called for each one missed."""

    def __init__(
        self,
        timeout: float,
        expire: Callable[[grpc.ServicerContext], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout = timeout
        self._expire = expire
        self._clock = clock
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, grpc.ServicerContext]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def arm(self, context: grpc.ServicerContext) -> int:
        token = next(self._tokens)
        with self._lock:
            self._armed[token] = (self._clock() + self._timeout, context)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cachegate-send-watch", daemon=True
                )
                self._thread.start()
        return token

    def disarm(self, token: int) -> bool:
        """False when the reply had expired: its stream was ended (see `expire`)."""
        with self._lock:
            return self._armed.pop(token, None) is not None

    def expire_due(self) -> int:
        """End every stream whose reply is overdue; how many were ended."""
        now = self._clock()
        with self._lock:
            due = [token for token, (deadline, _) in self._armed.items() if deadline <= now]
            contexts = [self._armed.pop(token)[1] for token in due]
        for context in contexts:
            self._expire(context)
        return len(contexts)

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        # A few checks per timeout: a stream ends at most a quarter late. The thread
        # leaves when nothing is armed (the next arm() starts another), so idle
        # servers, and the many a test suite builds, keep no thread for it.
        interval = min(max(self._timeout / 4, 0.05), 1.0)
        while not self._stop.wait(interval):
            try:
                self.expire_due()
            except Exception:  # never let the watch die and leave streams unwatched
                log.exception("send watch failed")
            with self._lock:
                if not self._armed:
                    self._thread = None
                    return
