"""The service's memory limits as a caller sees them: bounded replies, early refusals.

Small settings keep it quick: 64 KiB values, a 1 MiB send limit and a budget of 8 MiB
(the rule asks at least 4 times the send limit), so a batch of gets of a full value
passes the bound after about 15 of them.
"""

from __future__ import annotations

import grpc
import pytest

from cachegate.v1 import cache_pb2 as pb
from conftest import RunningServer, StartServer

VALUE = 64 * 1024
SEND_LIMIT = 1024 * 1024
SETTINGS = {
    "CACHEGATE_MAX_VALUE_BYTES": str(VALUE),
    "CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES": str(SEND_LIMIT),
    "CACHEGATE_MEMORY_BUDGET_BYTES": str(8 * SEND_LIMIT),
}


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest, start_server: StartServer) -> RunningServer:
    if request.param == "memory":
        return start_server(SETTINGS)
    redis_server = request.getfixturevalue("redis_server")
    return start_server({**SETTINGS, "CACHEGATE_BACKEND": "redis", "REDIS_URL": redis_server.url})


def _gets(key: str, count: int) -> pb.PipelineRequest:
    return pb.PipelineRequest(operations=[pb.Operation(get=pb.GetOperation(key=key))] * count)


def test_a_batch_of_large_values_gets_what_fits_and_resource_exhausted_for_the_rest(
    server: RunningServer,
) -> None:
    server.stub.SetEx(pb.SetExRequest(key="v", value=b"x" * VALUE, ttl_seconds=60), timeout=5)
    server.stub.SetEx(pb.SetExRequest(key="s", value=b"small", ttl_seconds=60), timeout=5)
    request = _gets("v", 100)
    request.operations.append(pb.Operation(get=pb.GetOperation(key="missing")))
    [reply] = list(server.stub.Pipeline(iter([request]), timeout=10))
    assert reply.ByteSize() <= SEND_LIMIT
    fitted = [i for i, o in enumerate(reply.outcomes) if o == pb.OUTCOME_VALUE]
    assert 10 <= len(fitted) < 16
    assert fitted == list(range(len(fitted)))  # in order: the first ones fit
    assert all(value == b"x" * VALUE for value in reply.values[: len(fitted)])
    assert reply.outcomes[100] == pb.OUTCOME_NOT_FOUND  # a miss costs nothing
    left_out = {error.index for error in reply.errors}
    assert left_out == set(range(len(fitted), 100))
    assert {error.code for error in reply.errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}
    assert "CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES" in reply.errors[0].message
    # the general path (a delete first) is bounded the same way
    mixed = _gets("v", 100)
    mixed.operations[0].CopyFrom(pb.Operation(delete=pb.DeleteOperation(key="gone")))
    [reply] = list(server.stub.Pipeline(iter([mixed]), timeout=10))
    assert reply.ByteSize() <= SEND_LIMIT
    assert reply.errors
    assert {e.code for e in reply.errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}


def test_a_unary_request_over_its_limit_is_refused_unparsed(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.SetEx(
            pb.SetExRequest(key="k", value=b"x" * (VALUE + 4096), ttl_seconds=60), timeout=5
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "CACHEGATE_MAX_VALUE_BYTES" in (caught.value.details() or "")
    # just over the value limit, within the request limit: the field check answers
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.SetEx(
            pb.SetExRequest(key="k", value=b"x" * (VALUE + 1), ttl_seconds=60), timeout=5
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "the limit is" in (caught.value.details() or "")


def test_a_batch_of_too_many_empty_operations_is_refused_before_it_is_parsed(
    server: RunningServer,
) -> None:
    raw = server.channel.stream_stream(
        "/cachegate.v1.CacheService/Pipeline",
        request_serializer=None,
        response_deserializer=pb.PipelineResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(raw(iter([b"\x0a\x00" * 400_000]), timeout=10))  # 800 KB, 400,000 operations
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "CACHEGATE_MAX_BATCH_OPS" in (caught.value.details() or "")
