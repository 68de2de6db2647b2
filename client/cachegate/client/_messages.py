"""Requests built and replies read the same way by both clients (sync and asyncio).

Everything here is pure: no channel, no call. `CacheClient` and `AsyncCacheClient`
only differ in how they wait for an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import grpc

from cachegate.client._errors import error_for, status_code
from cachegate.client._ops import CacheEntry, Delete, Get, Operation, Result, SetEx
from cachegate.client._wire import decode_health_response, encode_health_request
from cachegate.v1 import cache_pb2 as pb

__all__ = [
    "HealthStatus",
    "decode_batch",
    "encode_batch",
    "encode_health_request",
    "entry_of",
    "found_value",
    "get_request",
    "health_status",
]


HealthStatus = Literal["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]
_HEALTH_NAMES: dict[int, HealthStatus] = {
    0: "UNKNOWN",
    1: "SERVING",
    2: "NOT_SERVING",
    3: "SERVICE_UNKNOWN",
}
_OUTCOMES: dict[int, Literal["value", "ok", "not_found", "error"]] = {
    pb.OUTCOME_VALUE: "value",
    pb.OUTCOME_OK: "ok",
    pb.OUTCOME_NOT_FOUND: "not_found",
    pb.OUTCOME_ERROR: "error",
}


def get_request(key: str, stale_if_error: int) -> pb.GetRequest:
    """A Get, allowing a stale answer up to `stale_if_error` seconds old (0: none)."""
    return pb.GetRequest(key=key, stale_if_error_seconds=stale_if_error)


def found_value(reply: pb.GetResponse) -> bytes | None:
    """A Get's value, or None on a miss (an empty value is b"", not a miss)."""
    return reply.value if reply.found else None


def entry_of(reply: pb.GetResponse) -> CacheEntry | None:
    """A Get's value with its stale flag and age, or None on a miss."""
    if not reply.found:
        return None
    return CacheEntry(reply.value, reply.stale, reply.age_seconds)


def health_status(raw: bytes) -> HealthStatus:
    """The status name in a serialized grpc.health.v1.HealthCheckResponse."""
    return _HEALTH_NAMES.get(decode_health_response(raw), "UNKNOWN")


def encode_batch(batch: Sequence[Operation], stale_if_error: int = 0) -> pb.PipelineRequest:
    """One PipelineRequest; `stale_if_error` allows its gets stale answers (see get_request)."""
    operations = []
    for op in batch:
        if isinstance(op, Get):
            operations.append(pb.Operation(get=pb.GetOperation(key=op.key)))
        elif isinstance(op, SetEx):
            operations.append(
                pb.Operation(
                    set_ex=pb.SetExOperation(key=op.key, value=op.value, ttl_seconds=op.ttl_seconds)
                )
            )
        elif isinstance(op, Delete):
            operations.append(pb.Operation(delete=pb.DeleteOperation(key=op.key)))
        else:
            raise TypeError(f"not a pipeline operation: {op!r} (use Get, SetEx or Delete)")
    return pb.PipelineRequest(operations=operations, stale_if_error_seconds=stale_if_error)


def decode_batch(reply: pb.PipelineResponse) -> list[Result]:
    errors = {e.index: error_for(status_code(e.code), e.message) for e in reply.errors}
    stale = {s.index: s.age_seconds for s in reply.stale}
    results = []
    for index, outcome_number in enumerate(reply.outcomes):
        outcome = _OUTCOMES.get(outcome_number, "error")
        if outcome == "value":
            age = stale.get(index)
            if age is None:
                results.append(Result("value", value=reply.values[index]))
            else:
                results.append(
                    Result("value", value=reply.values[index], stale=True, age_seconds=age)
                )
        elif outcome == "error":
            error = errors.get(index) or error_for(grpc.StatusCode.UNKNOWN, "no error detail")
            results.append(Result("error", error=error))
        else:
            results.append(Result(outcome))
    return results
