"""Large Pipeline replies, encoded with one copy of their values and one at a time.

A reply that carries megabytes of values (up to the send limit, 4 MiB by default)
costs its worker a copy of those bytes at every step, and each copy is one C call that
holds the GIL from start to end: while it runs, no other call of the worker moves. Built
the usual way, a reply copies its values into the message (upb), encodes it once
to measure it (`ByteSize`) and once more for grpc (`SerializeToString`): three
copies of up to the send limit per reply, each one a stall of every other caller.

So a reply whose values pass BULK_REPLY_BYTES is encoded here instead: the message
without its values is encoded by upb (outcomes, errors, stale answers: small), and
the values' records (field 2, in order) are appended after it, with one join. A
protobuf parser reads fields in any order and a repeated field's elements in the
order they come, so a caller parses the very reply the message would have been.
Its size is the length of those bytes: nothing is encoded to measure it.

And only one such reply is built at a time per worker (`BulkGate`): with several
bulk replies at once, their copies take turns at the GIL, and a small call waiting
for it competes with all of them instead of one. Small replies never wait for it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from cachegate.v1 import cache_pb2 as pb

__all__ = ["BULK_REPLY_BYTES", "BulkGate", "EncodedReply", "PipelineReply", "reply_of", "wire"]

BULK_REPLY_BYTES = 1024 * 1024
"""Value bytes from which a reply is encoded here (below, upb's own path is cheaper)."""

# Field 2 (values), wire type 2 (length-delimited).
_VALUES_TAG = b"\x12"
_EMPTY_VALUE = _VALUES_TAG + b"\x00"


@dataclass(frozen=True, slots=True)
class EncodedReply:
    """A Pipeline reply already encoded, sent as is.

    `message` is the reply without its values (what the tenant counters read);
    `data` the whole reply's wire bytes.
    """

    message: pb.PipelineResponse
    data: bytes


PipelineReply = pb.PipelineResponse | EncodedReply


def wire(reply: PipelineReply) -> bytes:
    """The reply's bytes for grpc: the Pipeline method's response serializer."""
    if type(reply) is EncodedReply:
        return reply.data
    assert isinstance(reply, pb.PipelineResponse)
    return reply.SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def reply_of(
    outcomes: Sequence[pb.Outcome],
    values: Sequence[bytes],
    errors: Sequence[pb.OperationError] = (),
    stale: Sequence[pb.StaleAnswer] = (),
    value_bytes: int | None = None,
) -> PipelineReply:
    """The reply: a message when its values are small, else an EncodedReply.

    `value_bytes`, the values' total length when the caller knows it, spares a sum.
    """
    if value_bytes is None:
        value_bytes = sum(map(len, values))
    if value_bytes < BULK_REPLY_BYTES:
        return pb.PipelineResponse(outcomes=outcomes, values=values, errors=errors, stale=stale)
    message = pb.PipelineResponse(outcomes=outcomes, errors=errors, stale=stale)
    parts = [message.SerializeToString()]
    for value in values:
        if value:
            parts.append(_VALUES_TAG + _varint(len(value)))
            parts.append(value)
        else:
            parts.append(_EMPTY_VALUE)
    return EncodedReply(message, b"".join(parts))


class BulkGate:
    """One bulk reply built at a time in this worker; waits are bounded by the caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, wait: float) -> bool:
        """Take the gate, waiting at most `wait` seconds; False if not taken (then the
        reply is built anyway: the gate spreads the work out, it never refuses it)."""
        return self._lock.acquire(timeout=max(0.0, wait))

    def release(self) -> None:
        self._lock.release()
