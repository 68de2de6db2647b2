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

import grpc

__all__ = [
    "CacheClientError",
    "CacheUnavailableError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidRequestError",
    "ResourceExhaustedError",
    "ServerError",
    "from_rpc_error",
]


class CacheClientError(Exception):
    """Base class; `code` is the gRPC status code the server (or channel) gave."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


class CacheUnavailableError(CacheClientError, ConnectionError):
    """The service or its Redis is unavailable right now; retrying later may work."""


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


def from_rpc_error(error: grpc.RpcError) -> CacheClientError:
    """Our exception for a failed call (raise it `from error`)."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or code.name
    return _BY_CODE.get(code, ServerError)(details, code)
