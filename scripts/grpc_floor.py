"""A bare grpcio server that answers every Get with one constant reply: grpcio's floor.

`make bench` runs it beside cachegate, with the same layout (one process per CPU,
pinned, sharing the port, 8 threads each) and the same h2load load. What it costs
per call is what grpcio's public server API costs on this machine before any cache
work is done: no Redis, no parsing, no counters. It tells how far a machine's
unary figures can go at all, and how much of cachegate's cost is its own.

    python scripts/grpc_floor.py --port 50051 --cpu 0      # stops on SIGTERM or --lifetime

It listens on 127.0.0.1 only and stops by itself after --lifetime seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from concurrent import futures
from types import FrameType

import grpc

from cachegate.v1 import cache_pb2 as pb

REPLY = pb.GetResponse(found=True, value=b"v" * 32).SerializeToString()


def get(request: bytes, context: grpc.ServicerContext) -> bytes:
    return REPLY


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpu", type=int, help="pin to this CPU (as cachegate's workers do)")
    parser.add_argument("--threads", type=int, default=8, help="as CACHEGATE_RPC_THREADS")
    parser.add_argument("--lifetime", type=float, default=900.0, help="seconds, then stop")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    handler = grpc.method_handlers_generic_handler(
        "cachegate.v1.CacheService",
        {"Get": grpc.unary_unary_rpc_method_handler(get)},  # bytes in, bytes out
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
