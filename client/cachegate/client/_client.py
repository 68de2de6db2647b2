"""CacheClient: a typed client of cachegate.v1.CacheService over one gRPC channel."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc

from cachegate.client._errors import error_for, from_rpc_error, status_code
from cachegate.client._ops import CacheEntry, Delete, Get, Operation, Result, SetEx
from cachegate.client._wire import decode_health_response, encode_health_request
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc as pb_grpc

__all__ = ["DEFAULT_TARGET", "SERVICE_NAME", "CacheClient", "HealthStatus"]

DEFAULT_TARGET = "127.0.0.1:50051"
SERVICE_NAME = "cachegate.v1.CacheService"

HealthStatus = Literal["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]
_HEALTH_NAMES: dict[int, HealthStatus] = {
    0: "UNKNOWN",
    1: "SERVING",
    2: "NOT_SERVING",
    3: "SERVICE_UNKNOWN",
}
_OUTCOMES: dict[int, Literal["value", "ok", "not_found", "error"]] = {
    pb.OUTCOME_VALUE: "value",
    pb.OUTCOME_OK: "ok",
    pb.OUTCOME_NOT_FOUND: "not_found",
    pb.OUTCOME_ERROR: "error",
}

Resp = TypeVar("Resp")


def service_config(*, retries: bool) -> str:
    """gRPC service config: round_robin, and retry UNAVAILABLE with backoff for the
    idempotent RPCs only.

    round_robin: a target that resolves to several addresses (`dns:///` naming a
    headless Service, or `ipv4:a:p,b:p`) gets a connection to each and spreads calls
    over the ready ones; grpc's default, pick_first, would send everything to one
    replica. A target with one address behaves the same under both.

    Get, SetEx, Delete and Stats leave the same state when run twice; Pipeline is a
    stream and is never retried by the channel. The server adds
    grpc-retry-pushback-ms when its breaker is open, so a retry never hammers it.
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": []}
    if retries:
        config["methodConfig"].append(
            {
                "name": [
                    {"service": SERVICE_NAME, "method": method}
                    for method in ("Get", "SetEx", "Delete", "Stats")
                ],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    return json.dumps(config)


class CacheClient:
    """Get, set and delete through a cachegate server.

    >>> with CacheClient("127.0.0.1:50051") as cache:   # doctest: +SKIP
    ...     cache.set_ex("greeting", b"hello", ttl_seconds=60)
    ...     cache.get("greeting")
    b'hello'

    `target` defaults to $CACHEGATE_TARGET, then 127.0.0.1:50051. Every call has
    a deadline (`timeout` seconds unless the call passes its own). Pass
    `credentials` (grpc.ssl_channel_credentials(...)) for TLS and `token` for the
    server's bearer-token auth.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        retries: bool = True,
        max_message_bytes: int = 16 * 1024 * 1024,
        keepalive_seconds: float = 60.0,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        self.target = target or os.environ.get("CACHEGATE_TARGET") or DEFAULT_TARGET
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        channel_options = [
            ("grpc.enable_retries", 1 if retries else 0),
            ("grpc.service_config", service_config(retries=retries)),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            *options,
        ]
        self._own_channel = channel is None
        if channel is not None:
            self._channel = channel
        elif credentials is not None:
            self._channel = grpc.secure_channel(self.target, credentials, channel_options)
        else:
            self._channel = grpc.insecure_channel(self.target, channel_options)
        self._stub = pb_grpc.CacheServiceStub(self._channel)
        self._health_check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=None,
            response_deserializer=None,
        )
        self._health_watch = self._channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=None,
            response_deserializer=None,
        )

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
        entry = self.get_entry(key, timeout=timeout, stale_if_error=stale_if_error)
        return None if entry is None else entry.value

    def get_entry(
        self, key: str, *, timeout: float | None = None, stale_if_error: int = 0
    ) -> CacheEntry | None:
        """As `get`, but the value comes with whether it is stale and its age; None on a miss."""
        request = pb.GetRequest(key=key, stale_if_error_seconds=stale_if_error)
        reply = self._call(self._stub.Get, request, timeout)
        if not reply.found:
            return None
        return CacheEntry(reply.value, reply.stale, reply.age_seconds)

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
        requests = (_encode_batch(batch, stale_if_error) for batch in batches)
        call = self._stub.Pipeline(
            requests, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata
        )
        try:
            for reply in call:
                yield _decode_batch(reply)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()  # a consumer that stops early must not leave the stream open

    # --- operations ----------------------------------------------------------------

    def stats(self, *, timeout: float | None = None) -> pb.StatsResponse:
        """The server's pool, breaker, call and Redis figures (see cache.proto)."""
        return self._call(self._stub.Stats, pb.StatsRequest(), timeout)

    def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """grpc.health.v1 Check: "" is the process, SERVICE_NAME the cache (follows the breaker)."""
        raw = self._call(self._health_check, encode_health_request(service), timeout)
        return _HEALTH_NAMES.get(decode_health_response(raw), "UNKNOWN")

    def watch_health(
        self, service: str = "", *, timeout: float | None = None
    ) -> Iterator[HealthStatus]:
        """grpc.health.v1 Watch: the current status, then every change (until `timeout`)."""
        call = self._health_watch(
            encode_health_request(service), timeout=timeout, metadata=self._metadata
        )
        try:
            for raw in call:
                yield _HEALTH_NAMES.get(decode_health_response(raw), "UNKNOWN")
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
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc


def _encode_batch(batch: Sequence[Operation], stale_if_error: int = 0) -> pb.PipelineRequest:
    operations = []
    for op in batch:
        if isinstance(op, Get):
            operations.append(pb.Operation(get=pb.GetOperation(key=op.key)))
        elif isinstance(op, SetEx):
            operations.append(
                pb.Operation(
                    set_ex=pb.SetExOperation(key=op.key, value=op.value, ttl_seconds=op.ttl_seconds)
                )
            )
        elif isinstance(op, Delete):
            operations.append(pb.Operation(delete=pb.DeleteOperation(key=op.key)))
        else:
            raise TypeError(f"not a pipeline operation: {op!r} (use Get, SetEx or Delete)")
    return pb.PipelineRequest(operations=operations, stale_if_error_seconds=stale_if_error)


def _decode_batch(reply: pb.PipelineResponse) -> list[Result]:
    errors = {e.index: error_for(status_code(e.code), e.message) for e in reply.errors}
    stale = {s.index: s.age_seconds for s in reply.stale}
    results = []
    for index, outcome_number in enumerate(reply.outcomes):
        outcome = _OUTCOMES.get(outcome_number, "error")
        if outcome == "value":
            age = stale.get(index)
            if age is None:
                results.append(Result("value", value=reply.values[index]))
            else:
                results.append(
                    Result("value", value=reply.values[index], stale=True, age_seconds=age)
                )
        elif outcome == "error":
            error = errors.get(index) or error_for(grpc.StatusCode.UNKNOWN, "no error detail")
            results.append(Result("error", error=error))
        else:
            results.append(Result(outcome))
    return results
