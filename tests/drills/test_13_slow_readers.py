"""Drill 13: slow readers. A stream that sends batches and never reads must not hold memory.

A key holds a 1 MiB value. Attackers (in their own process) open 60 Pipeline streams,
each sending batches of as many gets of it as one reply holds (3 MiB under the default
4 MiB send limit; 14 MiB under the 16 MiB of the start commit), and read nothing for a
while. On the start commit each such stream held ~57 MB (100 held 3 GB). Now the
replies waiting for a reader count against each worker's memory budget (a reply that
cannot get room carries RESOURCE_EXHAUSTED for the gets left out), and a reply nobody
reads within CACHEGATE_SEND_TIMEOUT ends its stream with RESOURCE_EXHAUSTED naming the
setting.
Peak RSS per worker stays within the budget plus a fixed base, no worker dies, the
bystander's p99 stays <= 50 ms and its acknowledged writes survive.
"""

from __future__ import annotations

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
    gateway_pids,
    lost_writes,
    workers_env,
)
from drills.attackers import run_attacker
from drills.harness import Report, StartGateway, StartRedis
from drills.load import make_channel

pytestmark = pytest.mark.drill

MIB = 1024 * 1024
STREAMS = 60
# Gets of the 1 MiB value: the most one reply under the send limit holds, so it is
# built whole (and then held for the reader that never comes).
GETS = RECEIVE_LIMIT // MIB - 1
SEND_TIMEOUT = 3.0
HOLD = 8.0  # seconds the attackers do not read: well past the send timeout


def test_slow_readers(start_redis: StartRedis, start_gateway: StartGateway, report: Report) -> None:
    redis_server = start_redis()
    gateway = start_gateway(
        workers_env(
            redis_server.url,
            2,
            CACHEGATE_SEND_TIMEOUT=str(SEND_TIMEOUT),
            # Every stream admitted: 60 streams from one address pass a worker's share
            # (drill 15's subject), and the streams refused for it would leave fewer
            # slow readers and race the send timeout's status in the attacker's tally.
            CACHEGATE_STREAM_SHARE="1",
        )
    )
    with make_channel(gateway.target) as channel:
        cache_pb2_grpc.CacheServiceStub(channel).SetEx(
            pb.SetExRequest(key="big", value=b"x" * MIB, ttl_seconds=600), timeout=5
        )
    workers_before = sorted(gateway_pids(gateway))
    with MemoryWatch(gateway) as memory, Bystander(gateway.target, max_seconds=60) as bystander:
        result = run_attacker(
            "slow-reader",
            gateway.target,
            "--streams",
            str(STREAMS),
            "--batches",
            "4",
            "--gets",
            str(GETS),
            "--hold",
            str(HOLD),
            "--deadline",
            "30",
        )
    workers_after = sorted(gateway_pids(gateway))
    lost = lost_writes(gateway, bystander.load.acked)
    report(
        attack_row(
            f"13 slow readers ({STREAMS} streams)",
            bystander,
            memory,
            lost=len(lost),
            notes=f"attacker streams {result['status']} ops {result['op_errors']} "
            f"replies read={result['replies']}; {result['messages']}",
        )
    )
    assert_withstood(memory, gateway, workers_before, workers_after)
    assert set(result["status"]) <= {"OK", "RESOURCE_EXHAUSTED"}, result
    assert result["status"].get("RESOURCE_EXHAUSTED", 0) > 0, result
    assert "CACHEGATE_SEND_TIMEOUT" in result["messages"]["status RESOURCE_EXHAUSTED"], result
    assert set(result["op_errors"]) <= {"RESOURCE_EXHAUSTED"}, result
    assert bystander.p99_ms() <= BYSTANDER_P99_MS, bystander.text()
    assert bystander.summary.ok > 100, bystander.text()
    assert lost == []
