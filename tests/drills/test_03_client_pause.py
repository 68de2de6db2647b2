"""Drill 3: `CLIENT PAUSE 2000 ALL` under load.

Redis stays up but answers no command for 2 s. Here the server runs with
REDIS_SOCKET_TIMEOUT=0.25 (below the callers' 500 ms deadlines), so Redis's silence
counts against it: the breaker opens and later calls fail fast. Bounds as in drill 2: no
RPC outlives its deadline (client-side, and server-side: none is handled for over 1 s),
the service is back within REDIS_RECOVERY_TIMEOUT + 1 s of the pause's end, and nothing
acknowledged is lost.
"""

from __future__ import annotations

import time

import pytest

from drills.harness import (
    RECOVERY_TIMEOUT,
    FaultEnd,
    Report,
    StartGateway,
    StartRedis,
    first_success_after,
)
from drills.load import Load

pytestmark = pytest.mark.drill

PAUSE_MS = 2000
DEADLINE = 0.5
DEADLINE_SLACK = 0.1
SERVER_HOLD_LIMIT = "1.0"  # a grpc_server_handling_seconds bucket: twice the deadline


def test_client_pause_all(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_SOCKET_TIMEOUT": "0.25",
        },
        http=True,
    )
    before = gateway.stats()
    admin = redis_server.client()
    with Load(gateway.target, "pause", deadline=DEADLINE, max_seconds=14) as load:
        load.wait_for_requests(200, timeout=5)
        admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        unpaused_at = time.monotonic() + PAUSE_MS / 1000
        deadline = unpaused_at + RECOVERY_TIMEOUT + 5
        while first_success_after(load.records, unpaused_at) is None:
            assert time.monotonic() < deadline, gateway.log_tail()
            time.sleep(0.05)
        time.sleep(1.5)
    end = FaultEnd.read(gateway, load, before)
    records, summary, after = end.records, end.summary, end.stats
    recovered = first_success_after(records, unpaused_at)
    held_long = gateway.handled_slower_than(SERVER_HOLD_LIMIT)
    report(
        end.row(
            "3 CLIENT PAUSE 2000 ALL",
            recover_s=recovered,
            notes=f"socket timeout 250ms; server-side >{SERVER_HOLD_LIMIT}s={held_long}",
        )
    )
    assert sum(summary.failed.values()) >= 10, "the pause did not hold calls up"
    assert summary.max_latency <= DEADLINE + DEADLINE_SLACK, (
        f"an RPC took {summary.max_latency * 1000:.0f} ms with a {DEADLINE * 1000:.0f} ms deadline"
    )
    assert held_long == 0, f"the server held {held_long} RPCs for over {SERVER_HOLD_LIMIT}s"
    assert after.breaker.opened_total > before.breaker.opened_total, "Redis's silence went unseen"
    assert recovered is not None
    assert recovered <= RECOVERY_TIMEOUT + 1, f"first success {recovered:.2f}s after the pause"
    assert end.lost == [], f"{len(end.lost)} acknowledged writes lost, e.g. {end.lost[:5]}"
    assert summary.bad_reads == 0
