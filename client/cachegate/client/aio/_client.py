"""AsyncCacheClient: CacheClient's methods as coroutines, on one grpc.aio channel.

Requests, replies, channel options and the status-to-exception mapping are the sync
client's (`_channel`, `_messages`, `_errors`); this module only awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
import grpc.aio

from cachegate.client import _messages as messages
from cachegate.client._channel import ClientBase
from cachegate.client._errors import DeadlineExceededError, from_rpc_error
from cachegate.client._ops import CacheEntry, Operation, Result
from cachegate.client._wire import HEALTH_CHECK, HEALTH_WATCH
from cachegate.client.aio._closing import AsyncClosing
from cachegate.client.aio._invalidations import AsyncInvalidationStream
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc as pb_grpc
from cachegate.v1 import invalidation_pb2, invalidation_pb2_grpc

__all__ = ["AsyncCacheClient", "Batches"]

Resp = TypeVar("Resp")
Reply = TypeVar("Reply")
Item = TypeVar("Item")
Batches: TypeAlias = Iterable[Sequence[Operation]] | AsyncIterable[Sequence[Operation]]


@dataclass(frozen=True, slots=True)
class _Connection:
    """A grpc.aio channel and its callables, bound to the loop that opened them."""

    loop: asyncio.AbstractEventLoop
    channel: grpc.aio.Channel
    stub: pb_grpc.CacheServiceAsyncStub
    invalidations: invalidation_pb2_grpc.InvalidationServiceAsyncStub
    health_check: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
    health_watch: grpc.aio.UnaryStreamMultiCallable[bytes, bytes]
    slots: asyncio.Semaphore


class AsyncCacheClient(ClientBase[grpc.aio.Channel], AsyncClosing):
    """Get, set and delete through a cachegate server, from asyncio.

    >>> async with AsyncCacheClient("127.0.0.1:50051") as cache:   # doctest: +SKIP
    ...     await cache.set_ex("greeting", b"hello", ttl_seconds=60)
    ...     await cache.get("greeting")
    b'hello'

    Settings (target, timeout, credentials, token, retries, ...): see ClientBase.
    The channel opens on the first call, in the running loop, so a client can be
    made at import time; from then on it belongs to that loop (one client per loop).
    Cancelling a task cancels the RPC it awaits (the server sees CANCELLED).
    """

    # Unary calls in flight at once; more wait here, in order, within their deadline.
    # The server advertises 100 streams per connection and counts a stream until it
    # has freed the call, after the client saw it end: a burst above the limit gets
    # REFUSED_STREAM (UNAVAILABLE) that the channel's retries do not always absorb.
    # Below it, with room for Pipeline and Watch streams, a burst of any size queues.
    MAX_CONCURRENT_CALLS = 64

    _connection: _Connection | None = None

    # --- single keys ---------------------------------------------------------------

    async def get(
        self, key: str, *, timeout: float | None = None, stale_if_error: int = 0
    ) -> bytes | None:
        """The value, or None on a miss (an empty value comes back as b"").

        `stale_if_error`: as CacheClient.get (a stale value when Redis cannot answer).
        """
        request = messages.get_request(key, stale_if_error)
        return messages.found_value(await self._call(self._connect().stub.Get, request, timeout))

    async def get_entry(
        self, key: str, *, timeout: float | None = None, stale_if_error: int = 0
    ) -> CacheEntry | None:
        """As `get`, but the value comes with whether it is stale and its age; None on a miss."""
        request = messages.get_request(key, stale_if_error)
        return messages.entry_of(await self._call(self._connect().stub.Get, request, timeout))

    async def set_ex(
        self, key: str, value: bytes, ttl_seconds: int, *, timeout: float | None = None
    ) -> None:
        """Store `value` under `key` for `ttl_seconds` (> 0)."""
        request = pb.SetExRequest(key=key, value=value, ttl_seconds=ttl_seconds)
        await self._call(self._connect().stub.SetEx, request, timeout)

    async def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """True when the key existed."""
        stub = self._connect().stub
        return (await self._call(stub.Delete, pb.DeleteRequest(key=key), timeout)).deleted

    # --- batches -------------------------------------------------------------------

    async def pipeline(
        self,
        operations: Sequence[Operation],
        *,
        timeout: float | None = None,
        stale_if_error: int = 0,
    ) -> list[Result]:
        """Run one batch (one round trip); one Result per operation, in order.

        `stale_if_error`: as CacheClient.pipeline (see Result.stale).
        """
        replies = self.stream([operations], timeout=timeout, stale_if_error=stale_if_error)
        async with contextlib.aclosing(replies):
            async for results in replies:
                return results
        raise AssertionError("the server answered a batch with nothing")  # pragma: no cover

    def stream(
        self, batches: Batches, *, timeout: float | None = None, stale_if_error: int = 0
    ) -> AsyncGenerator[list[Result], None]:
        """Send batches on one Pipeline stream; yields each batch's results as they come.

        `batches` may be a plain or an async iterable (a plain one is read in the
        loop: it must not block). `timeout` bounds the whole stream. Leaving the
        `async for` early, or cancelling the task, cancels the stream.
        `stale_if_error` applies to every batch (see `pipeline`).
        """
        call = self._connect().stub.Pipeline(
            _requests(batches, stale_if_error),
            timeout=self._deadline(timeout),
            metadata=self._metadata,
        )
        return _relay(call, messages.decode_batch)

    # --- invalidations ---------------------------------------------------------------

    def invalidations(
        self,
        keys: Sequence[str] = (),
        prefixes: Sequence[str] = (),
        *,
        timeout: float | None = None,
    ) -> AsyncInvalidationStream:
        """Subscribe to changes of `keys` and keys starting with `prefixes` (neither:
        every key), as CacheClient.invalidations: no deadline unless `timeout` is given.
        A NearCache given to AsyncRedisCache subscribes on its own (see aio/_feed).

        The stream takes no MAX_CONCURRENT_CALLS slot: it lasts until cancelled, and a
        slot held that long would be one fewer for unary calls, for good.
        """
        request = invalidation_pb2.SubscribeRequest(keys=keys, prefixes=prefixes)
        call = self._connect().invalidations.Subscribe(
            request, timeout=timeout, metadata=self._metadata
        )
        return AsyncInvalidationStream(call)

    # --- operations ----------------------------------------------------------------

    async def stats(self, *, timeout: float | None = None) -> pb.StatsResponse:
        """The server's pool, breaker, call and Redis figures (see cache.proto)."""
        return await self._call(self._connect().stub.Stats, pb.StatsRequest(), timeout)

    async def health(
        self, service: str = "", *, timeout: float | None = None
    ) -> messages.HealthStatus:
        """grpc.health.v1 Check: "" is the process, SERVICE_NAME the cache (follows the breaker)."""
        check = self._connect().health_check
        return messages.health_status(
            await self._call(check, messages.encode_health_request(service), timeout)
        )

    def watch_health(
        self, service: str = "", *, timeout: float | None = None
    ) -> AsyncGenerator[messages.HealthStatus, None]:
        """grpc.health.v1 Watch: the current status, then every change (until `timeout`)."""
        call = self._connect().health_watch(
            messages.encode_health_request(service), timeout=timeout, metadata=self._metadata
        )
        return _relay(call, messages.health_status)

    async def close(self) -> None:
        """Close the channel (if this client opened it); calls in flight are cancelled."""
        if self._connection is not None and self._own_channel:
            await self._connection.channel.close(None)

    def _connect(self) -> _Connection:
        """The connection of the running loop's client, opened on first use.

        grpc.aio binds a channel to the loop that is running when it is made; made
        any earlier (at import, before asyncio.run) it would bind to another loop.
        """
        loop = asyncio.get_running_loop()
        connection = self._connection
        if connection is None:
            channel = self._open_channel(grpc.aio.insecure_channel, grpc.aio.secure_channel)
            connection = self._connection = _Connection(
                loop,
                channel,
                pb_grpc.CacheServiceStub(channel),  # typed as the AsyncStub for aio
                invalidation_pb2_grpc.InvalidationServiceStub(channel),  # likewise
                # No (de)serializers: the health messages travel as bytes (see _wire).
                channel.unary_unary(HEALTH_CHECK, None, None),
                channel.unary_stream(HEALTH_WATCH, None, None),
                asyncio.Semaphore(self.MAX_CONCURRENT_CALLS),
            )
        elif connection.loop is not loop:
            raise RuntimeError(
                "this AsyncCacheClient was first used in another event loop; "
                "make one client per loop"
            )
        return connection

    async def _call(
        self,
        method: Callable[..., Awaitable[Resp]],
        request: object,
        timeout: float | None,
    ) -> Resp:
        """One unary call, within MAX_CONCURRENT_CALLS, all within the call's deadline.

        Cancelling the task that awaits here cancels the grpc.aio call, and with it
        the RPC on the server (grpc sends RST_STREAM).
        """
        slots = self._connect().slots
        deadline = self._deadline(timeout)
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async with asyncio.timeout(deadline):
                await slots.acquire()
        except TimeoutError:
            raise DeadlineExceededError(
                f"no call slot came free within the {deadline:g}s deadline "
                f"({self.MAX_CONCURRENT_CALLS} calls in flight on this client)",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from None
        try:
            left = deadline - (loop.time() - start)
            return await method(request, timeout=left, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            slots.release()


def _requests(
    batches: Batches, stale_if_error: int
) -> AsyncIterator[pb.PipelineRequest] | Iterator[pb.PipelineRequest]:
    if isinstance(batches, AsyncIterable):
        return (messages.encode_batch(batch, stale_if_error) async for batch in batches)
    return (messages.encode_batch(batch, stale_if_error) for batch in batches)


async def _relay(
    call: grpc.aio.UnaryStreamCall[Any, Reply] | grpc.aio.StreamStreamCall[Any, Reply],
    decode: Callable[[Reply], Item],
) -> AsyncGenerator[Item, None]:
    """A streaming call's replies, decoded; our exceptions; the call cancelled when the
    consumer stops early, or its task is cancelled."""
    try:
        async for reply in call:
            yield decode(reply)
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc
    finally:
        call.cancel()
