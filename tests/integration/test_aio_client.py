"""The asyncio client against real servers and real redis-servers: AsyncCacheClient,
AsyncRedisCache, many concurrent callers in one loop, errors, deadlines, and a cancelled
task cancelling its RPC on the server.

No pytest-asyncio: each test runs its coroutine with asyncio.run, so every call is made
inside a running event loop, as an application's would be.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from cachegate.client import (
    CacheClient,
    CacheClientError,
    CacheEntry,
    CacheUnavailableError,
    DeadlineExceededError,
    Delete,
    FailedPreconditionError,
    Get,
    InvalidRequestError,
    NearCache,
    Operation,
    Result,
    SetEx,
)
from cachegate.client._legacy import HEALTH_KEYS
from cachegate.client.aio import AsyncCacheClient, AsyncRedisCache
from conftest import RunningServer, StartServer
from redisprocs import RedisProcess, free_port, wait_until
from staleness import ALLOW, stale_answers, stale_env

TASKS = 200


def redis_env(redis: RedisProcess, **extra: str) -> dict[str, str]:
    return {
        "CACHEGATE_BACKEND": "redis",
        "REDIS_URL": redis.url,
        "REDIS_RETRY_ATTEMPTS": "0",
        **extra,
    }


# --- concurrency, every method --------------------------------------------------------


def test_many_concurrent_callers_each_see_their_own_value(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    """200 tasks on one client and one channel, all in flight at once: each writes its
    own value, reads it back, deletes it; every answer belongs to its own caller."""

    async def caller(client: AsyncCacheClient, n: int) -> tuple[bytes | None, bool, bytes | None]:
        key, value = f"aio:many:{n}", b"value-%d" % n
        await client.set_ex(key, value, 60)
        got = await client.get(key)
        if n % 2:  # half keep their key, to be found in Redis itself below
            return got, True, await client.get(key)
        return got, await client.delete(key), await client.get(key)

    async def main() -> list[tuple[bytes | None, bool, bytes | None]]:
        async with AsyncCacheClient(redis_backed_server.target, timeout=10) as client:
            return await asyncio.gather(*(caller(client, n) for n in range(TASKS)))

    results = asyncio.run(main())
    for n, (got, deleted, after) in enumerate(results):
        assert got == b"value-%d" % n
        assert deleted is True
        assert after == (b"value-%d" % n if n % 2 else None)
    redis = redis_server.client()
    assert redis.get("aio:many:1") == b"value-1"  # really in Redis
    assert redis.get("aio:many:0") is None


def test_every_method_of_the_async_client(memory_server: RunningServer) -> None:
    async def batches() -> AsyncIterator[list[Operation]]:
        for i in range(20):
            yield [SetEx(f"s{i}", b"%d" % i, 60), Get(f"s{i}")]
            await asyncio.sleep(0)

    async def main() -> None:
        async with AsyncCacheClient(memory_server.target) as client:
            assert await client.get("k") is None
            await client.set_ex("k", b"", 60)
            assert await client.get("k") == b""  # an empty value is not a miss
            assert await client.delete("k") is True
            assert await client.delete("k") is False
            results = await client.pipeline(
                [SetEx("a", b"1", 60), Get("a"), Get("missing"), SetEx("b", b"x", 0), Delete("a")]
            )
            assert [r.outcome for r in results] == ["ok", "value", "not_found", "error", "ok"]
            assert results[1] == Result("value", value=b"1")
            assert isinstance(results[3].error, InvalidRequestError)
            # A stream fed by an async generator, and one fed by a plain iterable.
            got = [batch[1].value async for batch in client.stream(batches())]
            assert got == [b"%d" % i for i in range(20)]
            plain = [[Get(f"s{i}")] for i in range(3)]
            assert [b[0].value async for b in client.stream(plain)] == [b"0", b"1", b"2"]
            stats = await client.stats()
            assert stats.backend == "memory"
            assert stats.calls.hits_total >= 24
            assert await client.health() == "SERVING"
            assert await client.health("cachegate.v1.CacheService") == "SERVING"
            watch = client.watch_health("cachegate.v1.CacheService", timeout=5)
            assert await anext(watch) == "SERVING"
            await watch.aclose()
            with pytest.raises(CacheClientError) as caught:
                await client.health("no.such.Service")
            assert caught.value.code is grpc.StatusCode.NOT_FOUND

    asyncio.run(main())


def test_a_client_made_before_the_loop_opens_its_channel_in_it(
    memory_server: RunningServer,
) -> None:
    """Made at import time (as legacy code makes its RedisCache), used in asyncio.run;
    a second loop gets a clear error instead of a channel bound to a dead loop."""
    client = AsyncCacheClient(memory_server.target)

    async def use() -> bytes | None:
        await client.set_ex("early", b"bird", 60)
        return await client.get("early")

    assert asyncio.run(use()) == b"bird"
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(use())


# --- errors and deadlines: the sync client's exceptions ---------------------------------


async def async_error(call: Awaitable[object]) -> CacheClientError:
    try:
        await call
    except CacheClientError as exc:
        return exc
    raise AssertionError("the call did not fail")


def sync_error(call: Callable[[], object]) -> CacheClientError:
    try:
        call()
    except CacheClientError as exc:
        return exc
    raise AssertionError("the call did not fail")


def test_errors_are_the_sync_clients_exceptions(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    target = redis_backed_server.target
    redis_server.client().lpush("a:list", b"x")  # a key of another type: WRONGTYPE
    sync = CacheClient(target)

    async def main() -> list[tuple[CacheClientError, CacheClientError]]:
        async with AsyncCacheClient(target) as client:
            return [
                (await async_error(client.get("")), sync_error(lambda: sync.get(""))),
                (
                    await async_error(client.set_ex("k", b"v", 0)),
                    sync_error(lambda: sync.set_ex("k", b"v", 0)),
                ),
                (await async_error(client.get("a:list")), sync_error(lambda: sync.get("a:list"))),
            ]

    try:
        pairs = asyncio.run(main())
    finally:
        sync.close()
    expected = [InvalidRequestError, InvalidRequestError, FailedPreconditionError]
    for (from_async, from_sync), kind in zip(pairs, expected, strict=True):
        assert type(from_async) is type(from_sync) is kind
        assert from_async.code is from_sync.code
        assert str(from_async) == str(from_sync)
    assert isinstance(pairs[0][0], ValueError)
    assert "ttl_seconds" in str(pairs[1][0])


def test_a_deadline_raises_deadline_exceeded(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    async def main() -> tuple[CacheClientError, float, CacheClientError]:
        async with AsyncCacheClient(redis_backed_server.target) as client:
            assert await client.get("k") is None  # connected, Redis answers
            redis_server.pause()
            try:
                start = time.monotonic()
                late = await async_error(client.get("k", timeout=0.2))
                elapsed = time.monotonic() - start
                stream_late = await async_error(client.pipeline([Get("k")], timeout=0.2))
            finally:
                redis_server.resume()
            return late, elapsed, stream_late

    late, elapsed, stream_late = asyncio.run(main())
    assert isinstance(late, DeadlineExceededError)
    assert isinstance(late, TimeoutError)
    assert elapsed < 2  # the deadline, not the server's socket timeout or a retry
    assert isinstance(stream_late, DeadlineExceededError)


def test_breaker_open_is_connection_error_with_retry_after(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    async def main() -> CacheClientError:
        async with AsyncCacheClient(redis_backed_server.target, retries=False) as client:
            redis_server.kill()
            for _ in range(3):  # REDIS_FAILURE_THRESHOLD
                assert isinstance(await async_error(client.get("k")), CacheUnavailableError)
            return await async_error(client.get("k"))

    refused = asyncio.run(main())
    assert isinstance(refused, CacheUnavailableError)
    assert isinstance(refused, ConnectionError)
    assert refused.retry_after is not None
    assert 0 < refused.retry_after <= 1.0


def test_the_channel_retry_policy_sits_out_a_short_open_breaker(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    """The service config's retry policy (UNAVAILABLE, idempotent RPCs) holds on grpc.aio."""
    server = start_server(
        redis_env(redis_server, REDIS_FAILURE_THRESHOLD="1", REDIS_RECOVERY_TIMEOUT="0.3")
    )

    async def main() -> tuple[CacheClientError, bytes | None]:
        async with AsyncCacheClient(server.target) as client:
            redis_server.kill()
            opened = await async_error(client.get("k"))
            redis_server.restart()
            return opened, await client.get("k", timeout=10)

    opened, after = asyncio.run(main())
    assert isinstance(opened, CacheUnavailableError)
    assert after is None  # retried after the pushback, reached the restarted Redis


