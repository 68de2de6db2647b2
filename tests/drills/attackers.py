"""Hostile callers, each run in a process of its own: `python -m drills.attackers KIND ...`.

An attacker that parses 16 MiB replies or builds 16 MiB requests takes the CPU and the
GIL of the process it runs in; run in the drill's own process it would delay the
bystander's calls and make the server look slower than it is. So each attack runs
here, in a child process (`run_attacker`), bounded by count and by time, and prints
one JSON line: the stream and RPC status codes it got, the per-operation error codes
and a sample of their messages, how many values came back and the largest reply.
It runs under SCHED_IDLE, on CPU time nothing else wants: a real attacker is on
another machine, and here its own CPU (building, sending and parsing messages of
megabytes on a shared 2-core box) would otherwise show up in the bystander's latency
as if the server had spent it. At nice 10 it still did (docs/performance.md, "The
attackers' own CPU").

Kinds:
- `pipeline-gets`: Pipeline batches of `--gets` gets of one key, on `--streams` streams
  (own connections); `--delete` puts a delete first (the general path).
- `empty-ops`: one Pipeline batch of `--bytes` bytes of empty operations per stream.
- `slow-reader`: streams that send batches of gets and never read a reply.
- `big-setex`: concurrent unary SetEx calls with `--bytes`-byte values.
- `stale-fill`: on each of `--streams` connections, `--batches` SetEx of distinct keys
  with `--bytes`-byte values, each read back by a Get with `--stale` seconds of
  stale-if-error allowance (so the serving worker's stale copy learns it twice); with
  `--token`, as that token's tenant.
- `bad-subscribe`: `--batches` rounds of InvalidationService/Subscribe requests past
  the watch limits (too many keys, too many prefixes, a key or prefix past the key
  limit, and `--bytes` bytes of empty keys or prefixes), on `--streams` connections.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from cachegate.v1 import invalidation_pb2 as ipb

__all__ = ["run_attacker"]

_TESTS = Path(__file__).resolve().parent.parent

# The attacker reads whatever the server sends: no client-side limit hides a reply.
_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]


def run_attacker(kind: str, target: str, *args: str, timeout: float = 120.0) -> dict[str, Any]:
    """Run one attack in a child process; its JSON summary."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(_TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "drills.attackers", kind, target, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"attacker {kind} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class Tally:
    """What the attacker saw, shared by its threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: collections.Counter[str] = collections.Counter()
        self.op_errors: collections.Counter[str] = collections.Counter()
        self.messages: dict[str, str] = {}
        self.values = 0
        self.replies = 0
        self.max_reply_bytes = 0
        self.slowest: dict[str, float] = {}  # seconds, by kind of request

    def rpc(self, code: str, details: str = "") -> None:
        with self.lock:
            self.status[code] += 1
            if details:
                self.messages.setdefault(f"status {code}", details[:300])

    def reply(self, reply: pb.PipelineResponse) -> None:
        with self.lock:
            self.replies += 1
            self.max_reply_bytes = max(self.max_reply_bytes, reply.ByteSize())
            self.values += sum(1 for outcome in reply.outcomes if outcome == pb.OUTCOME_VALUE)
            for error in reply.errors:
                name = _code_name(error.code)
                self.op_errors[name] += 1
                self.messages.setdefault(f"op {name}", error.message[:300])

    def json(self) -> str:
        return json.dumps(
            {
                "status": dict(self.status),
                "op_errors": dict(self.op_errors),
                "messages": self.messages,
                "values": self.values,
                "replies": self.replies,
                "max_reply_bytes": self.max_reply_bytes,
                "slowest": self.slowest,
            }
        )


def _code_name(number: int) -> str:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.name
    return f"code {number}"


def _threads(count: int, target: Any) -> None:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def pipeline_gets(args: argparse.Namespace, tally: Tally) -> None:
    operations = [pb.Operation(get=pb.GetOperation(key=args.key))] * args.gets
    if args.delete:
        operations = [pb.Operation(delete=pb.DeleteOperation(key=args.delete)), *operations[1:]]
    request = pb.PipelineRequest(operations=operations)
    end = time.monotonic() + args.seconds

    def stream(_: int) -> None:
        with grpc.insecure_channel(args.target, options=_OPTIONS) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for _ in range(args.batches):
                if time.monotonic() >= end:
                    return
                try:
                    for reply in stub.Pipeline(iter([request]), timeout=args.deadline):
                        tally.reply(reply)
                    tally.rpc("OK")
                except grpc.RpcError as exc:
                    tally.rpc(exc.code().name, exc.details() or "")

    _threads(args.streams, stream)


def empty_ops(args: argparse.Namespace, tally: Tally) -> None:
    request = b"\x0a\x00" * (args.bytes // 2)  # each operation: field 1, length 0
    raw_pipeline = None

    def stream(_: int) -> None:
        with grpc.insecure_channel(args.target, options=_OPTIONS) as channel:
            nonlocal raw_pipeline
            call = channel.stream_stream(
                "/cachegate.v1.CacheService/Pipeline",
                request_serializer=None,
                response_deserializer=pb.PipelineResponse.FromString,
            )
            for _ in range(args.batches):
                try:
                    for reply in call(iter([request]), timeout=args.deadline):
                        tally.reply(reply)
                    tally.rpc("OK")
                except grpc.RpcError as exc:
                    tally.rpc(exc.code().name, exc.details() or "")

    _threads(args.streams, stream)


def slow_reader(args: argparse.Namespace, tally: Tally) -> None:
    """Streams that send `batches` batches and read nothing until `--hold` seconds
    have passed; then they read what is there (the status tells how it ended)."""
    request = pb.PipelineRequest(
        operations=[pb.Operation(get=pb.GetOperation(key=args.key))] * args.gets
    )

    def stream(_: int) -> None:
        with grpc.insecure_channel(args.target, options=_OPTIONS) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)

            def batches() -> Iterator[pb.PipelineRequest]:
                for _ in range(args.batches):
                    yield request

            call = stub.Pipeline(batches(), timeout=args.deadline)
            time.sleep(args.hold)  # not reading: HTTP/2 flow control fills up
            try:
                for reply in call:
                    tally.reply(reply)
                tally.rpc("OK")
            except grpc.RpcError as exc:
                tally.rpc(exc.code().name, exc.details() or "")

    _threads(args.streams, stream)


def big_setex(args: argparse.Namespace, tally: Tally) -> None:
    value = b"v" * args.bytes

    def caller(index: int) -> None:
        with grpc.insecure_channel(args.target, options=_OPTIONS) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for n in range(args.batches):
                try:
                    stub.SetEx(
                        pb.SetExRequest(key=f"big-{index}-{n}", value=value, ttl_seconds=60),
                        timeout=args.deadline,
                    )
                    tally.rpc("OK")
                except grpc.RpcError as exc:
                    tally.rpc(exc.code().name, exc.details() or "")

    _threads(args.streams, caller)


def stale_fill(args: argparse.Namespace, tally: Tally) -> None:
    end = time.monotonic() + args.seconds

    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()

    def caller(index: int) -> None:
        with grpc.insecure_channel(args.target, options=_OPTIONS) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for n in range(args.batches):
                if time.monotonic() >= end:
                    return
                key = f"fill-{index}-{n}"
                value = f"{key}:".encode().ljust(args.bytes, b"v")
                try:
                    stub.SetEx(
                        pb.SetExRequest(key=key, value=value, ttl_seconds=120),
                        timeout=args.deadline,
                        metadata=metadata,
                    )
                    reply = stub.Get(
                        pb.GetRequest(key=key, stale_if_error_seconds=args.stale),
                        timeout=args.deadline,
                        metadata=metadata,
                    )
                    tally.rpc("OK" if reply.value == value else "WRONG VALUE")
                except grpc.RpcError as exc:
                    tally.rpc(exc.code().name, exc.details() or "")

    _threads(args.streams, caller)


def _bad_subscribes(size: int) -> dict[str, bytes]:
    """Subscribe requests past each watch limit, as wire bytes (limits: 1000 keys, 100
    prefixes, keys and prefixes of at most 1024 bytes, the defaults)."""

    def request(**fields: Any) -> bytes:
        data: bytes = ipb.SubscribeRequest(**fields).SerializeToString()
        return data

    return {
        "1001 keys": request(keys=[f"k{i}" for i in range(1001)]),
        "1001 keys of 1 KiB": request(keys=[f"{i:04d}".ljust(1024, "k") for i in range(1001)]),
        "101 prefixes": request(prefixes=[f"p{i}" for i in range(101)]),
        "a 1025-byte key": request(keys=["k" * 1025]),
        "a 1025-byte prefix": request(prefixes=["p" * 1025]),
        # Each empty key is 2 bytes on the wire (tag, length 0): the most fields per byte.
        "empty keys": b"\x0a\x00" * (size // 2),
        "empty prefixes": b"\x12\x00" * (size // 2),
    }


def bad_subscribe(args: argparse.Namespace, tally: Tally) -> None:
    requests = _bad_subscribes(args.bytes)
    end = time.monotonic() + args.seconds

    def caller(_: int) -> None:
        with grpc.insecure_channel(args.target, options=_OPTIONS) as channel:
            subscribe = channel.unary_stream(
                "/cachegate.v1.InvalidationService/Subscribe",
                request_serializer=None,
                response_deserializer=ipb.SubscribeResponse.FromString,
            )
            for _ in range(args.batches):
                for name, data in requests.items():
                    if time.monotonic() >= end:
                        return
                    started = time.monotonic()
                    try:
                        for _event in subscribe(data, timeout=args.deadline):
                            break  # admitted: a limit did not hold
                        code, details = "OK", "admitted"
                    except grpc.RpcError as exc:
                        code, details = exc.code().name, exc.details() or ""
                    took = time.monotonic() - started
                    with tally.lock:
                        tally.status[f"{name}: {code}"] += 1
                        tally.messages.setdefault(name, details[:200])
                        tally.slowest[name] = max(took, tally.slowest.get(name, 0.0))

    _threads(args.streams, caller)


def main() -> None:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    parser = argparse.ArgumentParser(prog="drills.attackers")
    parser.add_argument("kind", choices=(
        "pipeline-gets", "empty-ops", "slow-reader", "big-setex", "stale-fill", "bad-subscribe"
    ))  # fmt: skip
    parser.add_argument("target")
    parser.add_argument("--key", default="big")
    parser.add_argument("--gets", type=int, default=1000)
    parser.add_argument("--delete", default="")
    parser.add_argument("--bytes", type=int, default=16 * 1024 * 1024 - 64)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--deadline", type=float, default=20.0)
    parser.add_argument("--token", default="", help="a bearer token (stale-fill)")
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--stale", type=int, default=60)
    args = parser.parse_args()
    tally = Tally()
    kinds = {
        "pipeline-gets": pipeline_gets,
        "empty-ops": empty_ops,
        "slow-reader": slow_reader,
        "big-setex": big_setex,
        "stale-fill": stale_fill,
        "bad-subscribe": bad_subscribe,
    }
    kinds[args.kind](args, tally)
    print(tally.json(), flush=True)


if __name__ == "__main__":
    main()
