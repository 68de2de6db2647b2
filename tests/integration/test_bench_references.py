"""The references `make bench` measures cachegate against answer what they are asked.

scripts/grpc_floor.py is the floor (a constant reply) and, with `--redis-port`, the
leanest Get and Pipeline on Redis. Their figures stand beside cachegate's in every
ratio, so a reference that stopped reading Redis, or read the wrong keys, would make
those ratios lie: here each one runs against a real redis-server and its replies are
checked value by value.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # the bench's modules are scripts, not a package

from bench import FloorServer, start_script  # noqa: E402
from cachegate.v1 import cache_pb2 as pb  # noqa: E402
from redisprocs import RedisProcess  # noqa: E402

VALUES = {f"ref{i}": f"value of ref{i}".encode() for i in range(10)}


def pipeline(target: str, batches: list[pb.PipelineRequest]) -> list[pb.PipelineResponse]:
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            "/cachegate.v1.CacheService/Pipeline",
            request_serializer=pb.PipelineRequest.SerializeToString,
            response_deserializer=pb.PipelineResponse.FromString,
        )
        return list(call(iter(batches), timeout=10))


def gets(*keys: str) -> pb.PipelineRequest:
    return pb.PipelineRequest(operations=[pb.Operation(get=pb.GetOperation(key=k)) for k in keys])


@pytest.fixture
def lean(redis_server: RedisProcess) -> Iterator[FloorServer]:
    redis_server.client().mset(VALUES)
    server = start_script("grpc_floor.py", 1, "--redis-port", str(redis_server.port), pin=False)
    try:
        yield server
    finally:
        server.stop()


def test_the_lean_get_reads_each_key_from_redis(lean: FloorServer) -> None:
    with grpc.insecure_channel(lean.target) as channel:
        get = channel.unary_unary(
            "/cachegate.v1.CacheService/Get",
            request_serializer=pb.GetRequest.SerializeToString,
            response_deserializer=pb.GetResponse.FromString,
        )
        for key, value in VALUES.items():
            assert get(pb.GetRequest(key=key), timeout=10) == pb.GetResponse(
                found=True, value=value
            )
        assert get(pb.GetRequest(key="no such key"), timeout=10).found is False


def test_the_lean_pipeline_reads_every_batch_with_the_bounded_read(
    lean: FloorServer, redis_server: RedisProcess
) -> None:
    keys = list(VALUES)
    batches = [gets(*keys), gets(*reversed(keys)), gets(keys[3], keys[3], keys[7])]
    replies = pipeline(lean.target, batches)
    assert [list(reply.values) for reply in replies] == [
        [VALUES[k] for k in keys],
        [VALUES[k] for k in reversed(keys)],
        [VALUES[keys[3]], VALUES[keys[3]], VALUES[keys[7]]],
    ]
    assert all(set(reply.outcomes) == {pb.OUTCOME_VALUE} for reply in replies)
    # one EVALSHA of the length-first script per batch, as cachegate reads at the defaults
    commands = redis_server.client().info("commandstats")
    assert commands["cmdstat_evalsha"]["calls"] == len(batches)


def test_the_lean_pipeline_refuses_what_it_does_not_serve(lean: FloorServer) -> None:
    setex = pb.Operation(set_ex=pb.SetExOperation(key="ref0", value=b"x", ttl_seconds=5))
    with pytest.raises(grpc.RpcError) as caught:
        pipeline(lean.target, [pb.PipelineRequest(operations=[setex])])
    assert caught.value.code() is grpc.StatusCode.UNKNOWN


def test_the_floor_answers_a_batch_with_one_constant_value_per_get() -> None:
    server = start_script("grpc_floor.py", 1, pin=False)
    try:
        replies = pipeline(server.target, [gets("a", "b", "c"), gets("d")])
    finally:
        server.stop()
    assert [list(reply.values) for reply in replies] == [[b"v" * 32] * 3, [b"v" * 32]]
