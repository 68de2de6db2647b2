"""Drill 11: read amplification. A 9 KB request must not make anyone build a 1 GB reply.

One key holds a 1 MiB value. Attackers (in their own process, see attackers.py) send
Pipeline batches of 1,000 and of 10,000 gets of it, and batches of one delete and 299
gets (the general path), on the Redis backend with 2 workers and on the memory
backend, while a bystander's unary calls run. Each reply must stay within the send
limit, with RESOURCE_EXHAUSTED for the gets that did not fit (naming the limit); each
worker's peak RSS within the memory budget plus a fixed base; redis-server's memory
bounded too (it is asked only for replies that will be sent); no worker dies; the
bystander's p99 stays within issue 12's BYSTANDER_P99_MS and its acknowledged writes
survive.
"""

from __future__ import annotations

import time

import pytest

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from drills.attack import (
    BYSTANDER_P99_MS,
    RECEIVE_LIMIT,
    Bystander,
    MemoryWatch,
    assert_withstood,
    attack_row,
    cpu_seconds,
    gateway_pids,
    lost_writes,
    workers_env,
)
from drills.attackers import run_attacker
from drills.harness import Report, StartGateway, StartRedis
from drills.load import make_channel

pytestmark = pytest.mark.drill

MIB = 1024 * 1024
REDIS_PEAK_MB = 200  # the 1 MiB value, a few bounded replies, Redis's own base
SEND_LIMIT = RECEIVE_LIMIT  # the reply bound
ATTACKS = (
    ("1000 gets", ("--gets", "1000", "--streams", "3", "--batches", "3")),
    ("10000 gets", ("--gets", "10000", "--streams", "2", "--batches", "2")),
    ("1 delete + 299 gets", ("--gets", "300", "--delete", "scratch", "--streams", "3")),
)


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_read_amplification(
    backend: str, start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    also: list[int] = []
    if backend == "redis":
        redis_server = start_redis()
        gateway = start_gateway(workers_env(redis_server.url, 2))
        also.append(redis_server.pid)
    else:
        gateway = start_gateway({"CACHEGATE_BACKEND": "memory"})
    with make_channel(gateway.target) as channel:
        cache_pb2_grpc.CacheServiceStub(channel).SetEx(
            pb.SetExRequest(key="big", value=b"x" * MIB, ttl_seconds=600), timeout=5
        )
    workers_before = sorted(gateway_pids(gateway))
    results = {}
    with (
        MemoryWatch(gateway, also=also) as memory,
        Bystander(gateway.target, max_seconds=90) as bystander,
    ):
        for name, args in ATTACKS:
            start = time.monotonic()
            cpu = {pid: cpu_seconds([pid]) for pid in (*workers_before, *also)}
            results[name] = run_attacker("pipeline-gets", gateway.target, *args)
            results[name]["cpu_s"] = {
                pid: round(cpu_seconds([pid]) - used, 2) for pid, used in cpu.items()
            }
            results[name]["seconds"] = round(time.monotonic() - start, 2)
            p99_ms, calls = bystander.during(start, time.monotonic())
            results[name]["bystander_p99_ms"] = round(p99_ms, 1)
            results[name]["bystander_calls"] = calls
    workers_after = sorted(gateway_pids(gateway))
    lost = lost_writes(gateway, bystander.load.acked)
    redis_mb = memory.peak_mb(also[0]) if also else 0.0
    codes = "; ".join(
        f"{name}: streams {r['status']} ops {r['op_errors']} values={r['values']} "
        f"max reply={r['max_reply_bytes'] / MIB:.1f}MiB bystander p99={r['bystander_p99_ms']}ms "
        f"of {r['bystander_calls']} in {r['seconds']}s, CPU s by pid {r['cpu_s']}"
        for name, r in results.items()
    )
    report(
        attack_row(
            f"11 read amplification ({backend})",
            bystander,
            memory,
            lost=len(lost),
            notes=f"{codes}; redis-server peak RSS={redis_mb:.0f}MB",
        )
    )
    print(report_messages(results))
    assert_withstood(memory, gateway, workers_before, workers_after)
    if backend == "redis":
        assert redis_mb <= REDIS_PEAK_MB, f"redis-server reached {redis_mb:.0f} MB"
    for name, result in results.items():
        assert set(result["status"]) == {"OK"}, f"{name}: {result['status']} {result['messages']}"
        assert result["max_reply_bytes"] <= SEND_LIMIT, f"{name}: {result['max_reply_bytes']}"
        assert result["values"] >= result["replies"] > 0, f"{name}: no value came back"
        assert set(result["op_errors"]) == {"RESOURCE_EXHAUSTED"}, f"{name}: {result}"
        message = result["messages"]["op RESOURCE_EXHAUSTED"]
        assert "CACHEGATE_" in message, message
    # Over the whole drill, whose attacks run back to back; each attack's own window is
    # printed above (the loudest, 10,000 gets on the memory backend, has passed 50 ms).
    assert bystander.p99_ms() <= BYSTANDER_P99_MS, bystander.text()
    assert bystander.summary.ok > 100, bystander.text()
    assert lost == []


def report_messages(results: dict[str, dict[str, object]]) -> str:
    return "\n".join(f"{name}: {result['messages']}" for name, result in results.items())
