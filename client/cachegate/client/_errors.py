"""The client's exceptions, mapped from gRPC status codes in one place.

Exception
 ├── CacheClientError                 base of everything the client raises
 │    ├── CacheUnavailableError       UNAVAILABLE: server unreachable or Redis's breaker open
 │    │                               (also a builtin ConnectionError: legacy code catches it)
 │    ├── DeadlineExceededError       DEADLINE_EXCEEDED (also a builtin TimeoutError)
 │    ├── InvalidRequestError         INVALID_ARGUMENT (also a ValueError)
 │    ├── ResourceExhaustedError      RESOURCE_EXHAUSTED: pool or server limits
 │    ├── FailedPreconditionError     FAILED_PRECONDITION: e.g. WRONGTYPE in Redis
 │    └── ServerError                 anything else (INTERNAL, UNKNOWN, ...)
"""

from __future__ import annotations

from typing import Any

import grpc

from cachegate.client._wire import STATUS_DETAILS_KEY, retry_after_seconds

__all__ = [
    "CacheClientError",
    "CacheUnavailableError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidRequestError",
    "ResourceExhaustedError",
    "ServerError",
    "error_for",
    "from_rpc_error",
    "status_code",
]


class CacheClientError(Exception):
    """Base class; `code` is the gRPC status code the server (or channel) gave."""

    def __init__(
        self, message: str, code: grpc.StatusCode, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class CacheUnavailableError(CacheClientError, ConnectionError):
    """The service or its Redis is unavailable right now; retrying later may work.

    `retry_after` is the server's hint (google.rpc.RetryInfo) in seconds: how long
    until its circuit breaker lets calls through again. None when it gave none.
    """


class DeadlineExceededError(CacheClientError, TimeoutError):
    """The call did not finish within its deadline."""


class InvalidRequestError(CacheClientError, ValueError):
    """The request breaks a rule (empty or oversized key, TTL <= 0, ...)."""


class ResourceExhaustedError(CacheClientError):
    """The server is at a configured limit (connections, concurrent RPCs)."""


class FailedPreconditionError(CacheClientError):
    """Redis refused the command as the data stands (e.g. the key holds another type)."""


class ServerError(CacheClientError):
    """Any other failure (INTERNAL, UNKNOWN, ...)."""


_BY_CODE: dict[grpc.StatusCode, type[CacheClientError]] = {
    grpc.StatusCode.UNAVAILABLE: CacheUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
}


def error_for(code: grpc.StatusCode, message: str) -> CacheClientError:
    """Our exception for a status code (also used for per-operation Pipeline errors)."""
    return _BY_CODE.get(code, ServerError)(message or code.name, code)


def from_rpc_error(error: grpc.RpcError) -> CacheClientError:
    """Our exception for a failed call of grpc or grpc.aio (raise it `from error`)."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or code.name
    retry_after = None
    # (key, value) pairs from either stack: grpc's are named tuples (typed in
    # grpc-stubs as objects with .key and .value only), grpc.aio's Metadata yields
    # plain tuples.
    trailing: Any = error.trailing_metadata() or ()
    for key, value in trailing:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            retry_after = retry_after_seconds(value)
    return _BY_CODE.get(code, ServerError)(details, code, retry_after=retry_after)


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode for a google.rpc.Code number (UNKNOWN if out of range)."""
    return _CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
