"""Request validation against the configured limits.

Keys follow the one key rule (core/_keys.py: 1..max_key_bytes bytes of UTF-8, and
the cheap checks that decide most keys before it); values are bytes up to
max_value_bytes; TTLs are whole seconds > 0 and at most MAX_TTL_SECONDS (what Redis
accepts without overflowing its millisecond expiry time).
"""

from __future__ import annotations

from cachegate.core import InvalidKeyError, LimitSettings, encode_key
from cachegate.rpc._status import InvalidArgumentError

__all__ = ["MAX_TTL_SECONDS", "check_key", "check_ttl", "check_value"]

# Redis stores expiry as milliseconds since the epoch in a signed 64-bit number.
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600  # a century: far beyond any cache, far below overflow


def check_key(key: str, limits: LimitSettings, field: str = "key") -> bytes:
    """The key as UTF-8 bytes, or InvalidArgumentError naming `field`."""
    try:
        return encode_key(key, limits.max_key_bytes)
    except InvalidKeyError as exc:
        raise InvalidArgumentError(field, str(exc)) from None


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
