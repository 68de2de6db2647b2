"""The thin cachegate client: needs only grpcio and protobuf."""

from cachegate.client._client import DEFAULT_TARGET, CacheClient
from cachegate.client._errors import (
    CacheClientError,
    CacheUnavailableError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidRequestError,
    ResourceExhaustedError,
    ServerError,
)

__all__ = [
    "DEFAULT_TARGET",
    "CacheClient",
    "CacheClientError",
    "CacheUnavailableError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidRequestError",
    "ResourceExhaustedError",
    "ServerError",
]
