"""The worker's memory budget, the wire counter and the bounded-read helpers (pure pieces)."""

from __future__ import annotations

import threading

import pytest

from cachegate.pool._bounded import PartialRead, TooLarge, read_known, script_sizes
from cachegate.rpc._budget import MemoryBudget
from cachegate.rpc._sendwatch import SendWatch
from cachegate.rpc._wire import MessageTooLarge, limited, too_many_operations
from cachegate.v1 import cache_pb2 as pb


def test_budget_grants_up_to_its_limit_and_refuses_past_it() -> None:
    budget = MemoryBudget(100)
    assert budget.reserve(60)
    assert not budget.reserve(41)  # no wait: refused at once
    assert budget.reserve(40)
    assert budget.used == 100
    assert budget.refused == 1
    budget.release(100)
    assert budget.used == 0
    assert budget.peak == 100


def test_budget_never_grants_more_than_the_whole_limit() -> None:
    budget = MemoryBudget(100)
    assert not budget.reserve(101, wait=5.0)  # could never fit: not waited for
    assert budget.used == 0


def test_take_up_to_grants_what_is_free() -> None:
    budget = MemoryBudget(100)
    assert budget.take_up_to(70) == 70
    assert budget.take_up_to(70) == 30
    assert budget.take_up_to(10) == 0
    assert budget.used == 100


def test_a_waiting_reservation_gets_what_another_releases() -> None:
    budget = MemoryBudget(100)
    assert budget.reserve(100)
    granted: list[bool] = []
    waiter = threading.Thread(target=lambda: granted.append(budget.reserve(50, wait=30.0)))
    waiter.start()
    budget.release(60)  # the waiter is woken by the release, not by its timeout
    waiter.join(30.0)
    assert granted == [True]
    assert budget.used == 90


def test_releasing_more_than_reserved_is_a_bug() -> None:
    budget = MemoryBudget(100)
    budget.reserve(10)
    with pytest.raises(AssertionError):
        budget.release(11)
    assert budget.used == 0


def _batch(operations: int) -> bytes:
    return pb.PipelineRequest(
        operations=[pb.Operation(get=pb.GetOperation(key="k"))] * operations
    ).SerializeToString()


@pytest.mark.parametrize(("operations", "limit"), [(0, 1), (10, 10), (11, 10), (500, 499)])
def test_the_wire_count_agrees_with_the_parse(operations: int, limit: int) -> None:
    refused = too_many_operations(_batch(operations), limit)
    assert (refused is not None) is (operations > limit)


def test_empty_operations_are_counted_without_a_parse() -> None:
    data = b"\x0a\x00" * 4_000_000  # 8 MB of empty operations
    assert too_many_operations(data, 10_000) == "batch has more than 10000 operations"
    assert too_many_operations(data, 4_000_000) is None


def test_overlong_tags_count_as_operations_too() -> None:
    # protobuf reads 8a 00 as the tag of field 1, so these are 100,000 operations
    data = b"\x8a\x00\x00" * 100_000
    assert len(pb.PipelineRequest.FromString(data).operations) == 100_000
    assert too_many_operations(data, 10_000) == "batch has more than 10000 operations"


def test_unknown_fields_are_not_operations_but_cannot_make_a_long_walk() -> None:
    ops = pb.PipelineRequest(operations=[pb.Operation(get=pb.GetOperation(key="k"))] * 48)
    few = ops.SerializeToString() + b"\x18\x0a" * 3  # field 3 = 10, three times
    assert too_many_operations(few, 50) is None
    many = b"\x18\x0a" * 1_000_000  # a million unknown fields, each with a 0x0a byte
    assert too_many_operations(many, 10_000) == "batch has more than 10064 fields"  # + SPARE_FIELDS


def test_payload_newlines_do_not_count_as_operations() -> None:
    # Keys full of 0x0a bytes: the quick upper bound says "maybe", the walk says no.
    data = pb.PipelineRequest(
        operations=[pb.Operation(get=pb.GetOperation(key="\n" * 100))] * 20
    ).SerializeToString()
    assert data.count(b"\n") > 100
    assert too_many_operations(data, 20) is None
    assert too_many_operations(data, 19) is not None


