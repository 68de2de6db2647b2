"""Entries of repeated fields counted on the wire before a parse (rpc/_wire.counted)."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from cachegate.rpc._invalidations import MAX_WATCHED_KEYS, MAX_WATCHED_PREFIXES, SUBSCRIBE_ENTRIES
from cachegate.rpc._wire import SPARE_FIELDS, TooManyEntries, counted
from cachegate.v1 import invalidation_pb2 as pb

NAME = "cachegate.v1.SubscribeRequest"


class CountingParse:
    """SubscribeRequest.FromString, counting the requests it was handed."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes) -> pb.SubscribeRequest:
        self.calls += 1
        return pb.SubscribeRequest.FromString(data)


def subscribe(keys: int, prefixes: int, key: str = "") -> bytes:
    request = pb.SubscribeRequest(keys=[key] * keys, prefixes=[key] * prefixes)
    return request.SerializeToString()


@pytest.mark.parametrize(
    ("keys", "prefixes", "refused"),
    [
        (0, 0, None),
        (MAX_WATCHED_KEYS, MAX_WATCHED_PREFIXES, None),
        (MAX_WATCHED_KEYS + 1, 0, "keys"),
        (0, MAX_WATCHED_PREFIXES + 1, "prefixes"),
        (1_000_000, 0, "keys"),  # 2 MB of empty keys: 2 bytes each on the wire
        (0, 1_000_000, "prefixes"),
    ],
)
def test_entries_past_a_limit_are_refused_unparsed(
    keys: int, prefixes: int, refused: str | None
) -> None:
    parse = CountingParse()
    data = subscribe(keys, prefixes)
    result = counted(parse, NAME, SUBSCRIBE_ENTRIES)(data)
    if refused is None:
        assert isinstance(result, pb.SubscribeRequest)
        assert (len(result.keys), len(result.prefixes)) == (keys, prefixes)
        assert parse.calls == 1
    else:
        assert isinstance(result, TooManyEntries)
        assert result.field == refused
        assert (
            result.message()
            == {
                "keys": f"at most {MAX_WATCHED_KEYS} keys per subscription",
                "prefixes": f"at most {MAX_WATCHED_PREFIXES} prefixes per subscription",
            }[refused]
        )
        assert parse.calls == 0


def test_long_entries_are_counted_too_and_order_does_not_matter() -> None:
    request = pb.SubscribeRequest(keys=["k" * 900] * 3, prefixes=["p"] * (MAX_WATCHED_PREFIXES + 1))
    result = counted(CountingParse(), NAME, SUBSCRIBE_ENTRIES)(request.SerializeToString())
    assert isinstance(result, TooManyEntries)
    assert result.message() == f"at most {MAX_WATCHED_PREFIXES} prefixes per subscription"


def test_unknown_fields_cannot_make_a_long_walk() -> None:
    # Field 3 (varint) is no entry of either limit: past the limits' sum plus the
    # spare fields the request is refused without a parse.
    unknown = b"\x18\x01" * (MAX_WATCHED_KEYS + MAX_WATCHED_PREFIXES + SPARE_FIELDS + 1)
    parse = CountingParse()
    result = counted(parse, NAME, SUBSCRIBE_ENTRIES)(unknown)
    assert isinstance(result, TooManyEntries)
    assert result.field == "request"
    assert parse.calls == 0
    few = b"\x18\x01" * SPARE_FIELDS
    assert isinstance(counted(parse, NAME, SUBSCRIBE_ENTRIES)(few), pb.SubscribeRequest)


def test_malformed_bytes_are_left_to_the_parser() -> None:
    parse = CountingParse()
    with pytest.raises(DecodeError):
        counted(parse, NAME, SUBSCRIBE_ENTRIES)(b"\x0a\xff" * 200)  # lengths past the end
    assert parse.calls == 1
