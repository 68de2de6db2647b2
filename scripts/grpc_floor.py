"""A bare grpcio server that answers every Get with one constant reply: grpcio's floor.

`make bench` runs it beside cachegate, with the same layout (one process per CPU,
pinned, sharing the port, 8 threads each) and the same h2load load. What it costs
per call is what grpcio's public server API costs on this machine before any cache
work is done: no Redis, no parsing, no counters. It tells how far a machine's
unary figures can go at all, and how much of cachegate's cost is its own.

    python scripts/grpc_floor.py --port 50051 --cpu 0      # stops on SIGTERM or --lifetime

With `--redis-port`, each Get reads its key from Redis instead: the leanest thread-pool
Get there is (issue 15's reference for a lean path), with one redis-py connection per
handler thread (hiredis parses the reply), no pool checkout, no breaker, no deadline,
no counters. What it costs over the constant reply is what a Redis round trip costs a
thread-pool server here, before any of cachegate's guarantees.

It serves `Pipeline` too, for batches of gets only: each request message is answered
with one reply message. Without `--redis-port` the reply is a constant (every value
the bench stores): what grpcio costs per stream message. With it, the keys are read
with cachegate's own wire parse and its bounded read (the length-first script, one
EVALSHA per batch, as issue 12 requires at the default limits), with none of the
rest: the leanest Pipeline of gets on Redis there is.

It listens on 127.0.0.1 only and stops by itself after --lifetime seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from types import FrameType

import grpc
import hiredis
import redis

from cachegate.pool._bounded import BOUNDED_READ_LUA, LUA_COPY_BYTES, script_sizes
from cachegate.rpc._fastpath import get_only_keys
from cachegate.v1 import cache_pb2 as pb

VALUE = b"v" * 32  # what `make bench` stores
REPLY = pb.GetResponse(found=True, value=VALUE).SerializeToString()
Handler = Callable[[bytes, grpc.ServicerContext], bytes]
StreamHandler = Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[bytes]]


def get(request: bytes, context: grpc.ServicerContext) -> bytes:
    return REPLY


def redis_get(port: int) -> Handler:
    """A Get handler that reads the key from Redis on its thread's own connection."""
    local = threading.local()

    def get(request: bytes, context: grpc.ServicerContext) -> bytes:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = redis.Connection(host="127.0.0.1", port=port)
        conn.send_command("GET", pb.GetRequest.FromString(request).key, check_health=False)
        value = conn.read_response()
        if value is None:
            return pb.GetResponse(found=False).SerializeToString()
        return pb.GetResponse(found=True, value=value).SerializeToString()

    return get


def pipeline(port: int | None) -> StreamHandler:
    """A Pipeline handler for batches of gets: a constant reply, or one bounded read."""
    local = threading.local()
    constant: dict[bytes, bytes] = {}  # request -> its reply (the bench sends one per batch)

    def reply_of(values: list[bytes]) -> bytes:
        outcomes = [pb.OUTCOME_VALUE] * len(values)
        return pb.PipelineResponse(outcomes=outcomes, values=values).SerializeToString()

    def read(data: bytes) -> bytes:
        keys = get_only_keys(data, 125)
        if keys is None:
            raise ValueError("this floor serves batches of gets of short keys only")
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = redis.Connection(host="127.0.0.1", port=port)
            conn.send_command("SCRIPT", "LOAD", BOUNDED_READ_LUA)
            local.sha = conn.read_response()
        command = ("EVALSHA", local.sha, len(keys), *keys, LUA_COPY_BYTES)
        conn.send_packed_command([hiredis.pack_command(command)], check_health=False)
        values, _, are_values = script_sizes(conn.read_response())
        if not are_values:
            raise ValueError("the batch's values do not fit the bound")
        return reply_of(values)

    def handle(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for data in requests:
            if port is not None:
                yield read(data)
                continue
            reply = constant.get(data)
            if reply is None:
                count = len(pb.PipelineRequest.FromString(data).operations)
                reply = constant.setdefault(data, reply_of([VALUE] * count))
            yield reply

    return handle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpu", type=int, help="pin to this CPU (as cachegate's workers do)")
    parser.add_argument("--threads", type=int, default=8, help="as CACHEGATE_RPC_THREADS")
    parser.add_argument("--lifetime", type=float, default=900.0, help="seconds, then stop")
    parser.add_argument("--redis-port", type=int, help="read each key from this Redis")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    handler = grpc.method_handlers_generic_handler(
        "cachegate.v1.CacheService",
        {  # bytes in, bytes out
            "Get": grpc.unary_unary_rpc_method_handler(
                get if args.redis_port is None else redis_get(args.redis_port)
            ),
            "Pipeline": grpc.stream_stream_rpc_method_handler(pipeline(args.redis_port)),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(args.threads),
        handlers=[handler],
        options=[("grpc.so_reuseport", 1)],  # on purpose: one process per CPU, like workers
    )
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stop(0)

    signal.signal(signal.SIGTERM, stop)
    server.wait_for_termination(timeout=args.lifetime)
    server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
