"""Drill 26: the memory defaults inside a container limit.

Left unset, the worker count, each worker's memory budget and its stale copy follow
the memory the process may use (runtime/_memory.py), drawn for a 512 MiB container.
Here the gateway starts inside a memory cgroup of 512 MiB (tests/drills/cgroup.py)
with nothing set but its Redis backend and CACHEGATE_STREAM_SHARE=1, so it picks its
workers, budgets and stale copies itself, and one attacker may hold every stream slot
(the most memory streams can hold; drill 15 is the share's own drill). Issue 12's
memory attacks run at once, each from its own process: Pipeline batches of 1,000 gets
of a 1 MiB value, concurrent SetEx calls at the value limit, and 100 streams that send
batches of the largest replies and never read them. Meanwhile a bystander's unary
calls run. (Set to a 1 GiB budget per worker instead, the same attacks made the
kernel kill a worker: the drill fails where the sizing ignores the limit.)

The start-up log must show the limit was read from the cgroup. The kernel must kill
nothing in the cgroup, and no worker may die. The bystander's p99 must stay within
BYSTANDER_P99_MS and its acknowledged writes must survive. The attackers may get only
the codes the README's limits give (OK, RESOURCE_EXHAUSTED, and DEADLINE_EXCEEDED for
a reader that never reads), never UNAVAILABLE from a worker that died under them.
Needs root and a writable memory controller; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cachegate.core import LimitSettings
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from drills.attack import (
    BYSTANDER_P99_MS,
    Bystander,
    attack_row,
    gateway_pids,
    lost_writes,
)
from drills.attackers import run_attacker
from drills.cgroup import MemoryCgroup, NoCgroupError
from drills.harness import Report, StartGateway, StartRedis
from drills.load import make_channel

pytestmark = pytest.mark.drill

MIB = 1024 * 1024
CONTAINER_MIB = 512  # the container the defaults are drawn for (README, "Limits and abuse")
VALUE_LIMIT = LimitSettings().max_value_bytes
ATTACKS: dict[str, tuple[str, ...]] = {
    "pipeline-gets": ("--gets", "1000", "--streams", "6", "--batches", "3"),
    "big-setex": ("--bytes", str(VALUE_LIMIT), "--streams", "16", "--batches", "4"),
    "slow-reader": ("--gets", "3", "--streams", "100", "--batches", "4", "--hold", "6"),
}
ALLOWED = {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


@pytest.fixture
def container() -> Iterator[MemoryCgroup]:
    try:
        group = MemoryCgroup.create(f"cachegate-drill-{os.getpid()}", CONTAINER_MIB * MIB)
    except NoCgroupError as exc:
        pytest.skip(f"no container limit to start the gateway in: {exc}")
    try:
        yield group
    finally:
        group.remove()


def test_container_memory(
    container: MemoryCgroup,
    start_redis: StartRedis,
    start_gateway: StartGateway,
    report: Report,
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "CACHEGATE_WORKERS": "0",  # the default: one per CPU the memory holds
            "CACHEGATE_STREAM_SHARE": "1",
        },
        cgroup_procs=container.procs,
    )
    plan = next(entry for entry in gateway.logs() if "memory_limit_mib" in entry)
    with make_channel(gateway.target) as channel:
        cache_pb2_grpc.CacheServiceStub(channel).SetEx(
            pb.SetExRequest(key="big", value=b"x" * MIB, ttl_seconds=600), timeout=5
        )
    workers_before = sorted(gateway_pids(gateway))
    results: dict[str, dict[str, Any]] = {}

    def attack(kind: str) -> None:
        results[kind] = run_attacker(kind, gateway.target, *ATTACKS[kind], "--deadline", "30")

    with Bystander(gateway.target, max_seconds=90) as bystander:
        attackers = [threading.Thread(target=attack, args=(kind,)) for kind in ATTACKS]
        for thread in attackers:
            thread.start()
        for thread in attackers:
            thread.join()
    workers_after = sorted(gateway_pids(gateway))
    lost = lost_writes(gateway, bystander.load.acked)
    peak = container.peak_bytes()
    kills = container.oom_kills()
    codes = "; ".join(
        f"{kind}: streams {r['status']} ops {r['op_errors']}" for kind, r in results.items()
    )
    report(
        attack_row(
            f"26 container of {CONTAINER_MIB} MiB ({plan['workers']} workers, defaults)",
            bystander,
            None,
            lost=len(lost),
            notes=f"limit {plan['memory_limit_mib']} MiB from {plan['memory_limit_from']}; "
            f"budget {plan['memory_budget_bytes_each'] / MIB:.0f} MiB and stale copy "
            f"{plan['stale_copy_bytes_each'] / MIB:.0f} MiB each; cgroup peak "
            f"{'?' if peak is None else f'{peak / MIB:.0f}'} MiB; OOM kills {kills}; {codes}",
        )
    )
    assert plan["memory_limit_from"] == "cgroup", plan
    assert plan["memory_limit_mib"] == CONTAINER_MIB, plan
    assert kills == 0, f"the kernel killed {kills} process(es) for memory"
    assert gateway.alive(), gateway.log_tail()
    assert workers_after == workers_before, "a worker died"
    for kind, result in results.items():
        assert set(result["status"]) <= ALLOWED, f"{kind}: {result['status']} {result['messages']}"
        assert set(result["op_errors"]) <= {"RESOURCE_EXHAUSTED"}, f"{kind}: {result}"
    assert results["pipeline-gets"]["values"] > 0, results["pipeline-gets"]
    assert bystander.p99_ms() <= BYSTANDER_P99_MS, bystander.text()
    assert bystander.summary.ok > 100, bystander.text()
    assert lost == []
