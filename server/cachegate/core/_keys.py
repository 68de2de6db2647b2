"""The key rule, and the cheap checks that decide most keys without applying it.

The rule: a key is a string of 1 to `max_bytes` bytes in UTF-8. (protobuf hands the
server valid UTF-8 only; should a lone surrogate ever reach `encode_key`, it counts
as the three bytes "surrogatepass" gives it rather than failing.)

The full rule encodes the key and counts its bytes (`encode_key`). Where keys come
in bulk, a cheaper check comes first; each says "valid" only of keys the full rule
accepts, and leaves every other key to the full rule, which also words the refusal:

- `short_key_chars`: a str of 1 to `max_bytes // 4` characters is valid without
  encoding it, since UTF-8 takes at most four bytes a character. The Pipeline's
  per-operation loop (rpc/_batches.py) decides the usual short key this way.
- `ascii_keys`: key bytes read straight from the wire (rpc/_fastpath.py) that are
  each 1 to `max_bytes` long, a length the caller checks as it reads them, and all
  ASCII, are valid as they stand: ASCII is valid UTF-8, one byte a character.

tests/unit/test_keys.py checks on generated keys that neither cheap check accepts
a key the full rule refuses, and that each decides the keys it is there for.
"""

from __future__ import annotations

__all__ = ["InvalidKeyError", "ascii_keys", "encode_key", "short_key_chars"]

# The most bytes UTF-8 spends on one character.
_UTF8_MAX_BYTES_PER_CHAR = 4


class InvalidKeyError(ValueError):
    """A key the rule refuses; the message says why (without naming the field)."""


def encode_key(key: str, max_bytes: int) -> bytes:
    """The full rule: the key's UTF-8 bytes, or InvalidKeyError."""
    if not key:
        raise InvalidKeyError("must not be empty")
    encoded = key.encode("utf-8", "surrogatepass")
    if len(encoded) > max_bytes:
        raise InvalidKeyError(f"is {len(encoded)} bytes; the limit is {max_bytes} bytes")
    return encoded


def short_key_chars(max_bytes: int) -> int:
    """A non-empty str key of at most this many characters is valid, unencoded."""
    return max_bytes // _UTF8_MAX_BYTES_PER_CHAR


def ascii_keys(keys: list[bytes]) -> bool:
    """Whether wire keys, each already known to be 1 to `max_bytes` long, are all valid
    as they stand (all ASCII); False leaves them to the full rule."""
    return b"".join(keys).isascii()
