"""How near grpcio's floor a unary Get could come without the thread pool (issue 15).

Six servers answer the same h2load load (Get of one 32-byte value, c=64 by default),
one after another in each round, with one process per CPU, pinned and sharing the
port, as `make bench` runs them:

- `grpcio-floor`: scripts/grpc_floor.py, grpcio's thread-pool server with a constant
  reply (`make bench`'s floor, the reference of every ratio);
- `aio-floor`: scripts/aio_floor.py, grpcio's asyncio server with the same constant reply;
- `aio-redis`: scripts/aio_floor.py reading each key from Redis over one asyncio
  connection per process (the GETs of one event-loop turn share a round trip);
- `floor-redis`, `floor-redis-2t`: scripts/grpc_floor.py reading each key from Redis on
  a connection of each handler thread's own (8 threads, as the floor; then 2): the
  leanest thread-pool Get on Redis there is;
- `cachegate`: cachegate-server on the same Redis.

Each round prints its records and each server's CPU per call and calls/s as ratios to
the floor of the same round; the end prints the medians over the rounds. Every server
is asked once before and once after its load whether Get returns the value, and
cachegate's own metrics must count every call OK.

    .venv/bin/python scripts/aio_ceiling.py --rounds 3

Everything listens on 127.0.0.1; every load is bounded by its count of calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # redisprocs: real redis-server processes
sys.path.insert(0, str(ROOT / "scripts"))

import redis  # noqa: E402

from bench import (  # noqa: E402
    VALUE,
    Cachegate,
    FloorServer,
    Record,
    RedisCounts,
    check_value,
    grpc_body,
    h2load,
    h2load_record,
    start_cachegate,
    start_script,
    table,
)
from cachegate.v1 import cache_pb2 as pb  # noqa: E402
from redisprocs import start_standalone  # noqa: E402

KEY = "k7"
Server = FloorServer | Cachegate


def measure(
    name: str,
    server: Server,
    counter: redis.Redis | None,
    folder: Path,
    concurrency: int,
    requests: int,
) -> Record:
    """One h2load run of Gets against `server`, checked before and after."""
    body = grpc_body(pb.GetRequest(key=KEY))
    check_value(server.target)
    h2load(server, "Get", body, 8, 2000, folder)  # warm: threads started, connections made
    handled = server.handled() if isinstance(server, Cachegate) else {}
    before = RedisCounts.read(counter) if counter is not None else None
    rate, latencies, cpu = h2load(server, "Get", body, concurrency, requests, folder)
    after = RedisCounts.read(counter) if counter is not None else None
    check_value(server.target)
    if isinstance(server, Cachegate):
        ok = server.handled().get(("Get", "OK"), 0) - handled.get(("Get", "OK"), 0)
        if ok < len(latencies):  # the checks after the load count too
            raise AssertionError(f"cachegate: {len(latencies)} Gets but {ok} answered OK")
    record = h2load_record(name, concurrency, rate, latencies, cpu, f"{server.target}")
    if before is not None and after is not None:
        # The check after the load is one Get more than the load's.
        before.fill(record, after, len(latencies) + 1)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="leave every process free to run on any CPU (cachegate's default; `make bench` pins)",
    )
    args = parser.parse_args()
    ratios: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="cachegate-aio-ceiling-") as scratch:
        folder = Path(scratch)
        redis_server = start_standalone(folder / "redis")
        try:
            redis_server.client().set(KEY, VALUE)
            port, counter = redis_server.port, redis_server.client()
            starters: list[tuple[str, redis.Redis | None, Callable[[], Server]]] = [
                (
                    "grpcio-floor",
                    None,
                    lambda: start_script("grpc_floor.py", args.workers, pin=args.pin),
                ),
                (
                    "aio-floor",
                    None,
                    lambda: start_script("aio_floor.py", args.workers, pin=args.pin),
                ),
                (
                    "aio-redis",
                    counter,
                    lambda: start_script(
                        "aio_floor.py", args.workers, "--redis-port", str(port), pin=args.pin
                    ),
                ),
                (
                    "floor-redis",
                    counter,
                    lambda: start_script(
                        "grpc_floor.py", args.workers, "--redis-port", str(port), pin=args.pin
                    ),
                ),
                (
                    "floor-redis-2t",
                    counter,
                    lambda: start_script(
                        "grpc_floor.py",
                        args.workers,
                        "--redis-port",
                        str(port),
                        "--threads",
                        "2",
                        pin=args.pin,
                    ),
                ),
                (
                    "cachegate",
                    counter,
                    lambda: start_cachegate(
                        redis_server.url, args.workers, CACHEGATE_PIN_CPUS=str(int(args.pin))
                    ),
                ),
            ]
            for round_number in range(1, args.rounds + 1):
                records = []
                for name, counted, start in starters:
                    server = start()
                    try:
                        records.append(
                            measure(name, server, counted, folder, args.concurrency, args.requests)
                        )
                    finally:
                        server.stop()
                floor = records[0]
                assert floor.server_cpu_us_per_op is not None
                pinned = "pinned" if args.pin else "not pinned"
                print(f"round {round_number}, {args.workers} process(es) each, {pinned}")
                print(table(records))
                for record in records:
                    assert record.server_cpu_us_per_op is not None
                    cpu = record.server_cpu_us_per_op / floor.server_cpu_us_per_op
                    rate = record.ops_per_s / floor.ops_per_s
                    ratios.setdefault(record.name, []).append((cpu, rate))
                print()
        finally:
            redis_server.stop()
    print(f"medians over {args.rounds} rounds, ratios to grpcio's floor of the same round")
    print(f"{'server':14} {'CPU per call':>12} {'calls/s':>8}")
    for name, pairs in ratios.items():
        cpu = statistics.median(pair[0] for pair in pairs)
        rate = statistics.median(pair[1] for pair in pairs)
        print(f"{name:14} {cpu:12.3f} {rate:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
