"""The one mapping from what went wrong to a gRPC status.

`status_for` maps each known exception to its status and details; the two
conditions met where no exception is raised take their codes from UNDECODABLE,
STREAM_IDLE and SUBSCRIBER_BEHIND below. README.md's "Errors" table describes the mapping for users
(tests/unit/test_error_table.py checks it row by row against this module).
Anything else is a bug and gives INTERNAL with a generic message (the details go
to the log, never to the caller).
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from cachegate.core import CacheError, CircuitOpenError
from cachegate.pool import (
    CommandError,
    PoolExhaustedError,
    RedisOutOfMemoryError,
    RedisTimeoutError,
    RedisUnavailableError,
)

__all__ = [
    "INTERNAL",
    "STREAM_IDLE",
    "SUBSCRIBER_BEHIND",
    "UNDECODABLE",
    "InvalidArgumentError",
    "Rejection",
    "ShuttingDownError",
    "TooBusyError",
    "abort",
    "code_number",
    "rejection_for",
    "status_for",
]

log = logging.getLogger("cachegate.service")


# Request bytes that do not decode as the method's message (_decode.py; a Pipeline
# batch raises InvalidArgumentError instead, which names the field).
UNDECODABLE = grpc.StatusCode.INVALID_ARGUMENT
# A Pipeline stream the server ends for waiting too long for a batch (_streams.py).
STREAM_IDLE = grpc.StatusCode.RESOURCE_EXHAUSTED
# An invalidation subscriber that fell behind twice without reading (_fanout.py).
SUBSCRIBER_BEHIND = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgumentError(CacheError, ValueError):
    """A request field breaks a rule (limits, TTL). Carries BadRequest field violations."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.violation = FieldViolation(field, description)


class TooBusyError(CacheError):
    """The server's own limit (streams in flight) is reached."""


class ShuttingDownError(CacheError):
    """The server is stopping (SIGTERM): a call that arrives now is refused, retryably."""

    def __init__(self) -> None:
        super().__init__(
            "cachegate is shutting down; retry (calls already running finish within "
            "CACHEGATE_GRACE_SECONDS)"
        )


class _Status(
    collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status
):
    pass


@dataclass(frozen=True, slots=True)
class Rejection:
    """A status to send, with its rich details already packed."""

    code: grpc.StatusCode
    message: str
    details: tuple[error_details_pb2.RetryInfo | error_details_pb2.BadRequest, ...] = ()
    # Extra trailers, e.g. grpc-retry-pushback-ms for clients' transparent retries.
    trailers: tuple[tuple[str, str], ...] = ()

    def to_status(self) -> grpc.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details:
            status.details.add().Pack(detail)
        packed = rpc_status.to_status(status)
        return _Status(packed.code, packed.details, (*packed.trailing_metadata, *self.trailers))


# Longest breaker wait a client's transparent retry may sit out (seconds).
PUSHBACK_LIMIT = 1.0
# Soonest a caller the breaker refused is told to come back (seconds): the client's
# own first backoff. A half-open breaker refuses the calls beside its one trial with
# nothing left to wait, so a wait of 0 would only be refused again, and grpc core's
# retry timer can lose a near-zero pushback: the call then hangs until its deadline
# (grpc/grpc#41036; seen here as a 10 s Get after a pushback of 0 ms).
MIN_RETRY_AFTER = 0.05


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    whole = math.floor(seconds)
    return error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
    )


def status_for(exc: BaseException) -> Rejection | None:
    """The status for a known condition; None means "a bug" (rejection_for logs it and
    sends INTERNAL)."""
    if isinstance(exc, InvalidArgumentError):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=exc.violation.field, description=exc.violation.description
        )
        return Rejection(
            grpc.StatusCode.INVALID_ARGUMENT,
            str(exc),
            (error_details_pb2.BadRequest(field_violations=[violation]),),
        )
    if isinstance(exc, ShuttingDownError):
        return Rejection(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, CircuitOpenError) and exc.forced:
        # No wait ends a forced opening, only an operator's reset: a RetryInfo would
        # promise a time that means nothing, and transparent retries are refused (-1).
        return Rejection(
            grpc.StatusCode.UNAVAILABLE,
            "Redis circuit breaker was forced open by an operator (AdminService "
            "ForceOpenBreaker); calls are refused until an operator resets it "
            "(ResetBreaker)",
            trailers=(("grpc-retry-pushback-ms", "-1"),),
        )
    if isinstance(exc, CircuitOpenError):
        # gRPC clients with a retry policy honour this trailer: wait out a short
        # open period, but do not retry at all into a long one (-1).
        retry_after = max(exc.retry_after, MIN_RETRY_AFTER)
        pushback = int(retry_after * 1000) if retry_after < PUSHBACK_LIMIT else -1
        return Rejection(
            grpc.StatusCode.UNAVAILABLE,
            f"Redis circuit breaker is {exc.state.value}; retry after {retry_after:.3f}s",
            (_retry_info(retry_after),),
            (("grpc-retry-pushback-ms", str(pushback)),),
        )
    if isinstance(exc, RedisTimeoutError):
        return Rejection(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
    if isinstance(exc, RedisUnavailableError):
        return Rejection(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, PoolExhaustedError | TooBusyError):
        return Rejection(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, RedisOutOfMemoryError):
        return Rejection(grpc.StatusCode.RESOURCE_EXHAUSTED, f"Redis is out of memory: {exc}")
    if isinstance(exc, CommandError):
        return Rejection(grpc.StatusCode.FAILED_PRECONDITION, f"Redis rejected it: {exc}")
    return None


INTERNAL = Rejection(grpc.StatusCode.INTERNAL, "internal error; see the server log")


def rejection_for(exc: BaseException, method: str) -> Rejection:
    """The status for `exc` raised in `method`; a bug (no known status) is logged with
    its traceback and becomes INTERNAL."""
    rejection = status_for(exc)
    if rejection is None:
        log.error("unexpected error in %s", method, exc_info=exc)
        return INTERNAL
    return rejection


def abort(context: grpc.ServicerContext, rejection: Rejection) -> None:
    """End the RPC with `rejection` (raises, as grpc's abort does)."""
    context.abort_with_status(rejection.to_status())


def code_number(code: grpc.StatusCode) -> int:
    """The google.rpc.Code number of a gRPC status code (for per-operation errors)."""
    value: int = code.value[0]
    return value
