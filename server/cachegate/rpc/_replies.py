"""How many bytes a Pipeline reply may hold, and the budget it takes while it exists.

Two bounds apply to every reply:

- the message bound: a reply never passes the send limit
  (CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES, less room for its per-operation fields);
- the worker's memory budget (CACHEGATE_MEMORY_BUDGET_BYTES): the bytes of values
  read are reserved before Redis is asked for them, and the reply's bytes stay
  reserved until grpc has sent it.

A batch of gets is first read within a small share of the budget, so batches of
small values never queue behind each other for memory. Values left out of that
first read (their sizes are known then) are read once more with the room they need,
as far as both bounds allow; what still does not fit gets RESOURCE_EXHAUSTED, for
that operation alone, naming the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from cachegate.core import LimitSettings
from cachegate.pool import TooLarge
from cachegate.rpc._budget import REPLY_COPIES, REQUEST_COPIES, MemoryBudget
from cachegate.rpc._bulkreply import EncodedReply, PipelineReply
from cachegate.rpc._status import TooBusyError
from cachegate.v1 import cache_pb2 as pb

__all__ = ["BUDGET_WAIT_SECONDS", "ReplyBudget", "too_large_indexes"]

# Room a reply needs per operation besides its value: the outcome, the value's tag
# and length, and an error entry (its index, code and a message naming a limit).
PER_OP_REPLY_BYTES = 160
# A message's own framing and fields.
REPLY_OVERHEAD_BYTES = 1024
# Longest a call waits for budget before it is refused: memory frees as replies are
# sent, in milliseconds unless callers stop reading.
BUDGET_WAIT_SECONDS = 0.5
# A first read of a batch takes at most this share of the budget (copies counted).
FIRST_READ_SHARE = 16
# Requests below this size are not counted: the RPC limit bounds how many there are.
SMALL_REQUEST_BYTES = 64 * 1024


class ReplyBudget:
    """Reservations of a worker's budget for Pipeline reads and replies."""

    def __init__(self, budget: MemoryBudget, limits: LimitSettings) -> None:
        self._budget = budget
        self._send_limit = limits.max_receive_message_bytes
        self.value_limit = limits.max_value_bytes
        self.first_read = max(1, budget.limit // (FIRST_READ_SHARE * REPLY_COPIES))

    def wait(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        return BUDGET_WAIT_SECONDS if remaining is None else min(BUDGET_WAIT_SECONDS, remaining)

    def bound(self, operations: int) -> int:
        """Most value bytes a reply to `operations` operations may carry."""
        return max(0, self._send_limit - operations * PER_OP_REPLY_BYTES - REPLY_OVERHEAD_BYTES)

    def reserve_read(self, want: int, context: grpc.ServicerContext) -> int:
        """Reserve room to read `want` value bytes (waiting a little); the bytes granted,
        which may be fewer when the budget is short (then fewer values fit)."""
        if want <= 0:
            return 0
        if self._budget.reserve(want * REPLY_COPIES, self.wait(context)):
            return want
        taken = self._budget.take_up_to(want * REPLY_COPIES)
        granted = taken // REPLY_COPIES
        self._budget.release(taken - granted * REPLY_COPIES)  # whole copies only
        return granted

    def settle(
        self, reserved_read: int, reply: PipelineReply, value_bytes: int | None = None
    ) -> int:
        """Turn a read's reservation into the reply's; the budget bytes now held.

        `value_bytes` (at most) in the reply's values, when known, spares measuring
        it: upb measures a message by encoding it, which for a large reply holds
        the GIL for milliseconds. An encoded reply's size is its length.
        """
        held = reserved_read * REPLY_COPIES
        message = reply.message if type(reply) is EncodedReply else reply
        assert isinstance(message, pb.PipelineResponse)
        if type(reply) is EncodedReply:
            size = len(reply.data)
        elif value_bytes is None:
            size = message.ByteSize()
        else:
            size = value_bytes + len(message.outcomes) * PER_OP_REPLY_BYTES + REPLY_OVERHEAD_BYTES
        need = size * REPLY_COPIES
        if need < held:
            self._budget.release(held - need)
            return need
        if need > held:  # only the per-operation fields: small, and never waited for
            return held + self._budget.take_up_to(need - held)
        return held

    def hold_request(self, size: int, context: grpc.ServicerContext) -> int:
        """Reserve a large unary request's bytes; the budget bytes held (0 for a small one)."""
        if size < SMALL_REQUEST_BYTES:
            return 0
        held = size * REQUEST_COPIES
        if not self._budget.reserve(held, self.wait(context)):
            raise TooBusyError(self.full_message("request"))
        return held

    def full_message(self, what: str) -> str:
        return (
            f"this worker's memory budget of {self._budget.limit} bytes is in use "
            f"(CACHEGATE_MEMORY_BUDGET_BYTES); the {what} was not accepted, retry later"
        )

    def too_large_message(self, size: int, by_budget: bool) -> str:
        if by_budget:
            return (
                f"value of {size} bytes left out: this worker's memory budget is in use "
                "(CACHEGATE_MEMORY_BUDGET_BYTES); retry later"
            )
        return (
            f"value of {size} bytes left out: the reply would pass {self._send_limit} bytes "
            "(CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES); read it in a smaller batch"
        )


def too_large_indexes(values: Sequence[Any]) -> list[int]:
    """Where a bounded read left values out."""
    return [index for index, value in enumerate(values) if isinstance(value, TooLarge)]
