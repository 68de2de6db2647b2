"""The Pipeline read fast path agrees with the full parse, or steps aside."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cachegate.rpc._fastpath import get_only_keys
from cachegate.v1 import cache_pb2 as pb


def gets(*keys: str) -> bytes:
    ops = [pb.Operation(get=pb.GetOperation(key=k)) for k in keys]
    data: bytes = pb.PipelineRequest(operations=ops).SerializeToString()
    return data


def test_a_batch_of_short_ascii_gets_takes_the_fast_path() -> None:
    assert get_only_keys(gets("a", "user:42", "k" * 125), 1024) == [b"a", b"user:42", b"k" * 125]


def test_anything_else_takes_the_slow_path() -> None:
    assert get_only_keys(b"", 1024) is None  # an empty batch
    assert get_only_keys(gets("a", ""), 1024) is None  # an empty key
    assert get_only_keys(gets("k" * 126), 1024) is None  # a two-byte length
    assert get_only_keys(gets("k" * 11), 10) is None  # over the configured limit
    assert get_only_keys(gets("é"), 1024) is None  # not ASCII
    assert get_only_keys(b"\xff\xff", 1024) is None  # not protobuf
    mixed = pb.PipelineRequest(
        operations=[
            pb.Operation(get=pb.GetOperation(key="a")),
            pb.Operation(delete=pb.DeleteOperation(key="b")),
        ]
    ).SerializeToString()
    assert get_only_keys(mixed, 1024) is None
    # a get followed by a set_ex in the same Operation: protobuf keeps the last oneof member
    op = pb.Operation(get=pb.GetOperation(key="a")).SerializeToString()
    op += pb.Operation(
        set_ex=pb.SetExOperation(key="a", value=b"v", ttl_seconds=1)
    ).SerializeToString()
    sneaky = b"\x0a" + bytes([len(op)]) + op
    assert pb.PipelineRequest.FromString(sneaky).operations[0].WhichOneof("op") == "set_ex"
    assert get_only_keys(sneaky, 1024) is None
    # an unknown field inside the GetOperation
    extra = b"\x0a\x05\x0a\x03\x0a\x01a" + b"\x10\x01"
    assert get_only_keys(b"\x0a" + bytes([len(extra)]) + extra, 1024) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_the_fast_path_never_disagrees_with_protobuf(data: bytes) -> None:
    keys = get_only_keys(data, 1024)
    if keys is None:
        return
    parsed = pb.PipelineRequest.FromString(data)  # must parse, and say the same thing
    assert [op.WhichOneof("op") for op in parsed.operations] == ["get"] * len(keys)
    assert [op.get.key.encode() for op in parsed.operations] == keys


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=130), min_size=1, max_size=20))
def test_valid_get_batches_are_read_exactly(keys: list[str]) -> None:
    fast = get_only_keys(gets(*keys), 1024)
    if fast is not None:
        assert fast == [k.encode() for k in keys]
    else:
        assert any(not k.isascii() or len(k.encode()) > 125 for k in keys)
