"""The gRPC service end to end: real channels, the embedded backend and a real redis-server."""

from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

from cachegate.client import CacheClient, CacheUnavailableError, InvalidRequestError
from cachegate.rpc import SERVICE_NAME
from cachegate.v1 import cache_pb2 as pb
from conftest import RunningServer, StartServer
from redisprocs import RedisProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def details(error: grpc.RpcError) -> list[object]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no rich status details"
    found: list[object] = []
    for any_detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if any_detail.Is(kind.DESCRIPTOR):
                detail = kind()
                any_detail.Unpack(detail)
                found.append(detail)
    return found


@pytest.fixture(params=["memory", "redis"])
def server(
    request: pytest.FixtureRequest, start_server: StartServer, shared_redis_url: str
) -> RunningServer:
    if request.param == "memory":
        return start_server()
    return start_server({"CACHEGATE_BACKEND": "redis", "REDIS_URL": shared_redis_url})


def test_get_setex_delete_round_trip(server: RunningServer) -> None:
    stub = server.stub
    key = f"rt:{time.monotonic_ns()}"
    assert stub.Get(pb.GetRequest(key=key)) == pb.GetResponse(found=False)
    stub.SetEx(pb.SetExRequest(key=key, value=b"\x00binary\xff", ttl_seconds=60))
    assert stub.Get(pb.GetRequest(key=key)) == pb.GetResponse(found=True, value=b"\x00binary\xff")
    assert stub.Delete(pb.DeleteRequest(key=key)).deleted is True
    assert stub.Delete(pb.DeleteRequest(key=key)).deleted is False
    assert stub.Get(pb.GetRequest(key=key)).found is False


def test_empty_value_is_found_not_missing(server: RunningServer) -> None:
    key = f"empty:{time.monotonic_ns()}"
    server.stub.SetEx(pb.SetExRequest(key=key, value=b"", ttl_seconds=60))
    assert server.stub.Get(pb.GetRequest(key=key)) == pb.GetResponse(found=True, value=b"")


def test_ttl_expires(memory_server: RunningServer) -> None:
    memory_server.stub.SetEx(pb.SetExRequest(key="short", value=b"v", ttl_seconds=1))
    assert memory_server.stub.Get(pb.GetRequest(key="short")).found is True
    time.sleep(1.2)
    assert memory_server.stub.Get(pb.GetRequest(key="short")).found is False


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.SetExRequest(key="k", value=b"v", ttl_seconds=0), "ttl_seconds"),
        (pb.SetExRequest(key="k", value=b"v", ttl_seconds=-5), "ttl_seconds"),
        (pb.SetExRequest(key="", value=b"v", ttl_seconds=5), "key"),
        (pb.SetExRequest(key="k" * 1025, value=b"v", ttl_seconds=5), "key"),
        (pb.SetExRequest(key="k", value=b"v" * (1024 * 1024 + 1), ttl_seconds=5), "value"),
    ],
)
def test_bad_input_is_invalid_argument_with_a_field_violation(
    memory_server: RunningServer, request_: pb.SetExRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        memory_server.stub.SetEx(request_)
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")
    [bad_request] = details(error)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert bad_request.field_violations[0].field == field
    # Nothing was written by a rejected request.
    assert memory_server.stub.Get(pb.GetRequest(key="k")).found is False


def test_pipeline_batches_answer_in_order_with_per_op_errors(server: RunningServer) -> None:
    prefix = f"pl:{time.monotonic_ns()}"

    def batch(i: int) -> pb.PipelineRequest:
        return pb.PipelineRequest(
            operations=[
                pb.Operation(set_ex=pb.SetExOperation(key=f"{prefix}:{i}", value=b"%d" % i,
                                                      ttl_seconds=60)),
                pb.Operation(get=pb.GetOperation(key=f"{prefix}:{i}")),
                pb.Operation(get=pb.GetOperation(key=f"{prefix}:missing")),
                pb.Operation(set_ex=pb.SetExOperation(key=f"{prefix}:bad", value=b"x",
                                                      ttl_seconds=0)),
                pb.Operation(),  # no operation set
                pb.Operation(delete=pb.DeleteOperation(key=f"{prefix}:{i}")),
                pb.Operation(delete=pb.DeleteOperation(key=f"{prefix}:{i}")),
            ]
        )  # fmt: skip

    replies = list(server.stub.Pipeline(iter([batch(i) for i in range(20)])))
    assert len(replies) == 20
    for i, reply in enumerate(replies):
        assert list(reply.outcomes) == [
            pb.OUTCOME_OK,
            pb.OUTCOME_VALUE,
            pb.OUTCOME_NOT_FOUND,
            pb.OUTCOME_ERROR,
            pb.OUTCOME_ERROR,
            pb.OUTCOME_OK,
            pb.OUTCOME_NOT_FOUND,
        ]
        assert reply.values[1] == b"%d" % i
        assert [e.index for e in reply.errors] == [3, 4]
        assert {e.code for e in reply.errors} == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}
        assert "ttl_seconds" in reply.errors[0].message
    # the bad set_ex wrote nothing
    assert server.stub.Get(pb.GetRequest(key=f"{prefix}:bad")).found is False


