"""Sizes checked on the wire bytes, before any message object is built.

A protobuf parse costs time and memory in proportion to the number of fields, not
to the bytes: 16 MiB of empty operations is 8.4 million sub-messages (0.7 s of CPU
and ~290 MB) before a count of them could say "too many". So:

- `too_many_operations` counts a batch's top-level fields on the wire and stops as
  soon as there are more than the limit. It costs nothing for the batches that
  cannot be over the limit (each operation takes at least 2 bytes, and each starts
  with the byte 0x0a, which `bytes.count` finds in C), and walks the fields in
  Python only for the rest, stopping at limit + 1.
- `limited` wraps a method's request parser with that method's own size limit:
  grpc's receive limit is one number for the whole server (the largest Pipeline
  batch), while a unary request holds at most a key, a value and a few more bytes.
- `counted` wraps a request parser with limits on the entries of its repeated
  fields (a subscription's keys and prefixes): an empty entry is 2 bytes, so 16 MiB
  holds 8 million of them, and they are counted on the wire, up to the first one
  past its limit, before any is parsed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachegate.core import LimitSettings

__all__ = [
    "SPARE_FIELDS",
    "UNARY_OVERHEAD_BYTES",
    "EntryLimit",
    "MessageTooLarge",
    "RequestLimit",
    "TooManyEntries",
    "counted",
    "limited",
    "request_limits",
    "too_many_operations",
]

# Room in a unary request beyond its key and value: tags, lengths, the TTL, and
# fields a newer client may add.
UNARY_OVERHEAD_BYTES = 1024

_OPERATION_TAG = b"\x0a"
_LONG_TAG = b"\x8a"  # the same tag as an overlong varint starts with this byte
_COUNT_SLICE = 1024 * 1024  # bytes counted per call (each call holds the GIL)

RequestLimit = tuple[int, str, str]
"""A method's request size limit: bytes, the settings it comes from, the field that
can make a request that large."""  # field 1 (operations), wire type 2 (length-delimited)


@dataclass(frozen=True, slots=True)
class MessageTooLarge:
    """Stands in for a request larger than its method's limit (it was never parsed)."""

    type_name: str
    size: int
    limit: int
    setting: str
    field: str  # the field that can make it this large (what BadRequest names)

    def message(self) -> str:
        return (
            f"the {self.type_name} is {self.size} bytes; this method accepts at most "
            f"{self.limit} bytes ({self.setting})"
        )


# Top-level fields a request limited by `counted` may hold beyond its limited
# entries (fields a newer client may add), before it is refused unparsed.
SPARE_FIELDS = 64


@dataclass(frozen=True, slots=True)
class EntryLimit:
    """At most `most` entries of the repeated top-level field `number`, and what a
    caller past it is told (`reason`, about `field`)."""

    number: int
    field: str
    most: int
    reason: str


@dataclass(frozen=True, slots=True)
class TooManyEntries:
    """Stands in for a request with more entries than its method allows (never parsed)."""

    type_name: str
    field: str
    reason: str

    def message(self) -> str:
        return self.reason


def counted(
    parse: Callable[[bytes], Any], type_name: str, entry_limits: Sequence[EntryLimit]
) -> Callable[[bytes], Any]:
    """`parse`, but a request past one of `entry_limits` becomes TooManyEntries unparsed.

    Only a request long enough to pass the smallest limit (each entry takes at least
    2 bytes) is walked, and the walk stops at the first entry past its limit, or past
    the limits' sum plus SPARE_FIELDS fields of any kind. Malformed bytes are left to
    the parse, which reports them.
    """
    by_number = {limit.number: limit for limit in entry_limits}
    shortest = 2 * (min(limit.most for limit in entry_limits) + 1)
    most_fields = sum(limit.most for limit in entry_limits) + SPARE_FIELDS

    def deserialize(data: bytes) -> Any:
        if len(data) >= shortest:
            refused = _past_a_limit(data, by_number, most_fields)
            if refused is not None:
                field, reason = refused
                return TooManyEntries(type_name, field, reason)
        return parse(data)

    return deserialize


def _past_a_limit(
    data: bytes, by_number: Mapping[int, EntryLimit], most_fields: int
) -> tuple[str, str] | None:
    """(field, reason) of the first entry past its limit in `data`, or None."""
    counts = dict.fromkeys(by_number, 0)
    fields = 0
    try:
        for tag, _, cut in _fields(data):
            if cut:
                return None
            fields += 1
            limit = by_number.get(tag >> 3)
            if limit is not None:
                counts[limit.number] += 1
                if counts[limit.number] > limit.most:
                    return limit.field, limit.reason
            if fields > most_fields:
                return "request", f"the request has more than {most_fields} fields"
    except _NotAFieldError:
        return None
    return None


def limited(
    parse: Callable[[bytes], Any],
    type_name: str,
    limit: RequestLimit,
    field_names: Mapping[int, str] | None = None,
) -> Callable[[bytes], Any]:
    """`parse`, but a request above the limit's bytes becomes MessageTooLarge unparsed.

    The field named is the largest one on the wire (found without parsing), when
    `field_names` knows its number; else the limit's own.
    """
    size_limit, setting, field = limit
    names = field_names or {}

    def deserialize(data: bytes) -> Any:
        if len(data) > size_limit:
            name = names.get(_largest_field(data), field)
            return MessageTooLarge(type_name, len(data), size_limit, setting, name)
        return parse(data)

    return deserialize


