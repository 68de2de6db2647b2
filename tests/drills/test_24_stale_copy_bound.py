"""Drill 24: the stale copy's bound (CACHEGATE_STALE_COPY_BYTES), filled on purpose.

2 workers on Redis, the default 16 MiB copy per worker. An attacker (in its own
process, see attackers.py) writes FILL_KEYS distinct keys of VALUE_BYTES each (about
7 times what both copies hold) and reads each back with a stale-if-error allowance,
so the copy learns every one, while a bystander's unary calls run and a sampler
scrapes each worker's cachegate_stale_copy_bytes from its side port.

Then, on one connection per worker (a connection talks to one worker), the drill
writes keys the copy should hold (recent writes, and a key written straight to Redis
and read with an allowance) and keys it must not answer for (one that expired, one
deleted through the gateway, one deleted behind its back and read since), SIGKILLs
Redis, and reads them all with an allowance.

Passes when the metric never passes the bound on either worker (and came near it:
the copy did fill); each worker's peak RSS stays within the memory budget plus the
copy's bound plus the fixed base; no worker dies; the bystander keeps p99 <= 50 ms
and its writes read back; with Redis dead, every key the copy should hold is answered
stale with its own value, and no expired or deleted key is answered at all.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from drills.attack import (
    BASE_MB,
    BUDGET_MB,
    BYSTANDER_P99_MS,
    Bystander,
    MemoryWatch,
    attack_row,
    gateway_pids,
    lost_writes,
    workers_env,
)
from drills.attackers import run_attacker
from drills.harness import Gateway, Report, Sampler, StartGateway, StartRedis
from drills.load import make_channel
from drills.test_22_subscriber_flood import side_port_text

pytestmark = pytest.mark.drill

MIB = 1024 * 1024
BOUND = 16 * MIB  # CACHEGATE_STALE_COPY_BYTES's default
VALUE_BYTES = 512 * 1024
CONNECTIONS, PER_CONNECTION = 4, 60  # 120 MiB written: ~60 MiB through each worker
FILL_FLOOR = BOUND * 3 // 4  # the copy must have come this near its bound
ALLOWANCE = 60
KEYS_EACH = 5


def stale_copy_bytes(gateway: Gateway) -> float:
    """The larger of the two workers' cachegate_stale_copy_bytes."""
    found: list[float] = []
    for worker in (0, 1):
        for line in side_port_text(gateway, worker).splitlines():
            if line.startswith("cachegate_stale_copy_bytes"):
                found.append(float(line.rpartition(" ")[2]))
    assert len(found) == 2, f"cachegate_stale_copy_bytes of {len(found)} workers"
    return max(found)


def channel_per_worker(
    target: str, metadata: Sequence[tuple[str, str]] = ()
) -> dict[int, grpc.Channel]:
    """One channel on each of the two workers (Stats says which took it); the kernel
    spreads connections, so a few tries find both."""
    found: dict[int, grpc.Channel] = {}
    spare: list[grpc.Channel] = []
    for _ in range(32):
        channel = make_channel(target)
        worker = cache_pb2_grpc.CacheServiceStub(channel).Stats(
            pb.StatsRequest(), timeout=5, metadata=tuple(metadata)
        )
        if worker.worker_id in found:
            spare.append(channel)
        else:
            found[worker.worker_id] = channel
        if len(found) == 2:
            break
    for channel in spare:
        channel.close()
    assert len(found) == 2, f"32 connections all reached workers {sorted(found)}"
    return found


def read_stale(stub: Any, key: str, metadata: Sequence[tuple[str, str]] = ()) -> tuple[str, bytes]:
    """A Get with the allowance: ("stale", value), ("fresh", value), or (code name, b"")."""
    try:
        reply = stub.Get(
            pb.GetRequest(key=key, stale_if_error_seconds=ALLOWANCE), timeout=2, metadata=metadata
        )
    except grpc.RpcError as exc:
        return exc.code().name, b""
    if not reply.found:
        return "miss", b""
    return ("stale" if reply.stale else "fresh"), reply.value


def fill_copies(target: str, token: str = "") -> dict[str, Any]:
    """The attacker's fill (attackers.py `stale-fill`), as `token`'s tenant if given."""
    return run_attacker(
        "stale-fill",
        target,
        "--streams",
        str(CONNECTIONS),
        "--batches",
        str(PER_CONNECTION),
        "--bytes",
        str(VALUE_BYTES),
        "--stale",
        str(ALLOWANCE),
        "--seconds",
        "30",
        "--deadline",
        "10",
        "--token",
        token,
    )


