"""Pool fairness: cachegate's pool beside redis-py's BlockingConnectionPool, same run.

32 threads share 10 connections to a local redis-server and call GET back to back
(the load of tests/poolload.py). Prints p50/p99/p99.9/max, errors and throughput for

- cachegate's pool through the guide's API (`get_redis_pool().execute("get", key)`,
  REDIS_MAX_CONNECTIONS=10, the default REDIS_POOL_TIMEOUT), and
- redis-py's `BlockingConnectionPool(max_connections=10, timeout=1)`,

alternating the two for `--rounds` rounds so both see the same machine, first with
the process's threads free to run on every CPU (a web application's threads), then
with them pinned to one CPU (the layout cachegate-server runs in: one process per CPU).
The layouts differ on a multi-CPU host: a freed connection handed to the longest
waiter moves the GIL to that waiter's thread, and a GIL hand-over to a thread asleep
on another CPU costs a cross-CPU wake-up (docs/performance.md: ~2x per call).
Run alone: `python scripts/bench_pool.py` (starts its own redis-server); `make bench`
runs it as its `pool` part (`scripts/bench.py --only pool`).
This is a benchmark, not a test: it fails only when a value read is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # redisprocs and poolload

import redis  # noqa: E402

from cachegate.pool import close_redis_pool, get_redis_pool  # noqa: E402
from poolload import KEYS, VALUE, PoolLoad, hammer  # noqa: E402
from redisprocs import start_standalone  # noqa: E402

__all__ = ["pool_fairness"]


@contextlib.contextmanager
def _environment(**settings: str) -> Iterator[None]:
    """The guide's API reads the environment: set it for one pool, then put it back."""
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cachegate_run(url: str, threads: int, connections: int, seconds: float) -> PoolLoad:
    with _environment(
        CACHEGATE_BACKEND="redis", REDIS_URL=url, REDIS_MAX_CONNECTIONS=str(connections)
    ):
        close_redis_pool()
        pool = get_redis_pool()
        try:
            load = hammer(
                "cachegate pool",
                lambda key: pool.execute("get", key),
                threads=threads,
                seconds=seconds,
            )
            timeouts = pool.get_stats()["pool_wait_timeouts"]
        finally:
            close_redis_pool()
    if timeouts != load.errors.get("PoolExhaustedError", 0):
        raise AssertionError(f"pool_wait_timeouts={timeouts} but the callers saw {load.errors}")
    return load


def redis_py_run(url: str, threads: int, connections: int, seconds: float) -> PoolLoad:
    blocking = redis.BlockingConnectionPool.from_url(url, max_connections=connections, timeout=1)
    client = redis.Redis(connection_pool=blocking)
    try:
        return hammer("redis-py blocking pool", client.get, threads=threads, seconds=seconds)
    finally:
        blocking.disconnect()


@contextlib.contextmanager
def _one_cpu(pin: bool) -> Iterator[str]:
    """Threads started inside run on one CPU when `pin` (they inherit the caller's mask)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if not pin or len(cpus) < 2:
        yield "" if not pin else " (one CPU only)"
        return
    os.sched_setaffinity(0, {min(cpus)})
    try:
        yield ", pinned"
    finally:
        os.sched_setaffinity(0, cpus)


def pool_fairness(
    url: str,
    *,
    threads: int = 32,
    connections: int = 10,
    seconds: float = 2.0,
    rounds: int = 1,
    layouts: tuple[bool, ...] = (False, True),
) -> list[PoolLoad]:
    """Both pools, alternating, `rounds` times each per layout (unpinned, pinned to
    one CPU); prints a row per run as it ends."""
    print(f"\npool fairness: {threads} threads, {connections} connections, {seconds:g} s per run")
    print(PoolLoad.header(), flush=True)
    loads: list[PoolLoad] = []
    for pin in layouts:
        for _ in range(rounds):
            for run in (cachegate_run, redis_py_run):
                with _one_cpu(pin) as layout:
                    load = run(url, threads, connections, seconds)
                load = dataclasses.replace(load, name=load.name + layout)
                loads.append(load)
                print(load.row(), flush=True)
    return loads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0, help="per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each pool, alternating")
    parser.add_argument(
        "--layout", choices=("unpinned", "pinned"), action="append", help="some layouts only"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cachegate-bench-pool-") as scratch:
        server = start_standalone(Path(scratch) / "redis")
        try:
            server.client().mset({f"k{i}": VALUE for i in range(KEYS)})
            pool_fairness(
                server.url,
                threads=args.threads,
                connections=args.connections,
                seconds=args.seconds,
                rounds=args.rounds,
                layouts=tuple(
                    layout == "pinned" for layout in (args.layout or ("unpinned", "pinned"))
                ),
            )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
