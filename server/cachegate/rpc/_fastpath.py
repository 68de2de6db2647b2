"""The Pipeline read path without per-operation message objects.

A batch of gets is the hot path of a cache. Reading `op.get.key` from a parsed
PipelineRequest builds two wrapper objects and a str per operation, a large share of
the per-operation budget (docs/performance.md). Parsed instead as a message whose
field 1 is `repeated bytes`, the same wire bytes give each operation's encoding
in C; a get of a short key is then recognised and its key sliced out:

    Operation  = 0x0a L  GetOperation          (field 1 "get", length L)
    GetOperation = 0x0a K  key                  (field 1 "key", length K)

so one operation is exactly `0a (K+2) 0a K <key>` with one-byte lengths. Its key
is checked by the key rule's cheap check for wire bytes (core/_keys.py): a length
of 1..max_key_bytes, read here with the shape, and plain ASCII (valid UTF-8 for
sure, as protobuf requires of a string). Any batch that is not entirely of that
shape, that allows stale answers, or whose keys that check does not decide, returns
None and takes the ordinary path, which parses everything and applies the full rule.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from cachegate.core import ascii_keys

__all__ = ["get_only_keys"]


def _raw_batch_class() -> type[Message]:
    # A private pool: this view of the wire format never meets the real contract's names.
    proto = descriptor_pb2.FileDescriptorProto(
        name="cachegate_private/raw_batch.proto", package="cachegate_private", syntax="proto3"
    )
    message = proto.message_type.add(name="RawBatch")
    message.field.add(
        name="operations",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    # PipelineRequest.stale_if_error_seconds: a batch that allows staleness reads
    # TTLs too, on the ordinary path (see _stale.py).
    message.field.add(
        name="stale_if_error_seconds",
        number=2,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("cachegate_private.RawBatch"))


_RawBatch = _raw_batch_class()


def get_only_keys(data: bytes, max_key_bytes: int) -> list[bytes] | None:
    """The keys of a batch made only of gets of valid keys, or None (take the slow path)."""
    try:
        raw = _RawBatch.FromString(data)
    except DecodeError:
        return None
    if raw.stale_if_error_seconds:  # type: ignore[attr-defined]
        return None
    operations = raw.operations  # type: ignore[attr-defined]
    limit = min(max_key_bytes, 125)  # one-byte lengths: K + 2 must stay below 128
    keys = [
        op[4:]
        for op in operations
        # exactly `0a (K+2) 0a K <K bytes>`: a get, a key, nothing else, 1 <= K <= limit
        if len(op) > 4
        and op[0] == 10
        and op[2] == 10
        and op[1] == op[3] + 2
        and len(op) == op[3] + 4
        and op[3] <= limit
    ]
    if not keys or len(keys) != len(operations):
        return None
    if not ascii_keys(keys):  # anything but ASCII: the full rule
        return None
    return keys
