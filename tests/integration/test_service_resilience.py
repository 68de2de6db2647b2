"""The service under stress: deadlines, health watching, graceful stop, cancels, limits."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cachegate.core import load_config
from cachegate.rpc import SERVICE_NAME
from cachegate.runtime import build_service
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from conftest import RunningServer, StartServer
from redisprocs import RedisProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def in_use(server: RunningServer) -> int:
    count: int = server.server.pool.get_stats()["in_use_connections"]
    return count


def test_the_callers_deadline_caps_a_hung_redis(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    server = start_server(
        {"CACHEGATE_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_SOCKET_TIMEOUT": "5"}
    )
    server.stub.Get(pb.GetRequest(key="warm"))  # a pooled connection exists
    redis_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.Get(pb.GetRequest(key="k"), timeout=0.1)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 0.15
        # The server gave up too (it did not sit out Redis's 5 s socket timeout).
        wait_for(lambda: in_use(server) == 0, 0.3, "the server to let go of Redis")
        # A caller's short deadline is no verdict on Redis.
        assert server.server.pool.breaker.state.value == "closed"
    finally:
        redis_server.resume()
    assert server.stub.Get(pb.GetRequest(key="warm"), timeout=2).found is False


def test_health_watch_sees_the_breaker_open_and_close(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    seen: queue.Queue[int] = queue.Queue()
    watch = redis_backed_server.health.Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=30
    )

    def collect() -> None:
        try:
            for reply in watch:
                seen.put(reply.status)
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    assert seen.get(timeout=5) == SERVING
    redis_server.kill()
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            redis_backed_server.stub.Get(pb.GetRequest(key="k"))
    assert seen.get(timeout=5) == NOT_SERVING
    redis_server.restart()
    assert seen.get(timeout=10) == SERVING  # the prober closed the breaker by itself
    watch.cancel()
    collector.join(timeout=5)


def test_graceful_shutdown_lets_in_flight_rpcs_finish(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    server = start_server(
        {"CACHEGATE_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_SOCKET_TIMEOUT": "5"}
    )
    server.stub.SetEx(pb.SetExRequest(key="k", value=b"v", ttl_seconds=60))
    redis_server.pause()
    results: list[Any] = []

    def in_flight() -> None:
        try:
            results.append(server.stub.Get(pb.GetRequest(key="k"), timeout=10))
        except grpc.RpcError as exc:
            results.append(exc)

    caller = threading.Thread(target=in_flight)
    caller.start()
    wait_for(lambda: in_use(server) == 1, 2, "the Get to reach Redis")
    stopper = threading.Thread(target=server.server.stop, kwargs={"grace": 5})
    stopper.start()
    time.sleep(0.2)
    # A new RPC during the grace period is refused; health says NOT_SERVING first.
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Get(pb.GetRequest(key="k"), timeout=2)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    redis_server.resume()
    caller.join(timeout=10)
    stopper.join(timeout=10)
    assert len(results) == 1
    assert isinstance(results[0], pb.GetResponse), results[0]
    assert results[0].value == b"v"


def test_pipeline_10000_ops_in_100_batches_with_mixed_errors(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    redis_server.client().rpush("a-list", b"x")  # in a batch, a non-string key reads as missing

    def op(batch: int, i: int) -> pb.Operation:
        key = f"p:{batch}:{i}"
        match i % 5:
            case 0:
                return pb.Operation(
                    set_ex=pb.SetExOperation(key=key, value=key.encode(), ttl_seconds=60)
                )
            case 1:
                return pb.Operation(get=pb.GetOperation(key=f"p:{batch}:{i - 1}"))
            case 2:
                return pb.Operation(get=pb.GetOperation(key="a-list"))
            case 3:
                return pb.Operation(set_ex=pb.SetExOperation(key=key, value=b"", ttl_seconds=-1))
            case _:
                return pb.Operation(delete=pb.DeleteOperation(key=f"p:{batch}:{i - 4}"))

    batches = [pb.PipelineRequest(operations=[op(b, i) for i in range(100)]) for b in range(100)]
    replies = list(redis_backed_server.stub.Pipeline(iter(batches), timeout=60))
    assert len(replies) == 100
    expected = [
        pb.OUTCOME_OK,
        pb.OUTCOME_VALUE,
        pb.OUTCOME_NOT_FOUND,
        pb.OUTCOME_ERROR,
        pb.OUTCOME_OK,
    ]
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for b, reply in enumerate(replies):
        assert list(reply.outcomes) == expected * 20
        for i in range(1, 100, 5):
            assert reply.values[i] == f"p:{b}:{i - 1}".encode()
        assert [(e.index, e.code) for e in reply.errors] == [
            (i + 3, invalid) for i in range(0, 100, 5)
        ]
    assert in_use(redis_backed_server) == 0
    assert redis_server.client().dbsize() == 1  # every written key was deleted again


def test_a_cancelled_stream_leaves_no_connection_and_no_stray_reply(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    server = start_server(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_SOCKET_TIMEOUT": "0.5",
            "REDIS_MAX_CONNECTIONS": "1",  # the next call must reuse the same slot
        }
    )
    server.stub.SetEx(pb.SetExRequest(key="mine", value=b"mine", ttl_seconds=60))
    server.stub.SetEx(pb.SetExRequest(key="other", value=b"other", ttl_seconds=60))
    requests: queue.Queue[pb.PipelineRequest | None] = queue.Queue()

    def feed() -> Iterator[pb.PipelineRequest]:
        while (item := requests.get()) is not None:
            yield item

    call = server.stub.Pipeline(feed())
    requests.put(pb.PipelineRequest(operations=[pb.Operation(get=pb.GetOperation(key="mine"))]))
    assert next(iter(call)).values[0] == b"mine"
    redis_server.pause()
    requests.put(pb.PipelineRequest(operations=[pb.Operation(get=pb.GetOperation(key="mine"))]))
    wait_for(lambda: in_use(server) == 1, 2, "the batch to reach Redis")
    call.cancel()
    requests.put(None)
    redis_server.resume()  # the late reply to "GET mine" arrives now, on that connection
    wait_for(lambda: in_use(server) == 0, 3, "the connection to come back")
    # The next call on the one pooled slot must read its own reply, not the stray one.
    for _ in range(20):
        assert server.stub.Get(pb.GetRequest(key="other"), timeout=2).value == b"other"


def test_a_cancelled_unary_call_leaves_no_connection(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    server = start_server(
        {"CACHEGATE_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_SOCKET_TIMEOUT": "0.5"}
    )
    server.stub.Get(pb.GetRequest(key="k"))
    redis_server.pause()
    future = server.stub.Get.future(pb.GetRequest(key="k"), timeout=10)
    wait_for(lambda: in_use(server) == 1, 2, "the Get to reach Redis")
    future.cancel()
    redis_server.resume()
    wait_for(lambda: in_use(server) == 0, 3, "the connection to come back")


class OpenStreams:
    """Pipeline streams held open (each holds a server thread) until close()."""

    BATCH = pb.PipelineRequest(operations=[pb.Operation(get=pb.GetOperation(key="k"))])

    def __init__(self, server: RunningServer, count: int) -> None:
        self._feeds: list[queue.Queue[pb.PipelineRequest | None]] = []
        self._calls: list[Any] = []
        try:
            for _ in range(count):
                feed: queue.Queue[pb.PipelineRequest | None] = queue.Queue()
                feed.put(self.BATCH)
                call = server.stub.Pipeline(self._requests(feed), timeout=30)
                next(iter(call))  # the stream is open and holds its slot and thread
                self._feeds.append(feed)
                self._calls.append(call)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _requests(feed: queue.Queue[pb.PipelineRequest | None]) -> Iterator[pb.PipelineRequest]:
        while (item := feed.get()) is not None:
            yield item

    def close(self) -> None:
        """End every stream; each must end cleanly with no further reply."""
        for feed in self._feeds:
            feed.put(None)
        for call in self._calls:
            assert list(call) == []


def test_too_many_streams_is_resource_exhausted(start_server: StartServer) -> None:
    # One caller takes every slot here: its share (CACHEGATE_STREAM_SHARE) is all of them.
    server = start_server(
        {
            "CACHEGATE_MAX_STREAMS": "2",
            "CACHEGATE_MAX_CONCURRENT_RPCS": "8",
            "CACHEGATE_STREAM_SHARE": "1",
        }
    )
    streams = OpenStreams(server, 2)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            list(server.stub.Pipeline(iter([OpenStreams.BATCH]), timeout=5))
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "CACHEGATE_MAX_STREAMS" in (caught.value.details() or "")
        # Unary calls still have threads.
        assert server.stub.Get(pb.GetRequest(key="k"), timeout=2).found is False
    finally:
        streams.close()
    # Slots come back when streams end.
    assert len(list(server.stub.Pipeline(iter([OpenStreams.BATCH]), timeout=5))) == 1


def test_open_streams_do_not_starve_unary_calls(start_server: StartServer) -> None:
    # One hot thread; every open stream holds a thread for its whole life.
    server = start_server({"CACHEGATE_RPC_THREADS": "1"})
    streams = OpenStreams(server, 3)
    try:
        started = time.monotonic()
        assert server.stub.Get(pb.GetRequest(key="k"), timeout=2).found is False
        assert server.health_status() == SERVING
        assert time.monotonic() - started < 2
    finally:
        streams.close()


def test_a_hung_redis_does_not_starve_health_and_stats(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    server = start_server(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "CACHEGATE_RPC_THREADS": "1",
            "REDIS_SOCKET_TIMEOUT": "5",
        }
    )
    redis_server.pause()
    try:
        held = [server.stub.Get.future(pb.GetRequest(key="k"), timeout=4) for _ in range(3)]
        wait_for(lambda: in_use(server) == 3, 3, "three Gets to hang on Redis")
        # Health probes and Stats answer while every hot thread waits on Redis.
        assert server.health_status() == SERVING
        assert server.stub.Stats(pb.StatsRequest(), timeout=2).pool.in_use_connections == 3
    finally:
        redis_server.resume()
    for future in held:
        assert future.result(timeout=10).found is False


def test_too_many_concurrent_rpcs_is_resource_exhausted(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    server = start_server(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "CACHEGATE_MAX_CONCURRENT_RPCS": "3",
            "CACHEGATE_MAX_STREAMS": "1",
        }
    )
    redis_server.pause()
    try:
        futures = [server.stub.Get.future(pb.GetRequest(key="k"), timeout=5) for _ in range(3)]
        wait_for(lambda: in_use(server) == 3, 3, "three Gets to be in flight")
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.Get(pb.GetRequest(key="k"), timeout=2)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        redis_server.resume()
    for future in futures:
        assert future.result(timeout=10).found is False


def test_oversized_message_is_refused(start_server: StartServer) -> None:
    server = start_server({"CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES": "4096"})
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.SetEx(pb.SetExRequest(key="k", value=b"x" * 8192, ttl_seconds=5))
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.stub.Get(pb.GetRequest(key="k")).found is False


def test_a_stream_cut_by_the_drain_ends_unavailable_for_the_caller_and_the_metrics() -> None:
    # The drain ends a Pipeline stream at its next batch: the caller sees UNAVAILABLE
    # (which clients retry), and the RPC metrics count the same code, not CANCELLED.
    handled: list[tuple[str, grpc.StatusCode]] = []

    class Recorder:
        def started(self, method: str) -> None:
            pass

        def handled(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
            handled.append((method, code))

    config = load_config({"CACHEGATE_LISTEN": "127.0.0.1:0", "CACHEGATE_HTTP_LISTEN": "off"})
    service = build_service(config, observer=Recorder())
    server, port = service.server, service.port
    server.start()
    assert server.health.wait_ready(10)
    batches: queue.Queue[pb.PipelineRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.PipelineRequest]:
        while (batch := batches.get(timeout=10)) is not None:
            yield batch

    one = pb.PipelineRequest(operations=[pb.Operation(get=pb.GetOperation(key="k"))])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        replies = iter(cache_pb2_grpc.CacheServiceStub(channel).Pipeline(requests(), timeout=10))
        batches.put(one)
        assert list(next(replies).outcomes) == [pb.OUTCOME_NOT_FOUND]
        drainer = threading.Thread(target=server.drain, args=(5.0,))
        drainer.start()
        wait_for(lambda: server.servicer.draining, 2, "the drain to begin")
        batches.put(one)
        with pytest.raises(grpc.RpcError) as caught:
            next(replies)
        batches.put(None)
        drainer.join(timeout=10)
    server.stop(grace=0)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert "shutting down" in str(caught.value.details())
    pipeline = "/cachegate.v1.CacheService/Pipeline"
    assert (pipeline, grpc.StatusCode.UNAVAILABLE) in handled, handled
