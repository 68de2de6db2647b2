"""InvalidationService: Subscribe streams the keys that changed (see invalidation.proto).

Each process has one hub (the fan-out, _fanout.py) and one tracker (the Redis side,
pool/_tracking.py), the latter started by the first subscriber. A stream holds one
of the fair stream slots (_streams.py) like a Pipeline stream, and its server
thread, for its whole life; it is never closed for being idle (a quiet stream is a
stream with nothing to say). A graceful stop ends every stream with UNAVAILABLE at
once, so a stop never waits its grace for subscribers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from cachegate.core import LimitSettings
from cachegate.pool import InvalidationTracker, RedisConnectionPool, tracker_for
from cachegate.rpc._auth import TokenTable, caller_identity
from cachegate.rpc._decode import Undecodable, undecodable_message
from cachegate.rpc._fanout import InvalidationHub
from cachegate.rpc._limits import check_key
from cachegate.rpc._status import (
    SUBSCRIBER_BEHIND,
    InvalidArgumentError,
    ShuttingDownError,
    TooBusyError,
    abort,
    status_for,
)
from cachegate.rpc._streams import StreamGate, caller_of, status_closer
from cachegate.rpc._wire import EntryLimit, TooManyEntries
from cachegate.v1 import invalidation_pb2 as pb
from cachegate.v1 import invalidation_pb2_grpc as pb_grpc

__all__ = ["MAX_WATCHED_KEYS", "MAX_WATCHED_PREFIXES", "SUBSCRIBE_ENTRIES", "InvalidationServicer"]

log = logging.getLogger("cachegate.service")

MAX_WATCHED_KEYS = 1000
MAX_WATCHED_PREFIXES = 100
_TOO_MANY_KEYS = f"at most {MAX_WATCHED_KEYS} keys per subscription"
_TOO_MANY_PREFIXES = f"at most {MAX_WATCHED_PREFIXES} prefixes per subscription"
# Counted on the wire before the request is parsed (see _wire.counted).
SUBSCRIBE_ENTRIES = (
    EntryLimit(1, "keys", MAX_WATCHED_KEYS, _TOO_MANY_KEYS),
    EntryLimit(2, "prefixes", MAX_WATCHED_PREFIXES, _TOO_MANY_PREFIXES),
)
# How often a waiting stream looks whether its call is still there (grpc's callback
# wakes it at once when the caller goes; this is the backstop).
_WAKE = 1.0
_KEYS, _RESET = pb.INVALIDATION_KIND_KEYS, pb.INVALIDATION_KIND_RESET


class InvalidationServicer(pb_grpc.InvalidationServiceServicer):
    def __init__(
        self,
        pool: RedisConnectionPool,
        limits: LimitSettings,
        streams: StreamGate,
        tokens: TokenTable | None = None,
    ) -> None:
        self._limits = limits
        self._streams = streams
        self._tokens = tokens
        self._draining = False
        tenants = tokens.tenants() if tokens is not None else None
        self.hub = InvalidationHub(
            tenants, limits.invalidation_queue, limits.max_key_bytes, self._start_tracking
        )
        self.tracker: InvalidationTracker = tracker_for(pool, self.hub.prefixes, self.hub)

    def _start_tracking(self) -> None:
        self.tracker.start()

    def drain(self) -> None:
        """New subscriptions are refused and every open stream ends (UNAVAILABLE)."""
        self._draining = True
        self.hub.end_all("the server is shutting down; subscribe again (another server)")

    def close(self) -> None:
        self.drain()
        self.tracker.close()

    def Subscribe(  # may receive Undecodable or TooManyEntries (see _decode)
        self,
        request: pb.SubscribeRequest | Undecodable | TooManyEntries,
        context: grpc.ServicerContext,
    ) -> Iterator[pb.SubscribeResponse]:
        try:
            if self._draining:
                raise ShuttingDownError
            if isinstance(request, Undecodable):
                raise InvalidArgumentError("request", undecodable_message(request))
            if isinstance(request, TooManyEntries):  # never parsed
                raise InvalidArgumentError(request.field, request.message())
            self._check(request)
            identity = None
            if self._tokens is not None:
                identity = caller_identity()  # AuthInterceptor resolved it, once per call
                if identity is None:  # unreachable behind AuthInterceptor; never serve unscoped
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown token")
            tenant = identity.tenant if identity is not None else None
            stream = self._streams.admit(caller_of(context.peer(), tenant), status_closer(context))
        except (InvalidArgumentError, ShuttingDownError, TooBusyError) as exc:
            rejection = status_for(exc)
            assert rejection is not None
            abort(context, rejection)
            raise AssertionError("abort() returned") from exc  # pragma: no cover
        stream.waiting_since = None  # never idle: a quiet stream has nothing to say
        subscriber = self.hub.subscribe(
            tenant, request.keys, list(request.prefixes), status_closer(context)
        )
        context.add_callback(lambda: subscriber.end("the call ended"))
        try:
            while True:
                batch = subscriber.take(_WAKE)
                if batch is None:
                    # add_callback does nothing for a call already over: is_active backs it.
                    if subscriber.ended is not None or not context.is_active():
                        break
                    continue
                if batch.reset is not None:
                    yield pb.SubscribeResponse(
                        kind=_RESET, reason=batch.reset, tracking=batch.tracking
                    )
                else:
                    yield pb.SubscribeResponse(kind=_KEYS, keys=batch.keys)
        finally:
            self.hub.unsubscribe(subscriber)
            self._streams.release(stream)
        if self._draining:
            rejection = status_for(ShuttingDownError())
            assert rejection is not None
            abort(context, rejection)
        elif context.is_active():  # the hub ended it: the caller did not read
            context.abort(SUBSCRIBER_BEHIND, subscriber.ended or "")

    def _check(self, request: pb.SubscribeRequest) -> None:
        # Counted on the wire already (SUBSCRIBE_ENTRIES); kept for requests made in
        # process, which never pass through the wire.
        if len(request.keys) > MAX_WATCHED_KEYS:
            raise InvalidArgumentError("keys", _TOO_MANY_KEYS)
        if len(request.prefixes) > MAX_WATCHED_PREFIXES:
            raise InvalidArgumentError("prefixes", _TOO_MANY_PREFIXES)
        for index, key in enumerate(request.keys):
            check_key(key, self._limits, f"keys[{index}]")
        for index, prefix in enumerate(request.prefixes):
            if len(prefix.encode()) > self._limits.max_key_bytes:
                raise InvalidArgumentError(
                    f"prefixes[{index}]",
                    f"longer than a key may be ({self._limits.max_key_bytes} bytes, "
                    "CACHEGATE_MAX_KEY_BYTES)",
                )