def test_a_stub_left_at_grpc_defaults_reads_every_reply(server: RunningServer) -> None:
    """The reply bound is gRPC's own default receive limit (4 MiB), so a stub made with
    no channel options (`server.stub`: grpc refuses a larger message on its own) gets
    its reply: the gets past the bound fail alone, RESOURCE_EXHAUSTED naming the
    setting. With a larger bound (16 MiB before) this 6 MB reply failed the whole batch
    on the client, every value of it lost."""
    prefix = f"big:{time.monotonic_ns()}"
    value = b"v" * 1_000_000
    for i in range(6):
        server.stub.SetEx(pb.SetExRequest(key=f"{prefix}:{i}", value=value, ttl_seconds=60))
    batch = pb.PipelineRequest(
        operations=[pb.Operation(get=pb.GetOperation(key=f"{prefix}:{i}")) for i in range(6)]
    )
    [reply] = list(server.stub.Pipeline(iter([batch])))
    assert reply.ByteSize() <= 4 * 1024 * 1024
    assert list(reply.outcomes) == [pb.OUTCOME_VALUE] * 4 + [pb.OUTCOME_ERROR] * 2
    assert list(reply.values[:4]) == [value] * 4
    assert [error.index for error in reply.errors] == [4, 5]
    for error in reply.errors:
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES" in error.message


def test_pipeline_redis_error_fails_only_its_own_result(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    stub = redis_backed_server.stub
    stub.SetEx(pb.SetExRequest(key="kept", value=b"v", ttl_seconds=60))
    admin = redis_server.client()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)  # every write is now refused with OOM, reads work
    batch = pb.PipelineRequest(
        operations=[
            pb.Operation(get=pb.GetOperation(key="kept")),
            pb.Operation(set_ex=pb.SetExOperation(key="new", value=b"1", ttl_seconds=9)),
            pb.Operation(get=pb.GetOperation(key="kept")),
        ]
    )
    [reply] = list(stub.Pipeline(iter([batch])))
    assert list(reply.outcomes) == [pb.OUTCOME_VALUE, pb.OUTCOME_ERROR, pb.OUTCOME_VALUE]
    assert list(reply.values) == [b"v", b"", b"v"]
    [error] = reply.errors
    assert error.index == 1
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "maxmemory" in error.message
    with pytest.raises(grpc.RpcError) as caught:
        stub.SetEx(pb.SetExRequest(key="new", value=b"1", ttl_seconds=9))
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    admin.config_set("maxmemory", 0)
    assert redis_backed_server.server.pool.breaker.state.value == "closed"


