"""Drill 12: count before parse. A batch of empty operations must cost a count, not a parse.

A PipelineRequest of 16 MiB holding 8.4 million empty operations (`0a 00` each) was
refused only after a full parse: 0.7 s of CPU and ~290 MB per message. Attackers (in
their own process) send such messages on several streams at once, eight each, to 2
workers on the Redis backend, while a bystander's unary calls run: first at the
receive limit (CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES, 4 MiB of empty operations), which
must end INVALID_ARGUMENT naming CACHEGATE_MAX_BATCH_OPS, then at the old 16 MiB, past
it, which grpc must refuse as it arrives (RESOURCE_EXHAUSTED). Each worker's peak RSS
stays within the memory budget plus a fixed base, the workers spend little CPU on it,
none dies, the bystander's p99 stays within issue 12's BYSTANDER_P99_MS and its
acknowledged writes survive.
"""

from __future__ import annotations

import pytest

from drills.attack import (
    BYSTANDER_P99_MS,
    RECEIVE_LIMIT,
    Bystander,
    MemoryWatch,
    assert_withstood,
    attack_in_phases,
    attack_row,
    cpu_seconds,
    gateway_pids,
    lost_writes,
    workers_env,
)
from drills.harness import Report, StartGateway, StartRedis

pytestmark = pytest.mark.drill

MIB = 1024 * 1024
STREAMS = 8
MESSAGES = 8
# The message sizes tried: at the receive limit, and at the limit this drill first
# attacked with (16 MiB, now past it).
AT_LIMIT, PAST_LIMIT = RECEIVE_LIMIT - 64, 16 * MIB - 64
# A count of a message at the limit costs milliseconds; a parse of one 16 MiB costs 0.7 s.
CPU_PER_MESSAGE_S = 0.1


def test_parse_before_count(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(workers_env(redis_server.url, 2))
    workers_before = sorted(gateway_pids(gateway))
    cpu_before = cpu_seconds(workers_before)
    with MemoryWatch(gateway) as memory, Bystander(gateway.target, max_seconds=60) as bystander:
        phases = attack_in_phases(
            bystander,
            "empty-ops",
            gateway.target,
            (AT_LIMIT, PAST_LIMIT),
            "--streams",
            str(STREAMS),
            "--batches",
            str(MESSAGES),
            "--deadline",
            "30",
        )
    cpu = cpu_seconds(workers_before) - cpu_before
    (at_limit, at_p99, at_n), (past_limit, past_p99, past_n) = phases
    workers_after = sorted(gateway_pids(gateway))
    lost = lost_writes(gateway, bystander.load.acked)
    report(
        attack_row(
            f"12 count before parse ({AT_LIMIT // 2:,} empty ops; then 16 MiB)",
            bystander,
            memory,
            lost=len(lost),
            notes=f"at the limit: {at_limit['status']}, bystander p99 {at_p99:.1f} ms of {at_n}; "
            f"past it: {past_limit['status']}, bystander p99 {past_p99:.1f} ms of {past_n}; "
            f"workers' CPU {cpu:.2f}s for {2 * STREAMS * MESSAGES} messages; "
            f"{at_limit['messages']} {past_limit['messages']}",
        )
    )
    assert_withstood(memory, gateway, workers_before, workers_after)
    assert at_limit["status"] == {"INVALID_ARGUMENT": STREAMS * MESSAGES}, at_limit
    assert "CACHEGATE_MAX_BATCH_OPS" in at_limit["messages"]["status INVALID_ARGUMENT"]
    assert past_limit["status"] == {"RESOURCE_EXHAUSTED": STREAMS * MESSAGES}, past_limit
    cpu_bound = CPU_PER_MESSAGE_S * 2 * STREAMS * MESSAGES
    assert cpu <= cpu_bound, f"workers spent {cpu:.2f}s of CPU"
    assert bystander.p99_ms() <= BYSTANDER_P99_MS, bystander.text()
    assert at_p99 <= BYSTANDER_P99_MS, f"within the limit: p99 {at_p99:.1f} ms of {at_n} calls"
    assert past_p99 <= BYSTANDER_P99_MS, f"past the limit: p99 {past_p99:.1f} ms of {past_n} calls"
    assert bystander.summary.ok > 100, bystander.text()
    assert lost == []
