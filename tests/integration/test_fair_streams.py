"""Fair Pipeline streams (rpc/_streams.py): the idle timeout and each caller's share.

Real servers on loopback (and a unix socket for a second peer without tokens), real
gRPC channels; the idle timeout is short so that each test runs in about a second.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc
import pytest

from cachegate.core import load_config
from cachegate.rpc import CacheServer
from cachegate.runtime import build_service
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from redisprocs import RedisProcess

IDLE = 0.5
# The watchdog looks every quarter of the timeout (at least every 50 ms); on a loaded
# host the status may take a little longer to arrive.
SLACK = 1.0
BATCH = pb.PipelineRequest(operations=[pb.Operation(get=pb.GetOperation(key="k"))])
Serve = Callable[..., tuple[CacheServer, str | None]]
ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"


class Stream:
    """One Pipeline stream fed from a queue: send() a batch and wait for its reply."""

    def __init__(self, stub: cache_pb2_grpc.CacheServiceStub, token: str | None = None) -> None:
        self._feed: queue.Queue[pb.PipelineRequest | None] = queue.Queue()
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.call = stub.Pipeline(self._requests(), timeout=30, metadata=metadata)
        self._replies = iter(self.call)

    def _requests(self) -> Iterator[pb.PipelineRequest]:
        while (item := self._feed.get()) is not None:
            yield item

    def send(self, batch: pb.PipelineRequest = BATCH) -> pb.PipelineResponse:
        self._feed.put(batch)
        reply: pb.PipelineResponse = next(self._replies)
        return reply

    def error(self) -> grpc.RpcError:
        """Wait for the stream to end with an error (the test fails if it ends OK)."""
        with pytest.raises(grpc.RpcError) as caught:
            next(self._replies)
        return caught.value

    def close(self) -> None:
        self._feed.put(None)
        self.call.cancel()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Build, optionally also listen on a unix socket, and start servers; stopped at teardown."""
    started: list[CacheServer] = []

    def start(env: Mapping[str, str], *, unix: bool = False) -> tuple[CacheServer, str | None]:
        config = load_config(
            {"CACHEGATE_LISTEN": "127.0.0.1:0", "CACHEGATE_HTTP_LISTEN": "off", **env}
        )
        server = build_service(config).server
        unix_target = None
        if unix:
            unix_target = f"unix:{tmp_path / 'cachegate.sock'}"
            server.grpc_server.add_insecure_port(unix_target)
        server.start()
        started.append(server)
        assert server.health.wait_ready(10)
        return server, unix_target

    yield start
    for server in started:
        server.stop(grace=0)


def channel(target: str) -> grpc.Channel:
    # Its own connection, so a refused stream on another channel cannot affect it.
    return grpc.insecure_channel(target, options=(("grpc.use_local_subchannel_pool", 1),))


def stub(target: str) -> cache_pb2_grpc.CacheServiceStub:
    return cache_pb2_grpc.CacheServiceStub(channel(target))


def first_admitted(make: Callable[[], Stream], seconds: float = 5.0) -> Stream:
    """A stream from `make` that was served a batch, retrying refused ones for a while."""
    refused: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stream = make()
        try:
            stream.send()
        except grpc.RpcError as exc:
            refused.append(exc.code().name)
            time.sleep(0.05)
            continue
        assert set(refused) <= {"RESOURCE_EXHAUSTED"}, refused
        return stream
    raise AssertionError(f"no stream admitted within {seconds}s: {refused[-3:]}")


def test_an_idle_stream_ends_resource_exhausted_and_gives_its_slot_back(serve: Serve) -> None:
    server, _ = serve(
        {
            "CACHEGATE_STREAM_IDLE_SECONDS": str(IDLE),
            "CACHEGATE_MAX_STREAMS": "2",
            "CACHEGATE_STREAM_SHARE": "1",
        }
    )
    cache = stub(f"127.0.0.1:{server.port}")
    quiet = Stream(cache)  # sends nothing at all
    used = Stream(cache)
    assert len(used.send().outcomes) == 1  # then goes quiet too
    started = time.monotonic()
    errors = [quiet.error(), used.error()]
    waited = time.monotonic() - started
    for error in errors:
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "CACHEGATE_STREAM_IDLE_SECONDS" in (error.details() or "")
    assert waited < IDLE + SLACK, f"idle streams ended after {waited:.2f}s"
    # Both slots are free again: two new streams are admitted and served.
    fresh = [Stream(cache), Stream(cache)]
    for stream in fresh:
        assert len(stream.send().outcomes) == 1
        stream.close()