def test_stale_copy_bound(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(workers_env(redis_server.url, 2), http=True)
    workers_before = sorted(gateway_pids(gateway))
    sampler = Sampler(lambda: stale_copy_bytes(gateway), interval=0.1, max_seconds=60)
    bystander = Bystander(gateway.target, max_seconds=40)
    with MemoryWatch(gateway) as memory, sampler, bystander:
        result = fill_copies(gateway.target)
        time.sleep(0.3)  # the sampler's last look
    lost = lost_writes(gateway, bystander.load.acked)
    copy_peak = max(sampler.values(), default=0.0)

    # What the copy must answer for once Redis is gone, and what it must not.
    channels = channel_per_worker(gateway.target)
    redis = redis_server.client()
    keep: dict[tuple[int, str], bytes] = {}
    drop: list[tuple[int, str]] = []
    for worker, channel in channels.items():
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        for index in range(KEYS_EACH):
            value = f"w{worker}-{index}".encode() * 100
            stub.SetEx(pb.SetExRequest(key=f"recent-{worker}-{index}", value=value,
                                       ttl_seconds=600), timeout=5)  # fmt: skip
            keep[(worker, f"recent-{worker}-{index}")] = value
            redis.set(f"learned-{worker}-{index}", value, ex=600)
            assert read_stale(stub, f"learned-{worker}-{index}") == ("fresh", value)
            keep[(worker, f"learned-{worker}-{index}")] = value
            stub.SetEx(pb.SetExRequest(key=f"expiring-{worker}-{index}", value=value,
                                       ttl_seconds=1), timeout=5)  # fmt: skip
            stub.SetEx(pb.SetExRequest(key=f"deleted-{worker}-{index}", value=value,
                                       ttl_seconds=600), timeout=5)  # fmt: skip
            stub.Delete(pb.DeleteRequest(key=f"deleted-{worker}-{index}"), timeout=5)
            stub.SetEx(pb.SetExRequest(key=f"gone-{worker}-{index}", value=value,
                                       ttl_seconds=600), timeout=5)  # fmt: skip
            redis.delete(f"gone-{worker}-{index}")
            assert read_stale(stub, f"gone-{worker}-{index}") == ("miss", b"")
            drop += [
                (worker, f"{kind}-{worker}-{index}") for kind in ("expiring", "deleted", "gone")
            ]
    time.sleep(1.5)  # the expiring keys' TTL runs out
    redis.close()
    redis_server.kill()
    answers: dict[tuple[int, str], tuple[str, bytes]] = {}
    for worker, key in [*keep, *drop]:
        answers[(worker, key)] = read_stale(cache_pb2_grpc.CacheServiceStub(channels[worker]), key)
    # The attacker's first keys: pushed out of the copy long ago.
    early = [f"fill-{c}-{n}" for c in range(CONNECTIONS) for n in range(3)]
    early_answers = Counter(
        read_stale(cache_pb2_grpc.CacheServiceStub(channel), key)[0]
        for channel in channels.values()
        for key in early
    )
    for channel in channels.values():
        channel.close()
    workers_after = sorted(gateway_pids(gateway))
    kept_right = sum(1 for k, v in keep.items() if answers[k] == ("stale", v))
    dropped_answered = [k for k in drop if answers[k][1]]
    report(
        attack_row(
            "24 stale copy bound",
            bystander,
            memory,
            lost=len(lost),
            notes=f"attacker {result['status']}; cachegate_stale_copy_bytes peak "
            f"{copy_peak / MIB:.2f} MiB (bound {BOUND / MIB:.0f}) over "
            f"{len(sampler.values())} samples; Redis killed: kept keys answered stale "
            f"{kept_right}/{len(keep)}, expired/deleted answered {len(dropped_answered)}/"
            f"{len(drop)} ({Counter(a[0] for k, a in answers.items() if k in drop)}), "
            f"early fill keys {dict(early_answers)}",
        )
    )
    assert not memory.killed, f"killed at the 3 GB guard: {memory.killed}"
    assert workers_after == workers_before, "a worker died"
    assert result["status"] == {"OK": CONNECTIONS * PER_CONNECTION}, result
    assert copy_peak <= BOUND, f"the copy held {copy_peak:.0f} bytes > {BOUND}"
    assert copy_peak >= FILL_FLOOR, f"the copy never filled: {copy_peak:.0f} bytes"
    peak = memory.max_worker_mb
    limit = BUDGET_MB + BOUND / MIB + BASE_MB
    assert peak <= limit, f"peak RSS {peak:.0f} MB > {BUDGET_MB} + {BOUND // MIB} + {BASE_MB}"
    assert bystander.p99_ms() <= BYSTANDER_P99_MS, bystander.text()
    assert not bystander.summary.failed, bystander.text()
    assert bystander.summary.ok > 100, bystander.text()
    assert lost == []
    assert kept_right == len(keep), {k: a[0] for k, a in answers.items() if k in keep}
    assert dropped_answered == [], dropped_answered
    assert not early_answers.get("stale"), dict(early_answers)
