"""One Pipeline batch: counted, parsed, run on the pool, and its reply built.

The servicer's Pipeline method (_servicer.py) holds the stream: admission, the
memory budget for the batch's bytes, the tenant's namespace and counters, and the
send of each reply. For each batch it asks a BatchRunner to count its operations on
the wire before anything is parsed (_wire.py), to parse it, taking the fast path
for a batch of plain gets (_fastpath.py: its keys, one multi-key read), and to run
it: one reply per batch, with a per-operation outcome and error, values read
within the reply's bounds (_replies.py) and stale-if-error answers (_stale.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from cachegate.core import LimitSettings, short_key_chars
from cachegate.pool import CacheError, PartialRead, RedisConnectionPool, TooLarge
from cachegate.rpc._budget import REPLY_COPIES, MemoryBudget
from cachegate.rpc._bulkreply import BULK_REPLY_BYTES, BulkGate, PipelineReply, reply_of
from cachegate.rpc._decode import Undecodable, undecodable_message
from cachegate.rpc._fastpath import get_only_keys
from cachegate.rpc._limits import check_key, check_ttl, check_value
from cachegate.rpc._replies import ReplyBudget, too_large_indexes
from cachegate.rpc._stale import StaleReads
from cachegate.rpc._status import InvalidArgumentError, code_number, rejection_for
from cachegate.rpc._wire import too_many_operations
from cachegate.v1 import cache_pb2 as pb

__all__ = ["BatchRunner"]

_INVALID_ARGUMENT = code_number(grpc.StatusCode.INVALID_ARGUMENT)
_RESOURCE_EXHAUSTED = code_number(grpc.StatusCode.RESOURCE_EXHAUSTED)
_VALUE, _NOT_FOUND, _EMPTY = pb.OUTCOME_VALUE, pb.OUTCOME_NOT_FOUND, b""


class BatchRunner:
    """Counts, parses and runs one Pipeline batch on the pool (a servicer holds one)."""

    def __init__(
        self,
        pool: RedisConnectionPool,
        limits: LimitSettings,
        stale: StaleReads,
        budget: MemoryBudget,
        replies: ReplyBudget,
    ) -> None:
        self._pool = pool
        self._limits = limits
        self._stale = stale
        self._budget = budget
        self._replies = replies
        # Replies of megabytes of values are built one at a time (see _bulkreply.py),
        # those whose values outgrow the first read included.
        self._bulk = BulkGate()

    def check_count(self, data: bytes) -> None:
        """Counted on the wire before anything is parsed: building millions of empty
        operations costs far more than the bytes that carry them (see _wire.py)."""
        reason = too_many_operations(data, self._limits.max_batch_ops)
        if reason is not None:
            raise InvalidArgumentError(
                "operations",
                f"{reason}; the limit is {self._limits.max_batch_ops} operations "
                "(CACHEGATE_MAX_BATCH_OPS)",
            )

    def parse(self, data: bytes) -> list[bytes] | pb.PipelineRequest:
        """The keys of a batch of plain gets, or the parsed batch; InvalidArgumentError."""
        keys = get_only_keys(data, self._limits.max_key_bytes)
        if keys is None:
            try:
                batch = pb.PipelineRequest.FromString(data)
            except DecodeError as exc:
                name = pb.PipelineRequest.DESCRIPTOR.full_name
                raise InvalidArgumentError(
                    "batch", undecodable_message(Undecodable(name, str(exc)))
                ) from None
        size = len(keys) if keys is not None else len(batch.operations)
        if size > self._limits.max_batch_ops:
            raise InvalidArgumentError(
                "operations",
                f"batch has {size} operations; the limit is {self._limits.max_batch_ops} "
                "(CACHEGATE_MAX_BATCH_OPS)",
            )
        return keys if keys is not None else batch

    def run(
        self, batch: pb.PipelineRequest, context: grpc.ServicerContext, prefix: str = ""
    ) -> tuple[PipelineReply, int]:
        """The reply to a batch and the budget bytes it holds until it is sent."""
        operations = batch.operations
        size = len(operations)
        # The key rule's cheap check (core/_keys.py): a short key needs no encoding.
        short_key = short_key_chars(self._limits.max_key_bytes)
        outcomes = [pb.OUTCOME_UNSPECIFIED] * size
        values = [b""] * size
        errors: list[tuple[int, int, str]] = []
        commands: list[tuple[Any, ...]] = []
        positions: list[int] = []
        for index, op in enumerate(operations):
            if op.WhichOneof("op") == "get":
                key = op.get.key
                if key and len(key) <= short_key:
                    commands.append(("GET", prefix + key))
                    positions.append(index)
                    continue
            try:
                commands.append(self._command(index, op, prefix))
            except InvalidArgumentError as exc:
                outcomes[index] = pb.OUTCOME_ERROR
                errors.append((index, _INVALID_ARGUMENT, str(exc)))
                continue
            positions.append(index)
        # The gets' values are read within the reply's bound and the room reserved.
        gets = sum(1 for command in commands if command[0] == "GET")
        worst = gets * self._limits.max_value_bytes
        want = min(worst, self._replies.bound(size))
        granted = self._replies.reserve_read(want, context)
        allowance = batch.stale_if_error_seconds
        stale: list[pb.StaleAnswer] = []
        try:
            replies = self._stale.execute_many(
                commands,
                allowance,
                timeout=context.time_remaining(),
                max_bytes=None if worst <= granted else granted,
            )
        except Exception as exc:
            rejection = rejection_for(exc, "Pipeline")
            answers = self._stale.answers(
                commands, exc, allowance, None if worst <= granted else granted
            )
            for at, index in enumerate(positions):
                answer = answers.get(at)
                if answer is not None:
                    outcomes[index] = pb.OUTCOME_VALUE
                    values[index] = answer.value
                    stale.append(pb.StaleAnswer(index=index, age_seconds=answer.age_seconds))
                    continue
                outcomes[index] = pb.OUTCOME_ERROR
                errors.append((index, code_number(rejection.code), rejection.message))
            replies = []
        for index, command, reply in zip(positions, commands, replies, strict=False):
            name = command[0]
            if isinstance(reply, CacheError):
                rejection = rejection_for(reply, "Pipeline")
                outcomes[index] = pb.OUTCOME_ERROR
                errors.append((index, code_number(rejection.code), rejection.message))
            elif name == "GET":
                if reply is None:
                    outcomes[index] = pb.OUTCOME_NOT_FOUND
                elif isinstance(reply, TooLarge):
                    outcomes[index] = pb.OUTCOME_ERROR
                    message = self._replies.too_large_message(reply.size, granted < want)
                    errors.append((index, _RESOURCE_EXHAUSTED, message))
                else:
                    outcomes[index] = pb.OUTCOME_VALUE
                    values[index] = reply
            elif name == "SETEX":
                outcomes[index] = pb.OUTCOME_OK
            else:  # DEL
                outcomes[index] = pb.OUTCOME_OK if reply else pb.OUTCOME_NOT_FOUND
        errors.sort()
        response = self._reply(
            outcomes,
            values,
            [pb.OperationError(index=i, code=c, message=m) for i, c, m in errors],
            context,
            stale,
        )
        return response, self._replies.settle(granted, response)

    def get_only(
        self, keys: list[str] | list[bytes], context: grpc.ServicerContext
    ) -> tuple[PipelineReply, int]:
        """A batch of valid gets only (the common read path): one multi-key read.

        Returns the reply and the budget bytes it holds until it is sent. One MGET
        when the batch's worst case fits the reply's bound and the budget; else a
        first read within a small share of the budget (the bounded script), and the
        values left out are read again with the room they need, as far as the
        reply's bound and the budget allow.
        """
        size = len(keys)
        bound = self._replies.bound(size)
        worst = size * self._replies.value_limit
        # One plain MGET whenever its worst case fits the reply's bound and the budget
        # has room for it right now; otherwise a first read within a small share.
        if worst <= bound and self._budget.reserve(worst * REPLY_COPIES):
            granted = worst
        else:
            granted = self._replies.reserve_read(
                min(worst, bound, self._replies.first_read), context
            )
        try:
            found = self._pool.get_many(
                keys,
                timeout=context.time_remaining(),
                max_bytes=None if worst <= granted else granted,
            )
            if type(found) is PartialRead:  # some values did not fit the first read
                if self._bulk.acquire(self._replies.wait(context)):
                    try:
                        found, granted, by_budget = self._read_left_out(
                            keys, list(found), bound, granted, context
                        )
                        response = self._partial_reply(found, by_budget)
                    finally:
                        self._bulk.release()
                else:
                    response = self._partial_reply(found, True)
                return response, self._replies.settle(granted, response, granted)
        except Exception as exc:
            rejection = rejection_for(exc, "Pipeline")
            code, message = code_number(rejection.code), rejection.message
            response = pb.PipelineResponse(
                outcomes=[pb.OUTCOME_ERROR] * size,
                values=[b""] * size,
                errors=[
                    pb.OperationError(index=i, code=code, message=message) for i in range(size)
                ],
            )
            return response, self._replies.settle(granted, response)
        if None not in found:  # every key hit: no per-value test needed
            outcomes, values = [_VALUE] * size, found
        else:
            outcomes = [_NOT_FOUND if v is None else _VALUE for v in found]
            values = [_EMPTY if v is None else v for v in found]
        # Gets only: the values and one outcome each are the whole reply, so their
        # sum sizes it for the budget (upb would measure it by encoding it).
        value_bytes = sum(map(len, values))  # in C: no per-value Python step
        response = self._reply(outcomes, values, (), context, value_bytes=value_bytes)
        return response, self._replies.settle(granted, response, value_bytes)

    def _reply(
        self,
        outcomes: list[pb.Outcome],
        values: list[bytes],
        errors: Sequence[pb.OperationError],
        context: grpc.ServicerContext,
        stale: Sequence[pb.StaleAnswer] = (),
        *,
        value_bytes: int | None = None,
    ) -> PipelineReply:
        """The reply; one of megabytes of values waits its turn at the gate (bounded
        by the caller's deadline; past the wait it is built anyway). `value_bytes`:
        the values' total, when the caller has it."""
        if value_bytes is None:
            value_bytes = sum(map(len, values))  # in C: no per-value Python step
        if value_bytes < BULK_REPLY_BYTES:
            return pb.PipelineResponse(outcomes=outcomes, values=values, errors=errors, stale=stale)
        taken = self._bulk.acquire(self._replies.wait(context))
        try:
            return reply_of(outcomes, values, errors, stale, value_bytes)
        finally:
            if taken:
                self._bulk.release()

    def _read_left_out(
        self,
        keys: list[str] | list[bytes],
        found: list[Any],
        bound: int,
        granted: int,
        context: grpc.ServicerContext,
    ) -> tuple[list[Any], int, bool]:
        """Read the values a first read left out, with the room they need as far as the
        bound and the budget allow. The values (a PartialRead if some are still left
        out), the value bytes now reserved, and whether the budget is what fell short."""
        left_out = too_large_indexes(found)
        used = sum(len(value) for value in found if isinstance(value, bytes))
        # Their sizes are known now: ask again only for those that can fit, in order.
        room = bound - used
        fitting: list[int] = []
        for index in left_out:
            size = found[index].size
            if size <= room:
                fitting.append(index)
                room -= size
        want = bound - used - room
        extra = self._replies.reserve_read(want, context)
        granted += extra
        partial = len(fitting) < len(left_out) or (extra == 0 and bool(fitting))
        if extra > 0 and fitting:
            try:
                again = self._pool.get_many(
                    [keys[i] for i in fitting], timeout=context.time_remaining(), max_bytes=extra
                )
            except BaseException:
                self._budget.release(extra * REPLY_COPIES)  # the caller settles the rest
                raise
            for index, value in zip(fitting, again, strict=True):
                found[index] = value
            partial = partial or type(again) is PartialRead
        if partial:
            return PartialRead(found), granted, extra < want
        return found, granted, False

    def _partial_reply(self, found: list[Any], by_budget: bool) -> PipelineReply:
        """A reply in which some gets may be left out: RESOURCE_EXHAUSTED for each of them
        (built by a caller that holds the bulk gate, or that waited for it in vain)."""
        outcomes = []
        values = []
        errors = []
        for index, value in enumerate(found):
            if isinstance(value, TooLarge):
                outcomes.append(pb.OUTCOME_ERROR)
                values.append(_EMPTY)
                message = self._replies.too_large_message(value.size, by_budget)
                errors.append(
                    pb.OperationError(index=index, code=_RESOURCE_EXHAUSTED, message=message)
                )
            elif value is None:
                outcomes.append(_NOT_FOUND)
                values.append(_EMPTY)
            else:
                outcomes.append(_VALUE)
                values.append(value)
        return reply_of(outcomes, values, errors)

    def _command(self, index: int, op: pb.Operation, prefix: str) -> tuple[Any, ...]:
        """The Redis command of one operation, checked against the limits."""
        where = f"operations[{index}]"
        kind = op.WhichOneof("op")
        namespace = prefix.encode()
        if kind == "get":
            return ("GET", namespace + check_key(op.get.key, self._limits, f"{where}.get.key"))
        if kind == "set_ex":
            key = check_key(op.set_ex.key, self._limits, f"{where}.set_ex.key")
            check_ttl(op.set_ex.ttl_seconds, f"{where}.set_ex.ttl_seconds")
            check_value(op.set_ex.value, self._limits, f"{where}.set_ex.value")
            return ("SETEX", namespace + key, op.set_ex.ttl_seconds, op.set_ex.value)
        if kind == "delete":
            key = check_key(op.delete.key, self._limits, f"{where}.delete.key")
            return ("DEL", namespace + key)
        raise InvalidArgumentError(where, "no operation set (one of get, set_ex, delete)")