def test_a_stream_that_keeps_sending_stays_open(serve: Serve) -> None:
    server, _ = serve({"CACHEGATE_STREAM_IDLE_SECONDS": str(IDLE)})
    stream = Stream(stub(f"127.0.0.1:{server.port}"))
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 4 * IDLE:  # far past the timeout, a batch at a time
        assert len(stream.send().outcomes) == 1
        sent += 1
        time.sleep(IDLE / 3)
    assert sent >= 8
    stream._feed.put(None)  # a clean end: OK, no more replies
    assert list(stream._replies) == []
    assert stream.call.code() is grpc.StatusCode.OK


def test_the_idle_clock_stops_while_a_batch_is_served(
    serve: Serve, redis_server: RedisProcess
) -> None:
    server, _ = serve(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_SOCKET_TIMEOUT": "5",
            "CACHEGATE_STREAM_IDLE_SECONDS": str(IDLE),
        }
    )
    stream = Stream(stub(f"127.0.0.1:{server.port}"))
    assert len(stream.send().outcomes) == 1
    redis_server.pause()  # the next batch takes 4 idle timeouts to serve
    try:
        stream._feed.put(BATCH)
        time.sleep(4 * IDLE)
    finally:
        redis_server.resume()
    reply = next(stream._replies)
    assert list(reply.outcomes) == [pb.OUTCOME_NOT_FOUND]
    stream.close()


def test_one_caller_gets_its_share_and_another_peer_is_served(serve: Serve) -> None:
    # No tokens: a caller is an address. Loopback is one caller; the unix socket another.
    server, unix_target = serve(
        {"CACHEGATE_MAX_STREAMS": "4", "CACHEGATE_STREAM_SHARE": "0.5"}, unix=True
    )
    loopback = stub(f"127.0.0.1:{server.port}")
    mine = [Stream(loopback), Stream(stub(f"127.0.0.1:{server.port}"))]  # two connections
    for stream in mine:
        assert len(stream.send().outcomes) == 1
    refused = Stream(stub(f"127.0.0.1:{server.port}"))  # a third connection changes nothing
    error = refused.error()
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "CACHEGATE_STREAM_SHARE" in (error.details() or "")
    assert unix_target is not None
    others = [Stream(stub(unix_target)), Stream(stub(unix_target))]
    for stream in others:
        assert len(stream.send().outcomes) == 1
    # All four slots are taken now: the next stream meets the total limit.
    error = Stream(stub(unix_target)).error()
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "CACHEGATE_MAX_STREAMS" in (error.details() or "")
    mine[0].close()
    # A slot of the loopback caller's share came back (the server notices the cancel a
    # moment later: until then a new stream is refused for the share).
    late = first_admitted(lambda: Stream(stub(f"127.0.0.1:{server.port}")))
    for stream in (*mine[1:], *others, late):
        stream.close()


def test_with_tokens_the_share_is_per_tenant(serve: Serve, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ALICE} alice client\n{BOB} bob client\n")
    server, _ = serve(
        {
            "CACHEGATE_TOKENS_FILE": str(tokens),
            "CACHEGATE_MAX_STREAMS": "4",
            "CACHEGATE_STREAM_SHARE": "0.5",
        }
    )
    target = f"127.0.0.1:{server.port}"
    alice = [Stream(stub(target), ALICE) for _ in range(2)]
    for stream in alice:
        assert len(stream.send().outcomes) == 1
    error = Stream(stub(target), ALICE).error()
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "CACHEGATE_STREAM_SHARE" in (error.details() or "")
    assert "alice" in (error.details() or "")
    # Same address, another tenant: its own share.
    bob = [Stream(stub(target), BOB) for _ in range(2)]
    for stream in bob:
        assert len(stream.send().outcomes) == 1
    for stream in (*alice, *bob):
        stream.close()
