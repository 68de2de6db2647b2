"""Request validation against the configured limits.

Keys are UTF-8 strings of 1..max_key_bytes bytes; values are bytes up to
max_value_bytes; TTLs are whole seconds > 0 and at most MAX_TTL_SECONDS (what
Redis accepts without overflowing its millisecond expiry time).
"""

from __future__ import annotations

from cachegate.core import LimitSettings
from cachegate.rpc._status import InvalidArgumentError

__all__ = ["MAX_TTL_SECONDS", "check_key", "check_ttl", "check_value"]

# Redis stores expiry as milliseconds since the epoch in a signed 64-bit number.
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600  # a century: far beyond any cache, far below overflow


def check_key(key: str, limits: LimitSettings, field: str = "key") -> bytes:
    """The key as UTF-8 bytes, or InvalidArgumentError."""
    if not key:
        raise InvalidArgumentError(field, "must not be empty")
    encoded = key.encode("utf-8", "surrogatepass")
    if len(encoded) > limits.max_key_bytes:
        raise InvalidArgumentError(
            field, f"is {len(encoded)} bytes; the limit is {limits.max_key_bytes} bytes"
        )
    return encoded


def check_value(value: bytes, limits: LimitSettings, field: str = "value") -> None:
    if len(value) > limits.max_value_bytes:
        raise InvalidArgumentError(
            field, f"is {len(value)} bytes; the limit is {limits.max_value_bytes} bytes"
        )


def check_ttl(ttl_seconds: int, field: str = "ttl_seconds") -> None:
    if ttl_seconds <= 0:
        raise InvalidArgumentError(field, f"must be > 0 seconds, got {ttl_seconds}")
    if ttl_seconds > MAX_TTL_SECONDS:
        raise InvalidArgumentError(
            field, f"must be <= {MAX_TTL_SECONDS} seconds, got {ttl_seconds}"
        )
