"""`cachegate`: the command line client.

    cachegate get KEY                 print the value; exit 1 when the key is missing
    cachegate set KEY VALUE --ttl S   store VALUE (UTF-8) for S seconds
    cachegate del KEY                 exit 1 when there was nothing to delete
    cachegate stats [--json]          the server's pool, breaker and Redis figures
    cachegate health [--watch]        exit 0 when SERVING
    cachegate bench ...               bounded load with a live progress line

Exit codes: 0 done, 1 not found / not serving, 2 usage, 3 unavailable,
4 invalid request, 5 deadline exceeded, 6 any other error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from google.protobuf import json_format

from cachegate.client._channel import SERVICE_NAME
from cachegate.client._client import CacheClient
from cachegate.client._errors import (
    CacheClientError,
    CacheUnavailableError,
    DeadlineExceededError,
    InvalidRequestError,
)
from cachegate.client._ops import Get, Operation, SetEx

__all__ = ["main"]

EXIT_OK, EXIT_MISSING, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INVALID, EXIT_DEADLINE, EXIT_ERROR = (
    range(7)
)
MAX_BENCH_SECONDS = 300.0  # every load loop stops by itself


def _exit_code(error: CacheClientError) -> int:
    if isinstance(error, CacheUnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(error, InvalidRequestError):
        return EXIT_INVALID
    if isinstance(error, DeadlineExceededError):
        return EXIT_DEADLINE
    return EXIT_ERROR


def _write_value(value: bytes, out: TextIO) -> None:
    try:
        out.write(value.decode("utf-8") + "\n")
    except UnicodeDecodeError:  # binary: the bytes as they are
        out.flush()
        sys.stdout.buffer.write(value)


# --- bench ----------------------------------------------------------------------------


@dataclass
class BenchStats:
    """Latencies and outcomes, shared by the load threads (guarded by `lock`)."""

    latencies: list[float] = field(default_factory=list)
    ops: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # time.monotonic() when the last call ended: the run's end, whatever the
    # progress loop was doing then (its ticks must not stretch the elapsed time).
    last_done: float = 0.0

    def record(self, seconds: float, ops: int, error: str | None) -> None:
        done = time.monotonic()
        with self.lock:
            self.latencies.append(seconds)
            self.ops += ops
            self.last_done = max(self.last_done, done)
            if error:
                self.errors[error] = self.errors.get(error, 0) + 1


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def _bench_worker(
    client: CacheClient,
    args: argparse.Namespace,
    stats: BenchStats,
    budget: list[int],
    stop_at: float,
    seed: int,
) -> None:
    rng = random.Random(seed)
    value = b"x" * args.value_size
    while time.monotonic() < stop_at:
        with stats.lock:  # the count bound is shared: take one call's worth at a time
            if budget[0] <= 0:
                return
            budget[0] -= 1
        keys = [f"{args.prefix}{rng.randrange(args.keys)}" for _ in range(args.batch)]
        write = args.op == "set" or (args.op == "mixed" and rng.random() < 0.2)
        start = time.perf_counter()
        error = None
        try:
            if args.batch > 1:
                ops: list[Operation] = [
                    SetEx(k, value, args.ttl) if write else Get(k) for k in keys
                ]
                failed = [r.error for r in client.pipeline(ops) if r.error is not None]
                if failed:
                    error = failed[0].code.name
            elif write:
                client.set_ex(keys[0], value, args.ttl)
            else:
                client.get(keys[0])
        except CacheClientError as exc:
            error = exc.code.name
        stats.record(time.perf_counter() - start, args.batch, error)


def _progress_line(stats: BenchStats, elapsed: float) -> str:
    with stats.lock:
        recent = sorted(stats.latencies[-5000:])
        ops, errors = stats.ops, sum(stats.errors.values())
    rate = ops / elapsed if elapsed > 0 else 0.0
    return (
        f"{elapsed:6.1f}s  {ops:>9} ops  {rate:>10.0f} ops/s  "
        f"p50 {percentile(recent, 0.5) * 1000:7.2f} ms  "
        f"p99 {percentile(recent, 0.99) * 1000:7.2f} ms  errors {errors}"
    )


def bench(client: CacheClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.count is None and args.duration is None:
        args.count = 10_000
    duration = min(args.duration or MAX_BENCH_SECONDS, MAX_BENCH_SECONDS)
    calls = -(-args.count // args.batch) if args.count is not None else sys.maxsize
    if args.op in ("get", "mixed"):  # something to read
        seed_ops: list[Operation] = [
            SetEx(f"{args.prefix}{i}", b"x" * args.value_size, args.ttl) for i in range(args.keys)
        ]
        for start in range(0, len(seed_ops), 1000):
            client.pipeline(seed_ops[start : start + 1000])
    stats = BenchStats()
    budget = [calls]
    started = time.monotonic()
    stop_at = started + duration
    threads = [
        threading.Thread(
            target=_bench_worker, args=(client, args, stats, budget, stop_at, n), daemon=True
        )
        for n in range(args.concurrency)
    ]
    for thread in threads:
        thread.start()
    live = out.isatty()
    while any(t.is_alive() for t in threads):
        # Wakes as soon as the load ends (not at the next tick): a short run's
        # figures must not include up to a tick of idle waiting.
        tick_end = time.monotonic() + 0.5
        for thread in threads:
            thread.join(max(0.0, tick_end - time.monotonic()))
        line = _progress_line(stats, time.monotonic() - started)
        out.write(("\r" + line) if live else (line + "\n"))
        out.flush()
    # The load's own span: from the start to the end of its last call.
    with stats.lock:
        elapsed = (stats.last_done or time.monotonic()) - started
    if live:
        out.write("\n")
    latencies = sorted(stats.latencies)
    rows = [
        ("operation", f"{args.op} (batch {args.batch})"),
        ("concurrency", str(args.concurrency)),
        ("calls", str(len(latencies))),
        ("operations", str(stats.ops)),
        ("seconds", f"{elapsed:.2f}"),
        ("ops/s", f"{stats.ops / elapsed:.0f}" if elapsed > 0 else "0"),
        ("p50 ms", f"{percentile(latencies, 0.50) * 1000:.3f}"),
        ("p99 ms", f"{percentile(latencies, 0.99) * 1000:.3f}"),
        ("max ms", f"{(latencies[-1] if latencies else 0.0) * 1000:.3f}"),
        ("errors", ", ".join(f"{k}={v}" for k, v in sorted(stats.errors.items())) or "0"),
    ]
    width = max(len(name) for name, _ in rows)
    out.write("\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n")
    return EXIT_ERROR if stats.errors else EXIT_OK


# --- entry point ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachegate",
        description="Talk to a cachegate server.",
        epilog="Exit codes: 0 done, 1 not found / not serving, 2 usage, 3 unavailable, "
        "4 invalid request, 5 deadline exceeded, 6 other error.",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("CACHEGATE_TARGET", "127.0.0.1:50051"),
        help="server address (default $CACHEGATE_TARGET or 127.0.0.1:50051)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="per-call deadline, seconds")
    parser.add_argument(
        "--token", default=os.environ.get("CACHEGATE_TOKEN"), help="bearer token ($CACHEGATE_TOKEN)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("get", help="print a key's value")
    get.add_argument("key")
    set_ = commands.add_parser("set", help="store a value with a TTL")
    set_.add_argument("key")
    set_.add_argument("value")
    set_.add_argument("--ttl", type=int, default=3600, help="seconds to live (default 3600)")
    delete = commands.add_parser("del", help="delete a key")
    delete.add_argument("key")
    stats = commands.add_parser("stats", help="the server's figures")
    stats.add_argument("--json", action="store_true", help="print JSON")
    health = commands.add_parser("health", help="gRPC health status")
    health.add_argument(
        "--service",
        default=SERVICE_NAME,
        help=f'service name ("" = the process; default {SERVICE_NAME})',
    )
    health.add_argument("--watch", action="store_true", help="print every change")
    health.add_argument(
        "--for",
        dest="watch_seconds",
        type=float,
        default=None,
        help="stop watching after S seconds",
    )
    load = commands.add_parser("bench", help="bounded load with live figures")
    load.add_argument("--op", choices=("get", "set", "mixed"), default="get")
    load.add_argument("--count", type=int, default=None, help="operations in all (default 10000)")
    load.add_argument(
        "--duration", type=float, default=None, help=f"seconds (at most {MAX_BENCH_SECONDS:.0f})"
    )
    load.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    load.add_argument("--batch", type=int, default=1, help="operations per call (Pipeline)")
    load.add_argument("--keys", type=int, default=1000, help="distinct keys")
    load.add_argument("--value-size", type=int, default=100, help="bytes per value")
    load.add_argument("--ttl", type=int, default=300, help="TTL of written keys")
    load.add_argument("--prefix", default="bench:", help="key prefix")
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    if args.command == "bench":
        for name in ("concurrency", "batch", "keys"):
            if getattr(args, name) < 1:
                parser.error(f"--{name} must be >= 1")
        if args.count is not None and args.count < 1:
            parser.error("--count must be >= 1")
        if args.duration is not None and args.duration <= 0:
            parser.error("--duration must be > 0")


def run(args: argparse.Namespace, client: CacheClient, out: TextIO) -> int:
    if args.command == "get":
        value = client.get(args.key)
        if value is None:
            print(f"cachegate: {args.key!r} not found", file=sys.stderr)
            return EXIT_MISSING
        _write_value(value, out)
        return EXIT_OK
    if args.command == "set":
        client.set_ex(args.key, args.value.encode("utf-8"), args.ttl)
        return EXIT_OK
    if args.command == "del":
        if client.delete(args.key):
            return EXIT_OK
        print(f"cachegate: {args.key!r} not found", file=sys.stderr)
        return EXIT_MISSING
    if args.command == "stats":
        stats = client.stats()
        as_dict: dict[str, Any] = json_format.MessageToDict(
            stats, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        )
        if args.json:
            out.write(json.dumps(as_dict, indent=2) + "\n")
        else:
            for section, values in as_dict.items():
                if isinstance(values, dict):
                    for name, value in values.items():
                        out.write(f"{section}.{name}: {value}\n")
                else:
                    out.write(f"{section}: {values}\n")
        return EXIT_OK
    if args.command == "health":
        if not args.watch:
            status = client.health(args.service)
            out.write(status + "\n")
            return EXIT_OK if status == "SERVING" else EXIT_MISSING
        last = "UNKNOWN"
        try:
            for last in client.watch_health(args.service, timeout=args.watch_seconds):
                out.write(f"{time.strftime('%H:%M:%S')} {last}\n")
                out.flush()
        except DeadlineExceededError:
            pass  # --for elapsed: a normal end of watching
        return EXIT_OK if last == "SERVING" else EXIT_MISSING
    return bench(client, args, out)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    out = out or sys.stdout
    client = CacheClient(args.target, timeout=args.timeout, token=args.token)
    try:
        return run(args, client, out)
    except CacheClientError as exc:
        print(f"cachegate: {exc.code.name}: {exc}", file=sys.stderr)
        return _exit_code(exc)
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
