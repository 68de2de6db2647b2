"""Drill 14: oversized unary values are refused early, not after they are held.

60 concurrent SetEx calls carrying 15 MiB values (the value limit is 1 MiB), twice
each, against 2 workers on the Redis backend, while a bystander's unary calls run. On
the start commit they peaked at 700 MB and kept 525 MB afterwards. Now a unary
request larger than its method's limit (key limit + value limit + 1024 bytes) is
refused from its length, unparsed: INVALID_ARGUMENT naming the limit, as the README's
table says for a bad value. Peak RSS per worker stays within the memory budget plus a
fixed base, no worker dies, the bystander's p99 stays within BULK_BYSTANDER_P99_MS (see
attack.py: issue 12's 50 ms is not yet assured under these bursts) and its acknowledged
writes survive.
"""

from __future__ import annotations

import pytest

from drills.attack import (
    BULK_BYSTANDER_P99_MS,
    Bystander,
    MemoryWatch,
    attack_row,
    gateway_pids,
    lost_writes,
    workers_env,
)
from drills.attackers import run_attacker
from drills.harness import Report, StartGateway, StartRedis
from drills.test_11_read_amplification import BASE_MB, BUDGET_MB

pytestmark = pytest.mark.drill

MIB = 1024 * 1024
CALLERS = 60


def test_oversized_unary(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(workers_env(redis_server.url, 2))
    workers_before = sorted(gateway_pids(gateway))
    with MemoryWatch(gateway) as memory, Bystander(gateway.target, max_seconds=60) as bystander:
        result = run_attacker(
            "big-setex",
            gateway.target,
            "--streams",
            str(CALLERS),
            "--batches",
            "2",
            "--bytes",
            str(15 * MIB),
            "--deadline",
            "30",
        )
    workers_after = sorted(gateway_pids(gateway))
    lost = lost_writes(gateway, bystander.load.acked)
    report(
        attack_row(
            f"14 oversized unary ({CALLERS} x 15 MiB SetEx)",
            bystander,
            memory,
            lost=len(lost),
            notes=f"attacker calls {result['status']}; {result['messages']}",
        )
    )
    assert not memory.killed, f"killed at the 3 GB guard: {memory.killed}"
    assert gateway.alive(), "the gateway died"
    assert workers_after == workers_before, "a worker died"
    peak = memory.max_worker_mb
    assert peak <= BUDGET_MB + BASE_MB, f"peak RSS {peak:.0f} MB > {BUDGET_MB} + {BASE_MB}"
    assert result["status"] == {"INVALID_ARGUMENT": CALLERS * 2}, result
    message = result["messages"]["status INVALID_ARGUMENT"]
    assert "CACHEGATE_MAX_VALUE_BYTES" in message, message
    assert bystander.p99_ms() <= BULK_BYSTANDER_P99_MS, bystander.text()
    assert bystander.summary.ok > 100, bystander.text()
    assert lost == []