def test_wrongtype_unary_get_is_failed_precondition_batch_get_is_missing(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    redis_server.client().lpush("alist", b"x")
    with pytest.raises(grpc.RpcError) as caught:
        redis_backed_server.stub.Get(pb.GetRequest(key="alist"))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "WRONGTYPE" in (caught.value.details() or "")
    # In a batch, gets are served by MGET, which reads a non-string key as missing.
    batch = pb.PipelineRequest(operations=[pb.Operation(get=pb.GetOperation(key="alist"))])
    [reply] = list(redis_backed_server.stub.Pipeline(iter([batch])))
    assert list(reply.outcomes) == [pb.OUTCOME_NOT_FOUND]


def test_oversized_batch_is_rejected(start_server: StartServer) -> None:
    server = start_server({"CACHEGATE_MAX_BATCH_OPS": "10"})
    ops = [pb.Operation(get=pb.GetOperation(key="k"))] * 11
    with pytest.raises(grpc.RpcError) as caught:
        list(server.stub.Pipeline(iter([pb.PipelineRequest(operations=ops)])))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 10" in (caught.value.details() or "")


def test_stats_reports_pool_breaker_and_hits(server: RunningServer) -> None:
    key = f"st:{time.monotonic_ns()}"
    server.stub.SetEx(pb.SetExRequest(key=key, value=b"v", ttl_seconds=60))
    server.stub.Get(pb.GetRequest(key=key))
    server.stub.Get(pb.GetRequest(key=f"{key}:missing"))
    stats = server.stub.Stats(pb.StatsRequest())
    assert stats.calls.hits_total == 1
    assert stats.calls.misses_total == 1
    assert stats.calls.hit_rate == 0.5
    assert stats.breaker.state == pb.CIRCUIT_STATE_CLOSED
    assert stats.pool.max_connections == 50
    assert stats.pool.in_use_connections == 0
    assert stats.redis.healthy is True
    assert stats.redis.version
    assert stats.workers == 1


def test_breaker_open_is_unavailable_with_retry_info_and_health_follows(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    stub = redis_backed_server.stub
    assert redis_backed_server.health_status(SERVICE_NAME) == SERVING
    redis_server.kill()
    codes = []
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Get(pb.GetRequest(key="k"))
        codes.append(caught.value.code())
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 3
    with pytest.raises(grpc.RpcError) as caught:
        stub.Get(pb.GetRequest(key="k"))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "breaker" in (caught.value.details() or "")
    [retry] = details(caught.value)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 1.0
    # The process is fine; the cache service is not.
    assert redis_backed_server.health_status("") == SERVING
    assert redis_backed_server.health_status(SERVICE_NAME) == NOT_SERVING

    redis_server.restart()
    deadline = time.monotonic() + 5
    while redis_backed_server.health_status(SERVICE_NAME) != SERVING:
        assert time.monotonic() < deadline, "health never came back after Redis did"
        time.sleep(0.1)
    assert stub.Get(pb.GetRequest(key="k")).found is False


def test_health_is_not_serving_until_the_backend_answers(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    redis_server.kill()
    server = start_server(
        {"CACHEGATE_BACKEND": "redis", "REDIS_URL": redis_server.url}, wait_ready=False
    )
    time.sleep(0.3)
    assert server.health_status("") == NOT_SERVING
    assert server.health_status(SERVICE_NAME) == NOT_SERVING
    redis_server.restart()
    assert server.server.health.wait_ready(5)
    assert server.health_status("") == SERVING
    assert server.health_status(SERVICE_NAME) == SERVING


def test_reflection_lists_the_services(memory_server: RunningServer) -> None:
    database = ProtoReflectionDescriptorDatabase(memory_server.channel)
    services = set(database.get_services())
    assert {"cachegate.v1.CacheService", "grpc.health.v1.Health"} <= services


def test_reflection_can_be_switched_off(start_server: StartServer) -> None:
    server = start_server({"CACHEGATE_REFLECTION": "0"})
    database = ProtoReflectionDescriptorDatabase(server.channel)
    with pytest.raises(grpc.RpcError) as caught:
        list(database.get_services())
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_a_second_server_on_the_same_port_fails(
    memory_server: RunningServer, start_server: StartServer
) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        start_server({"CACHEGATE_LISTEN": memory_server.target})


def test_thin_client_round_trip_and_errors(memory_server: RunningServer) -> None:
    with CacheClient(memory_server.target) as client:
        assert client.get("c") is None
        client.set_ex("c", b"v", ttl_seconds=60)
        assert client.get("c") == b"v"
        assert client.delete("c") is True
        with pytest.raises(InvalidRequestError, match="ttl_seconds"):
            client.set_ex("c", b"v", ttl_seconds=0)
        assert client.stats().backend == "memory"
    memory_server.server.stop(grace=0)
    with (
        CacheClient(memory_server.target, timeout=1) as client,
        pytest.raises(CacheUnavailableError),
    ):
        client.get("c")
