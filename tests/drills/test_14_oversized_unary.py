"""Drill 14: oversized unary values are refused early, not after they are held.

60 concurrent SetEx calls carrying 15 MiB values (the value limit is 1 MiB) peaked at
700 MB and kept 525 MB afterwards on the start commit. Now 60 callers send, twice
each, against 2 workers on the Redis backend while a bystander's unary calls run,
first values just within the receive limit (CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES, the
largest message grpc takes in whole), then the old 15 MiB. A unary request larger than
its method's limit (key limit + value limit + 1024 bytes) is refused from its length,
unparsed: INVALID_ARGUMENT naming the limit, as the README's table says for a bad
value; one past the receive limit is refused by grpc as it arrives
(RESOURCE_EXHAUSTED). Peak RSS per worker stays within the memory budget plus a fixed
base, no worker dies, the bystander's p99 stays within issue 12's BYSTANDER_P99_MS and
its acknowledged writes survive.
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
    gateway_pids,
    lost_writes,
    workers_env,
)
from drills.harness import Report, StartGateway, StartRedis

pytestmark = pytest.mark.drill

MIB = 1024 * 1024
CALLERS = 60
# Values within grpc's receive limit (room for the key and tags), then the 15 MiB first tried.
AT_LIMIT, PAST_LIMIT = RECEIVE_LIMIT - 4096, 15 * MIB


def test_oversized_unary(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(workers_env(redis_server.url, 2))
    workers_before = sorted(gateway_pids(gateway))
    with MemoryWatch(gateway) as memory, Bystander(gateway.target, max_seconds=60) as bystander:
        phases = attack_in_phases(
            bystander,
            "big-setex",
            gateway.target,
            (AT_LIMIT, PAST_LIMIT),
            "--streams",
            str(CALLERS),
            "--batches",
            "2",
            "--deadline",
            "30",
        )
    (at_limit, at_p99, at_n), (past_limit, past_p99, past_n) = phases
    workers_after = sorted(gateway_pids(gateway))
    lost = lost_writes(gateway, bystander.load.acked)
    report(
        attack_row(
            f"14 oversized unary ({CALLERS} x {AT_LIMIT / MIB:.1f} MiB, then 15 MiB SetEx)",
            bystander,
            memory,
            lost=len(lost),
            notes=f"within the receive limit: {at_limit['status']}, bystander p99 {at_p99:.1f} ms "
            f"of {at_n}; past it: {past_limit['status']}, bystander p99 {past_p99:.1f} ms of "
            f"{past_n}; {at_limit['messages']} {past_limit['messages']}",
        )
    )
    assert_withstood(memory, gateway, workers_before, workers_after)
    assert at_limit["status"] == {"INVALID_ARGUMENT": CALLERS * 2}, at_limit
    message = at_limit["messages"]["status INVALID_ARGUMENT"]
    assert "CACHEGATE_MAX_VALUE_BYTES" in message, message
    assert past_limit["status"] == {"RESOURCE_EXHAUSTED": CALLERS * 2}, past_limit
    assert bystander.p99_ms() <= BYSTANDER_P99_MS, bystander.text()
    assert at_p99 <= BYSTANDER_P99_MS, f"within the limit: p99 {at_p99:.1f} ms of {at_n} calls"
    assert past_p99 <= BYSTANDER_P99_MS, f"past the limit: p99 {past_p99:.1f} ms of {past_n} calls"
    assert bystander.summary.ok > 100, bystander.text()
    assert lost == []
