"""grpcio's asyncio server answering Get: the ceiling of a unary path without threads.

`scripts/aio_ceiling.py` runs it beside `scripts/grpc_floor.py` and cachegate to
measure what issue 15's lean unary path could reach if it left the thread pool: no
hand-off between grpc's completion-queue thread and a handler thread, no GIL passed
around a blocking socket call. Two modes:

- constant (no `--redis-port`): every Get gets one constant reply, as grpc_floor.py;
- Redis (`--redis-port`): each Get reads its key from Redis over one connection per
  process, kept by an asyncio protocol with hiredis's reader. The GETs that reach the
  event loop in one turn go out in one write (so they share a round trip: the
  auto-batching of issue 15 comes with the event loop), and replies come back in order.

A measuring tool, not a server: no breaker, no deadlines, no limits, no errors beyond
a lost connection. It listens on 127.0.0.1 only and stops by itself after --lifetime
seconds or on SIGTERM.

    python scripts/aio_floor.py --port 50051 --cpu 0 --redis-port 6379
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections import deque

import grpc
import hiredis

from cachegate.v1 import cache_pb2 as pb

REPLY = pb.GetResponse(found=True, value=b"v" * 32).SerializeToString()
MISS = pb.GetResponse(found=False).SerializeToString()


class RedisLink(asyncio.Protocol):
    """One Redis connection: GETs written once per event-loop turn, replies in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[bytes | None]] = deque()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        while self._waiting:
            self._waiting.popleft().set_exception(ConnectionError("Redis connection lost"))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def get(self, key: bytes) -> asyncio.Future[bytes | None]:
        if self._lost:
            raise ConnectionError("Redis connection lost")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._waiting.append(future)
        if not self._outgoing:
            loop.call_soon(self._flush)  # once per turn: the turn's GETs go together
        self._outgoing.append(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
        return future

    def _flush(self) -> None:
        assert self._transport is not None
        self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()


async def serve(port: int, redis_port: int | None, lifetime: float) -> None:
    link: RedisLink | None = None
    if redis_port is not None:
        loop = asyncio.get_running_loop()
        _, link = await loop.create_connection(RedisLink, "127.0.0.1", redis_port)

    async def get(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if link is None:
            return REPLY
        key = pb.GetRequest.FromString(request).key.encode()
        value = await link.get(key)
        if value is None:
            return MISS
        return pb.GetResponse(found=True, value=value).SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "cachegate.v1.CacheService",
        {"Get": grpc.unary_unary_rpc_method_handler(get)},  # bytes in, bytes out
    )
    server = grpc.aio.server(
        handlers=[handler],
        options=[("grpc.so_reuseport", 1)],  # on purpose: one process per CPU, like workers
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    with contextlib.suppress(TimeoutError):  # the lifetime is over
        await asyncio.wait_for(stopping.wait(), timeout=lifetime)
    await server.stop(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpu", type=int, help="pin to this CPU (as grpc_floor.py does)")
    parser.add_argument("--redis-port", type=int, help="read each Get's key from this Redis")
    parser.add_argument("--lifetime", type=float, default=900.0, help="seconds, then stop")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(serve(args.port, args.redis_port, args.lifetime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
