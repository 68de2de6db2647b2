"""The key rule's cheap checks agree with the full rule, on generated keys.

Every place that validates keys goes through cachegate.core's key rule: the unary
calls and the Pipeline's slow path apply it in full (`encode_key`, through
rpc/_limits.check_key), the Pipeline's per-operation loop first tries
`short_key_chars`, the get-only wire fast path `ascii_keys`. A cheap check may leave
a valid key to the full rule, but must never accept a key the full rule refuses.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachegate.core import InvalidKeyError, ascii_keys, encode_key, short_key_chars
from cachegate.rpc._fastpath import get_only_keys
from cachegate.v1 import cache_pb2 as pb

# Keys of every kind: empty, ASCII, multi-byte, astral, control characters, NUL,
# around the limits drawn below.
KEYS = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="ascii"), max_size=140),
    st.text(alphabet=st.sampled_from("aé€😀\x00"), max_size=40),
)
LIMITS = st.integers(min_value=1, max_value=160)


def full_rule(key: str, max_bytes: int) -> bytes | None:
    try:
        return encode_key(key, max_bytes)
    except InvalidKeyError:
        return None


def test_the_full_rule_says_why() -> None:
    assert encode_key("user:42", 7) == b"user:42"
    assert encode_key("é", 2) == "é".encode()
    with pytest.raises(InvalidKeyError, match=r"^must not be empty$"):
        encode_key("", 10)
    with pytest.raises(InvalidKeyError, match=r"^is 3 bytes; the limit is 2 bytes$"):
        encode_key("€", 2)


@settings(max_examples=500, deadline=None)
@given(KEYS, LIMITS)
def test_a_short_key_is_one_the_full_rule_accepts(key: str, max_bytes: int) -> None:
    if key and len(key) <= short_key_chars(max_bytes):
        assert full_rule(key, max_bytes) is not None


@settings(max_examples=500, deadline=None)
@given(st.lists(KEYS, min_size=1, max_size=8), LIMITS)
def test_ascii_wire_keys_are_keys_the_full_rule_accepts(keys: list[str], max_bytes: int) -> None:
    wire = [key.encode() for key in keys]
    if all(1 <= len(data) <= max_bytes for data in wire) and ascii_keys(wire):
        assert [full_rule(key, max_bytes) for key in keys] == wire
    elif all(full_rule(key, max_bytes) is not None for key in keys):
        assert not all(key.isascii() for key in keys)  # left to the full rule


@settings(max_examples=500, deadline=None)
@given(st.lists(KEYS, min_size=1, max_size=8), LIMITS)
def test_the_wire_fast_path_agrees_with_the_full_rule(keys: list[str], max_bytes: int) -> None:
    ops = [pb.Operation(get=pb.GetOperation(key=key)) for key in keys]
    fast = get_only_keys(pb.PipelineRequest(operations=ops).SerializeToString(), max_bytes)
    full = [full_rule(key, max_bytes) for key in keys]
    if fast is not None:  # taken only for keys the full rule accepts, read exactly
        assert fast == full
    elif None not in full:  # valid keys it steps aside for: not ASCII, or past one-byte lengths
        assert any(not key.isascii() or len(key) > 125 for key in keys)


def test_the_cheap_checks_decide_the_usual_keys() -> None:
    # The common case must not fall through to the full rule (that is their point).
    assert len("user:1234567890") <= short_key_chars(1024)
    assert ascii_keys([b"user:1", b"session:abcdef"])
    assert not ascii_keys([b"user:1", "é".encode()])
