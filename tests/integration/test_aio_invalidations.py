"""Invalidations on the asyncio client, against real servers and real redis-servers:
AsyncCacheClient.invalidations(), and AsyncRedisCache's near cache following them on an
asyncio task (the sync side's tests: test_invalidations.py).

Writes are made with a separate redis-py connection (another program, as far as
cachegate can tell) or through cachegate by another client. No pytest-asyncio: each
test runs its coroutine with asyncio.run, as test_aio_client.py does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from cachegate.client import (
    CacheUnavailableError,
    Invalidation,
    NearCache,
    ResourceExhaustedError,
)
from cachegate.client.aio import AsyncCacheClient, AsyncInvalidationStream, AsyncRedisCache
from conftest import RunningServer, StartServer
from redisprocs import RedisProcess

# Loopback, a loaded test machine: drill 21 measures the real figure (milliseconds).
BOUND = 3.0


async def eventually(check: Callable[[], bool], within: float = BOUND, what: str = "") -> None:
    """Poll `check` in the loop (the feed's task runs between polls)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, f"not within {within}s: {what}"
        await asyncio.sleep(0.005)


async def next_event(stream: AsyncInvalidationStream) -> Invalidation:
    async with asyncio.timeout(BOUND):
        return await anext(stream)


async def keys_until(stream: AsyncInvalidationStream, key: str) -> list[str]:
    """Every key the stream reports, up to and including `key`."""
    heard: list[str] = []
    while key not in heard:
        event = await next_event(stream)
        heard.extend(event.keys)
    return heard


def held(cache: AsyncRedisCache, key: str) -> bool:
    assert cache.near_cache is not None
    return cache.near_cache.get(key) is not None


async def fill(cache: AsyncRedisCache, key: str, value: bytes) -> None:
    """Read `key` until the near cache keeps it: a read that raced the invalidation of
    the write before it is returned but not kept (see NearCache.get_or_load)."""
    start = time.monotonic()
    while True:
        assert await cache.get(key) == value
        if held(cache, key):
            return
        assert time.monotonic() - start < BOUND, f"{key} never kept"
        await asyncio.sleep(0.005)


def open_streams(server: RunningServer) -> int:
    return server.server.servicer.streams.open_streams()


# --- AsyncCacheClient.invalidations ------------------------------------------------------


def test_the_async_client_streams_invalidations_and_cancel_ends_them(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    """The sync stream's events; a filtered subscription; cancel() ends the iteration
    without an error and the server sees the stream end; and a stream holds no unary
    call slot (with one slot, a Get still goes through while two streams are open)."""
    writer = redis_server.client()

    async def main() -> None:
        async with AsyncCacheClient(redis_backed_server.target) as client:
            client.MAX_CONCURRENT_CALLS = 1  # this client's channel: one unary call at once
            every, watched = client.invalidations(), client.invalidations(keys=["only"])
            first = await next_event(every)
            assert first == Invalidation("reset", reason="subscribed", tracking=True)
            assert (await next_event(watched)).reason == "subscribed"
            assert await client.get("k", timeout=2) is None  # a slot is free
            for key in ("k", "other", "only"):
                writer.set(key, b"1")
            assert await keys_until(every, "only") == ["k", "other", "only"]
            assert await keys_until(watched, "only") == ["only"]
            every.cancel()
            async with asyncio.timeout(BOUND):
                assert [event async for event in every] == []  # ended, no error
            await eventually(lambda: open_streams(redis_backed_server) == 1, what="one left")
            await watched.aclose()
            await eventually(lambda: open_streams(redis_backed_server) == 0, what="none left")
            assert await client.get("k") == b"1"  # the channel stays open

    asyncio.run(main())


def test_the_async_stream_can_be_cancelled_from_another_thread(
    redis_backed_server: RunningServer,
) -> None:
    """cancel() from a thread other than the client's loop (a signal handler's thread, a
    sync caller) ends the iteration quietly and the server sees the stream end."""

    async def main() -> None:
        async with AsyncCacheClient(redis_backed_server.target) as client:
            stream = client.invalidations()
            assert (await next_event(stream)).reason == "subscribed"
            canceller = threading.Thread(target=stream.cancel)
            canceller.start()
            async with asyncio.timeout(BOUND):
                assert [event async for event in stream] == []  # ended, no error
            await asyncio.to_thread(canceller.join)
            await eventually(lambda: open_streams(redis_backed_server) == 0, what="its end")

    asyncio.run(main())


def test_the_async_stream_raises_the_sync_clients_errors(start_server: StartServer) -> None:
    """A stream refused for lack of slots raises ResourceExhaustedError, a server that
    stops ends it with CacheUnavailableError, and cancelling the task that awaits an
    event raises CancelledError there (the stream's own cancel() ends it quietly)."""
    server = start_server({"CACHEGATE_MAX_STREAMS": "1", "CACHEGATE_STREAM_SHARE": "1"})

    async def main() -> None:
        async with AsyncCacheClient(server.target, retries=False) as client:
            first = client.invalidations()
            assert (await next_event(first)).kind == "reset"
            with pytest.raises(ResourceExhaustedError, match="CACHEGATE_MAX_STREAMS"):
                await next_event(client.invalidations())
            waiting = asyncio.create_task(anext(first))
            await asyncio.sleep(0.1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await eventually(lambda: open_streams(server) == 0, what="the cancelled stream")
            second = client.invalidations()
            assert (await next_event(second)).kind == "reset"
            await asyncio.to_thread(server.service.stop, 1)
            with pytest.raises(CacheUnavailableError):
                await next_event(second)

    asyncio.run(main())


# --- AsyncRedisCache's near cache, followed on a task -------------------------------------


def test_the_near_cache_drops_what_changes_anywhere_and_close_ends_the_feed(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    """Made before the loop runs; the feed's task starts on the first call. A write by
    another program drops the key, a flush clears everything, and so does a killed
    tracking link; close() ends the task (nothing left pending) and the stream."""
    writer = redis_server.client()
    cache = AsyncRedisCache(redis_backed_server.target, near_cache=NearCache(maxsize=100, ttl=60.0))
    feed = cache.feed
    assert feed is not None
    assert not feed.running
    assert cache.near_cache is not None
    near = cache.near_cache

    async def main() -> None:
        assert await cache.get("k") is None
        assert feed.running
        assert await feed.wait_live(10), "no first reset"
        writer.set("k", b"v1")
        writer.set("j", b"j1")
        await fill(cache, "k", b"v1")
        await fill(cache, "j", b"j1")
        writer.set("k", b"v2")
        await eventually(lambda: not held(cache, "k"), what="a write by another program")
        assert held(cache, "j")  # only the key that changed
        assert await cache.get("k") == b"v2"

        resets = near.stats().resets
        writer.flushall()
        await eventually(lambda: not held(cache, "j") and not held(cache, "k"), what="FLUSHALL")
        assert near.stats().resets > resets

        writer.set("j", b"j2")
        await fill(cache, "j", b"j2")
        resets = near.stats().resets
        writer.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # the tracking link
        await eventually(lambda: not held(cache, "j"), what="tracking lost")
        assert near.stats().resets > resets
        await eventually(lambda: feed.live, 15, "tracking resumed")
        await fill(cache, "j", b"j2")
        writer.set("j", b"j3")
        await eventually(lambda: not held(cache, "j"), what="a write after tracking resumed")

        await cache.close()
        assert not feed.running
        # (grpc.aio keeps tasks of its own for a moment after a close: not ours to check)
        assert not [task for task in asyncio.all_tasks() if task.get_name() == "near-cache-feed"]
        await eventually(lambda: open_streams(redis_backed_server) == 0, what="stream ended")
        assert feed.subscriptions == 1

    asyncio.run(main())


def test_the_feed_subscribes_again_after_the_server_restarts(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    """The stream ends (the server stops): the near cache is cleared and not live; a
    server on the same port gets a new subscription, whose invalidations flow."""
    env = {"CACHEGATE_BACKEND": "redis", "REDIS_URL": redis_server.url}
    first = start_server(env)
    writer = redis_server.client()

    async def main() -> None:
        async with AsyncRedisCache(
            first.target, near_cache=NearCache(maxsize=100, ttl=60.0), timeout=2
        ) as cache:
            feed = cache.feed
            assert feed is not None
            writer.set("k", b"v1")
            await fill(cache, "k", b"v1")
            assert await feed.wait_live(10)
            await fill(cache, "k", b"v1")  # the first reset may have cleared it
            assert feed.subscriptions == 1
            await asyncio.to_thread(first.service.stop, 1)  # UNAVAILABLE, shutting down
            await eventually(lambda: not held(cache, "k") and not feed.live, what="cleared")
            second = await asyncio.to_thread(
                start_server, {**env, "CACHEGATE_LISTEN": f"127.0.0.1:{first.port}"}
            )
            assert second.port == first.port
            assert await feed.wait_live(15), "did not subscribe again"
            assert feed.subscriptions >= 2
            await fill(cache, "k", b"v1")
            writer.set("k", b"v2")
            await eventually(lambda: not held(cache, "k"), what="a write after resubscribing")
            assert await cache.get("k") == b"v2"

    asyncio.run(main())