def test_short_and_long_operations_are_counted_alike() -> None:
    # Operations under 128 bytes are stepped over inline, longer ones (a two-byte
    # length) and fields with two-byte tags by the general walk: mixed, they count the same.
    short, long = pb.GetOperation(key="\n" * 10), pb.GetOperation(key="\n" * 300)
    batch = pb.PipelineRequest(
        operations=[pb.Operation(get=short if i % 3 else long) for i in range(30)]
    ).SerializeToString()
    unknown_high_field = b"\x82\x01\x01\x0a"  # field 16, length-delimited, one byte
    data = batch + unknown_high_field * 5
    assert too_many_operations(data, 30) is None
    assert too_many_operations(data, 29) == "batch has more than 29 operations"


def test_a_malformed_batch_is_left_to_the_parser() -> None:
    assert too_many_operations(b"\x0a\xff" * 100, 10) is None  # lengths past the end


def test_a_request_over_its_limit_is_not_parsed() -> None:
    parsed: list[bytes] = []

    def parse(data: bytes) -> bytes:
        parsed.append(data)
        return data

    names = {1: "key", 2: "value"}
    deserialize = limited(parse, "cachegate.v1.SetExRequest", (100, "SETTING", "request"), names)
    assert deserialize(b"x" * 100) == b"x" * 100
    big = pb.SetExRequest(key="k", value=b"v" * 200).SerializeToString()
    refused = deserialize(big)
    assert isinstance(refused, MessageTooLarge)
    assert refused.field == "value"  # the largest field on the wire
    assert refused.size == len(big)
    assert "at most 100 bytes (SETTING)" in refused.message()
    assert parsed == [b"x" * 100]


def test_script_sizes_tells_values_from_sizes() -> None:
    assert script_sizes([b"a", None, 1]) == ([b"a", None], 1, True)
    assert script_sizes([b"", 0]) == ([b""], 0, True)
    assert script_sizes([3, -1, 0, -1 - 3]) == ([3, -1, 0], 3, False)


def test_read_known_takes_values_in_order_while_they_fit() -> None:
    store = {"a": b"x" * 40, "b": b"y" * 70, "c": b"z" * 50, "d": b""}
    asked: list[list[str]] = []

    def mget(keys: object) -> list[bytes | None]:
        chunk = list(keys)  # type: ignore[call-overload]
        asked.append(chunk)
        return [store.get(k) for k in chunk]

    keys = ["a", "b", "c", "d", "missing", "hash"]
    sizes = [40, 70, 50, 0, 0, -1]
    out = read_known(keys, sizes, 100, 50, mget)
    assert isinstance(out, PartialRead)
    assert out == [b"x" * 40, TooLarge(70), b"z" * 50, b"", None, None]
    assert all(len(chunk) <= 2 for chunk in asked)  # worst case 2 x 50 <= 100


def test_read_known_leaves_out_a_value_that_grew() -> None:
    out = read_known(["a"], [10], 20, 20, lambda keys: [b"x" * 30])
    assert out == [TooLarge(30)]
    assert isinstance(out, PartialRead)
    whole = read_known(["a"], [10], 20, 20, lambda keys: [b"x" * 10])
    assert not isinstance(whole, PartialRead)


def test_send_watch_ends_only_the_streams_whose_reply_is_overdue() -> None:
    now = [0.0]
    ended: list[object] = []
    watch = SendWatch(10.0, ended.append, clock=lambda: now[0])
    try:
        first = watch.arm("first")  # type: ignore[arg-type]
        now[0] = 5.0
        watch.arm("second")  # type: ignore[arg-type]
        third = watch.arm("third")  # type: ignore[arg-type]
        assert watch.disarm(third)  # sent in time: never ended
        now[0] = 12.0
        watch.expire_due()
        assert ended == ["first"]
        assert not watch.disarm(first)  # expired: its stream was ended (RESOURCE_EXHAUSTED)
        now[0] = 16.0
        watch.expire_due()
        assert ended == ["first", "second"]
    finally:
        watch.close()


def test_operations_after_the_first_counted_slice_are_counted() -> None:
    # One long operation fills the first slice (4 x (limit + 1) bytes) with bytes that
    # are no tags; the empty operations after it are counted from later slices.
    long = pb.Operation(get=pb.GetOperation(key="k" * 50_000)).SerializeToString()
    data = long + b"\x0a\x00" * 10_000
    assert too_many_operations(data, 10_000) == "batch has more than 10000 operations"
    assert too_many_operations(data, 10_001) is None