# --- AsyncRedisCache: the guide's API as coroutines ---------------------------------------


def test_async_redis_cache_keeps_the_guides_api(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    now = [0.0]
    near = NearCache(maxsize=10, ttl=5.0, clock=lambda: now[0])

    async def main() -> tuple[list[Any], dict[str, Any]]:
        async with (
            AsyncRedisCache(redis_backed_server.target) as raw,
            AsyncRedisCache(redis_backed_server.target, decode_responses=True) as text,
            # Without the invalidation feed, the TTL alone bounds staleness (the feed's
            # own tests are in test_aio_invalidations.py).
            AsyncRedisCache(
                redis_backed_server.target, near_cache=near, invalidations=False
            ) as near_cached,
            AsyncCacheClient(redis_backed_server.target) as other,
        ):
            assert await raw.set("user:1", "alice") is True
            await raw.set("n", 42)
            with pytest.raises(TypeError, match="bool"):
                await raw.set("x", True)
            seen = [await raw.get("user:1"), await text.get("user:1"), await text.get("n")]
            seen.append(await raw.get("nobody"))
            await near_cached.set("k", b"v1")
            await other.set_ex("k", b"v2", 60)  # another writer: not seen within the bound
            seen.append(await near_cached.get("k"))
            now[0] = 5.1
            seen.append(await near_cached.get("k"))
            seen.append(await near_cached.delete("k"))
            seen.append(await near_cached.get("k"))
            return seen, await raw.health_check()

    seen, health = asyncio.run(main())
    assert seen == [b"alice", "alice", "42", None, b"v1", b"v2", True, None]
    assert 0 < redis_server.client().ttl("user:1") <= 3600  # the guide's default TTL
    assert list(health) == list(HEALTH_KEYS)
    assert health["healthy"] is True
    assert health["backend"] == "redis"
    assert health["circuit_state"] == "closed"
    assert health["version"] == redis_server.client().info("server")["redis_version"]


def test_async_redis_cache_unreachable_is_connection_error_and_unhealthy() -> None:
    async def main() -> tuple[Any, dict[str, Any]]:
        async with AsyncRedisCache(f"127.0.0.1:{free_port()}", timeout=1) as cache:
            try:
                result = await cache.get("key")
            except ConnectionError:  # the guide's handler
                result = "handled"
            return result, await cache.health_check()

    result, health = asyncio.run(main())
    assert result == "handled"
    assert list(health) == list(HEALTH_KEYS)
    assert health["healthy"] is False
    assert "UNAVAILABLE" in health["error"]


# --- stale-if-error: the allowance and the stale answers, awaited ------------------------


def test_the_async_client_gets_stale_answers_with_their_age_while_redis_is_down(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    """Many tasks at once read keys the worker holds, after Redis was killed: each answer
    is the written value, marked stale with an age; a caller without an allowance gets
    UNAVAILABLE, and AsyncRedisCache keeps a stale value out of its near cache."""
    server = start_server(stale_env(redis_server))
    keys = [f"aio:stale:{n}" for n in range(TASKS // 4)]
    near = NearCache(maxsize=100, ttl=60.0)

    async def main() -> None:
        started = time.monotonic()
        async with (
            AsyncCacheClient(server.target, retries=False, timeout=3) as client,
            AsyncRedisCache(
                server.target, near_cache=near, stale_if_error=ALLOW, timeout=3
            ) as legacy,
        ):
            await asyncio.gather(*(client.set_ex(key, key.encode(), 600) for key in keys))
            redis_server.client().set("aio:stale:learned", b"direct", ex=600)
            assert await client.get_entry(keys[0], stale_if_error=ALLOW) == CacheEntry(
                keys[0].encode(), stale=False, age_seconds=0.0
            )
            assert await client.get("aio:stale:learned", stale_if_error=ALLOW) == b"direct"
            assert stale_answers(server) == 0  # never used while Redis answers
            redis_server.kill()
            await asyncio.sleep(0.1)  # the copies age

            refused = await async_error(client.get(keys[0]))  # no allowance: the error
            assert isinstance(refused, CacheUnavailableError)
            entries = await asyncio.gather(
                *(client.get_entry(key, stale_if_error=ALLOW) for key in keys)
            )
            elapsed = time.monotonic() - started
            for key, entry in zip(keys, entries, strict=True):
                assert entry is not None, f"{key}: a stale answer is never a miss"
                assert entry.value == key.encode()
                assert entry.stale, f"{key}: Redis is down, yet the answer is not stale"
                assert 0 < entry.age_seconds <= elapsed
            learned = await client.get_entry("aio:stale:learned", stale_if_error=ALLOW)
            assert learned is not None
            assert (learned.value, learned.stale) == (b"direct", True)

            batch = await client.pipeline([Get(keys[0]), Get("never-seen")], stale_if_error=ALLOW)
            assert (batch[0].value, batch[0].stale) == (keys[0].encode(), True)
            assert 0 < batch[0].age_seconds <= time.monotonic() - started
            assert isinstance(batch[1].error, CacheUnavailableError)
            streamed = [r async for r in client.stream([[Get(keys[1])]], stale_if_error=ALLOW)]
            assert [(r.value, r.stale) for r in streamed[0]] == [(keys[1].encode(), True)]

            assert await legacy.get(keys[2]) == keys[2].encode()
            assert near.get(keys[2]) is None  # stale: it would outlive its allowance
        assert stale_answers(server) >= len(keys) + 4

    asyncio.run(main())


# --- a cancelled task cancels its RPC, as the server sees it -------------------------------


class Observer:
    """An RpcObserver (the servicer's metrics hook) that keeps each (method, code)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handled: list[tuple[str, grpc.StatusCode]] = []

    def started(self, method: str) -> None:
        pass

    def handled(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        with self._lock:
            self._handled.append((method, code))

    def codes(self, method: str) -> list[grpc.StatusCode]:
        with self._lock:
            return [code for name, code in self._handled if name == method]


def test_a_cancelled_task_cancels_its_pipeline_stream(start_server: StartServer) -> None:
    """The task waits for a batch's reply while the server waits for the next batch;
    cancelling the task ends the stream on the server, and so does closing the stream
    early.

    The server counts such a stream CANCELLED, or OK when grpc's sync server hands the
    handler the end of the requests (the reset's first effect) before it learns of the
    cancel (see rpc/_observe.py): never UNKNOWN, and never a stream left open."""
    observer = Observer()
    server = start_server(observer=observer)

    async def main() -> None:
        never = asyncio.Event()

        async def batches() -> AsyncIterator[list[Operation]]:
            yield [SetEx("stream:k", b"v", 60), Get("stream:k")]
            await never.wait()  # the second batch never comes
            yield []  # pragma: no cover

        async def consume(client: AsyncCacheClient, first: asyncio.Event) -> None:
            async for _results in client.stream(batches(), timeout=60):
                first.set()

        async with AsyncCacheClient(server.target) as client:
            first = asyncio.Event()
            task = asyncio.create_task(consume(client, first))
            await asyncio.wait_for(first.wait(), 10)
            assert observer.codes("/cachegate.v1.CacheService/Pipeline") == []  # open on the server
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.to_thread(
                wait_until,
                lambda: observer.codes("/cachegate.v1.CacheService/Pipeline") or None,
                timeout=10,
                what="the server to see the stream end",
            )
            # A consumer that closes the stream early (no task cancelled) ends it too.
            replies = client.stream(batches(), timeout=60)
            assert (await anext(replies))[1].value == b"v"
            await replies.aclose()
            await asyncio.to_thread(
                wait_until,
                lambda: observer.codes("/cachegate.v1.CacheService/Pipeline")[1:] or None,
                timeout=10,
                what="the server to see the closed stream end",
            )
            assert await client.get("stream:k") == b"v"  # the channel itself stays open

    asyncio.run(main())
    codes = observer.codes("/cachegate.v1.CacheService/Pipeline")
    assert len(codes) == 2
    assert set(codes) <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.OK}


class CallWatch(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Keeps each Get's server-side context, and whether its handler has returned."""

    def __init__(self) -> None:
        self.contexts: list[grpc.ServicerContext] = []
        self.returned = threading.Event()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.endswith("/Get"):
            return handler
        behavior = handler.unary_unary

        def watched(request: Any, context: grpc.ServicerContext) -> Any:
            self.contexts.append(context)
            try:
                return behavior(request, context)
            finally:
                self.returned.set()

        return handler._replace(unary_unary=watched)


def test_a_cancelled_task_cancels_its_unary_call(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    """A Get stuck on a SIGSTOPped Redis (the pool waits up to its socket timeout, 5 s):
    cancelling the awaiting task makes the server's call inactive at once, while its
    handler is still blocked, long before the call's 30 s deadline."""
    watch = CallWatch()
    server = start_server(redis_env(redis_server, REDIS_SOCKET_TIMEOUT="5"), interceptors=[watch])

    async def main() -> float:
        async with AsyncCacheClient(server.target) as client:
            assert await client.get("warm") is None
            watch.contexts.clear()
            watch.returned.clear()
            redis_server.pause()
            task = asyncio.create_task(client.get("stuck", timeout=30))
            await asyncio.to_thread(
                wait_until,
                lambda: watch.contexts or None,
                timeout=10,
                what="the Get to reach the server",
            )
            context = watch.contexts[0]
            await asyncio.sleep(0.2)
            assert context.is_active()  # in flight, blocked on Redis
            cancelled_at = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.to_thread(
                wait_until,
                lambda: (not context.is_active()) or None,
                timeout=3,
                what="the server to see the Get cancelled",
                interval=0.01,
            )
            seen_after = time.monotonic() - cancelled_at
            assert not watch.returned.is_set()  # the handler is still waiting for Redis
            return seen_after

    try:
        seen_after = asyncio.run(main())
    finally:
        redis_server.resume()
    assert seen_after < 3
    assert watch.returned.wait(10)  # and it does finish once Redis answers