def request_limits(limits: LimitSettings) -> dict[str, RequestLimit]:
    """Each unary cache method's request size limit and the settings it comes from.

    Pipeline has none here: its limit is grpc's own receive limit for the server
    (CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES), which grpc enforces before buffering.
    """
    # One limit for every unary request: no request of them carries more than a key
    # and a value (Get and Delete could be held tighter, but then a malformed request
    # would be told its size instead of what is wrong with it).
    size = limits.max_key_bytes + limits.max_value_bytes + UNARY_OVERHEAD_BYTES
    setting = "CACHEGATE_MAX_KEY_BYTES + CACHEGATE_MAX_VALUE_BYTES + 1024"
    return {
        "Get": (size, setting, "key"),
        "Delete": (size, setting, "key"),
        "SetEx": (size, setting, "value"),
        "Stats": (size, setting, "request"),
    }


def too_many_operations(data: bytes, limit: int) -> str | None:
    """Why a PipelineRequest's wire bytes hold too many operations, or None.

    An operation is a field 1 record; its tag is the byte 0x0a, or 0x8a followed by
    more bytes (protobuf accepts an overlong varint), so the two bytes' count bounds
    the operations from above, in C. Only past the limit are the fields walked, up
    to limit + 1 operations, or limit + SPARE_FIELDS fields of any kind (a batch has
    one other field; a walk must not be made long with more).
    Malformed bytes give None here: the parse that follows reports them.
    """
    if len(data) <= 2 * limit:
        return None  # an operation takes at least 2 bytes
    # Counted a slice at a time: a count holds the GIL, and once the tags seen pass
    # the limit the rest need not be counted (the walk decides). The first slice just
    # holds limit + 1 operations of a few bytes, so a batch of many small operations
    # starts its walk without a count of the rest.
    tags = 0
    start, stop = 0, 4 * (limit + 1)
    while start < len(data):
        tags += data.count(_OPERATION_TAG, start, stop) + data.count(_LONG_TAG, start, stop)
        start, stop = stop, stop + _COUNT_SLICE
        if tags > limit:
            most_fields = limit + SPARE_FIELDS
            operations, fields = _count_fields(data, limit, most_fields)
            if operations > limit:
                return f"batch has more than {limit} operations"
            if fields > most_fields:
                return f"batch has more than {most_fields} fields"
            return None
    return None


class _NotAFieldError(ValueError):
    """Bytes where a field should start that are none (a cut varint, an unknown wire type)."""


def _fields(data: bytes) -> Iterator[tuple[int, int, bool]]:
    """Each top-level field of `data`: its tag, its payload length (length-delimited
    fields; 0 for the others), and whether it runs past the end (the walk ends there).
    Raises _NotAFieldError at bytes that are no field."""
    pos, end = 0, len(data)
    while pos < end:
        tag, length, pos = _field_at(data, pos)
        cut = pos > end
        yield tag, length, cut
        if cut:
            return


def _field_at(data: bytes, pos: int) -> tuple[int, int, int]:
    """The field starting at `pos`: its tag, its payload length (length-delimited
    fields; 0 for the others) and the position after it (past the end when cut).
    Raises _NotAFieldError at bytes that are no field."""
    tag, pos = _varint(data, pos)
    if tag < 0:
        raise _NotAFieldError
    wire_type, length = tag & 7, 0
    if wire_type == 0:
        _, pos = _varint(data, pos)
        if pos < 0:
            raise _NotAFieldError
    elif wire_type == 1:
        pos += 8
    elif wire_type == 2:
        length, pos = _varint(data, pos)
        if length < 0:
            raise _NotAFieldError
        pos += length
    elif wire_type == 5:
        pos += 4
    else:  # groups (deprecated) or garbage: let the parser say which
        raise _NotAFieldError
    return tag, length, pos


def _count_fields(data: bytes, limit: int, most_fields: int) -> tuple[int, int]:
    """(operations, fields) at the top level of `data`, counted until the operations
    pass `limit` or the fields pass `most_fields`; (-1, -1) when malformed first.

    A field with a one-byte tag and a one-byte varint or length (an operation shorter
    than 128 bytes) is stepped over inline, an operation first: a long walk is made of
    such fields (an attack of small ones), and every step of it holds the GIL.
    """
    operations = fields = 0
    pos, end = 0, len(data)
    last = end - 1
    try:
        while pos < end:
            tag = data[pos]
            if tag == 10 and pos < last and data[pos + 1] < 0x80:
                pos += 2 + data[pos + 1]  # an operation shorter than 128 bytes
                operations += 1
            elif tag < 0x80 and tag & 5 == 0 and pos < last and data[pos + 1] < 0x80:
                pos += 2 + data[pos + 1] if tag & 2 else 2  # wire type 2 or 0
            else:
                tag, _, pos = _field_at(data, pos)
                if tag == 10:  # field 1, length-delimited: an operation
                    operations += 1
            fields += 1
            if operations > limit or fields > most_fields:
                break
    except _NotAFieldError:
        return -1, -1
    if pos > end:  # the last field stepped over runs past the end
        return -1, -1
    return operations, fields


def _largest_field(data: bytes, most_fields: int = 64) -> int:
    """The number of the longest length-delimited top-level field; 0 when unclear."""
    best, best_length = 0, -1
    try:
        for tag, length, _ in itertools.islice(_fields(data), most_fields):
            if tag & 7 == 2 and length > best_length:
                best, best_length = tag >> 3, length
    except _NotAFieldError:
        return 0
    return best


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; (-1, -1) when cut short."""
    value = shift = 0
    end = len(data)
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return -1, -1
