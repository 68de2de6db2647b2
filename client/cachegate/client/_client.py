"""CacheClient: a typed client of cachegate.v1.CacheService over one gRPC channel."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TypeVar

import grpc

from cachegate.client._channel import ClientBase
from cachegate.client._errors import from_rpc_error
from cachegate.client._invalidations import InvalidationStream
from cachegate.client._messages import (
    HealthStatus,
    decode_batch,
    encode_batch,
    encode_health_request,
    entry_of,
    found_value,
    get_request,
    health_status,
)
from cachegate.client._ops import CacheEntry, Operation, Result
from cachegate.client._wire import HEALTH_CHECK, HEALTH_WATCH
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc as pb_grpc
from cachegate.v1 import invalidation_pb2, invalidation_pb2_grpc

__all__ = ["CacheClient"]

Resp = TypeVar("Resp")


class CacheClient(ClientBase[grpc.Channel]):
    """Get, set and delete through a cachegate server.

    >>> with CacheClient("127.0.0.1:50051") as cache:   # doctest: +SKIP
    ...     cache.set_ex("greeting", b"hello", ttl_seconds=60)
    ...     cache.get("greeting")
    b'hello'

    Settings (target, timeout, credentials, token, retries, ...): see ClientBase.
    """

    def _configured(self) -> None:
        self._channel = self._open_channel(grpc.insecure_channel, grpc.secure_channel)
        self._stub = pb_grpc.CacheServiceStub(self._channel)
        # No (de)serializers: the health messages travel as bytes (see _wire).
        self._health_check = self._channel.unary_unary(HEALTH_CHECK, None, None)
        self._health_watch = self._channel.unary_stream(HEALTH_WATCH, None, None)
        self._invalidations = invalidation_pb2_grpc.InvalidationServiceStub(self._channel)

    # --- single keys ---------------------------------------------------------------

    def get(
        self, key: str, *, timeout: float | None = None, stale_if_error: int = 0
    ) -> bytes | None:
        """The value, or None on a miss (an empty value comes back as b"").

        `stale_if_error` (seconds, 0 for none): when Redis cannot answer, accept the
        server's copy of the value if it is at most that old and the key's TTL has
        not run out; without such a copy the call raises as usual. `get_entry` says
        whether the value is stale, and how old.
        """
        request = get_request(key, stale_if_error)
        return found_value(self._call(self._stub.Get, request, timeout))

    def get_entry(
        self, key: str, *, timeout: float | None = None, stale_if_error: int = 0
    ) -> CacheEntry | None:
        """As `get`, but the value comes with whether it is stale and its age; None on a miss."""
        request = get_request(key, stale_if_error)
        return entry_of(self._call(self._stub.Get, request, timeout))

    def set_ex(
        self, key: str, value: bytes, ttl_seconds: int, *, timeout: float | None = None
    ) -> None:
        """Store `value` under `key` for `ttl_seconds` (> 0)."""
        request = pb.SetExRequest(key=key, value=value, ttl_seconds=ttl_seconds)
        self._call(self._stub.SetEx, request, timeout)

    def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """True when the key existed."""
        return self._call(self._stub.Delete, pb.DeleteRequest(key=key), timeout).deleted

    # --- batches -------------------------------------------------------------------

    def pipeline(
        self,
        operations: Sequence[Operation],
        *,
        timeout: float | None = None,
        stale_if_error: int = 0,
    ) -> list[Result]:
        """Run one batch (one round trip); one Result per operation, in order.

        `stale_if_error` allows the batch's gets stale values, as `get` does, when
        the batch fails because Redis cannot answer: see Result.stale.
        """
        for results in self.stream([operations], timeout=timeout, stale_if_error=stale_if_error):
            return results
        raise AssertionError("the server answered a batch with nothing")  # pragma: no cover

    def stream(
        self,
        batches: Iterable[Sequence[Operation]],
        *,
        timeout: float | None = None,
        stale_if_error: int = 0,
    ) -> Iterator[list[Result]]:
        """Send batches on one Pipeline stream; yields each batch's results as they come.

        `timeout` bounds the whole stream. Batches are sent as the server reads them
        (HTTP/2 flow control), so a long or endless iterable is fine.
        `stale_if_error` applies to every batch (see `pipeline`).
        """
        requests = (encode_batch(batch, stale_if_error) for batch in batches)
        call = self._stub.Pipeline(
            requests, timeout=self._deadline(timeout), metadata=self._metadata
        )
        try:
            for reply in call:
                yield decode_batch(reply)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()  # a consumer that stops early must not leave the stream open

    # --- invalidations ---------------------------------------------------------------

    def invalidations(
        self,
        keys: Sequence[str] = (),
        prefixes: Sequence[str] = (),
        *,
        timeout: float | None = None,
    ) -> InvalidationStream:
        """Subscribe to changes of `keys` and keys starting with `prefixes` (neither:
        every key). No deadline unless `timeout` is given: the stream lasts until
        cancelled. A NearCache given to RedisCache subscribes on its own (see _feed)."""
        request = invalidation_pb2.SubscribeRequest(keys=keys, prefixes=prefixes)
        call = self._invalidations.Subscribe(request, timeout=timeout, metadata=self._metadata)
        return InvalidationStream(call)

    # --- operations ----------------------------------------------------------------

    def stats(self, *, timeout: float | None = None) -> pb.StatsResponse:
        """The server's pool, breaker, call and Redis figures (see cache.proto)."""
        return self._call(self._stub.Stats, pb.StatsRequest(), timeout)

    def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """grpc.health.v1 Check: "" is the process, SERVICE_NAME the cache (follows the breaker)."""
        raw = self._call(self._health_check, encode_health_request(service), timeout)
        return health_status(raw)

    def watch_health(
        self, service: str = "", *, timeout: float | None = None
    ) -> Iterator[HealthStatus]:
        """grpc.health.v1 Watch: the current status, then every change (until `timeout`)."""
        call = self._health_watch(
            encode_health_request(service), timeout=timeout, metadata=self._metadata
        )
        try:
            for raw in call:
                yield health_status(raw)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: Callable[..., Resp], request: object, timeout: float | None) -> Resp:
        try:
            return method(
                request,
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
