"""Drill 1: Redis is SIGKILLed under load and restarted 3 s later on the same port.

Redis runs with `--appendonly yes --appendfsync always`, so a kill loses nothing that
was acknowledged: every acknowledged write must be readable afterwards. While the
breaker is open, calls must fail fast; after the restart the service must come back
by itself within REDIS_RECOVERY_TIMEOUT + 1 s.
"""

from __future__ import annotations

import time

import grpc
import pytest

from cachegate.v1 import cache_pb2 as pb
from drills.harness import (
    RECOVERY_TIMEOUT,
    FaultEnd,
    Report,
    StartGateway,
    StartRedis,
    first_success_after,
)
from drills.load import Load, percentile

pytestmark = pytest.mark.drill

DOWN_SECONDS = 3.0
# The target is <= 5 ms server-side for a call the open breaker turns away (it never
# touches Redis). Measured at the client, a call also pays for the Python gRPC client and
# server stacks (~1 ms) and for scheduling on a busy 2-core machine (other tests, the
# other load threads), so the bound allows 20 ms of client overhead on top: 25 ms.
FAIL_FAST_P99 = 0.025
MIN_FAST_FAILS = 50  # so the fail-fast bound can never pass on an empty sample


def test_redis_killed_under_load_and_restarted(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis(["--appendonly", "yes", "--appendfsync", "always"])
    gateway = start_gateway(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_SOCKET_TIMEOUT": "0.5",
        }
    )
    before = gateway.stats()
    with Load(gateway.target, "kill", max_seconds=16, max_requests=30_000) as load:
        load.wait_for_requests(200, timeout=5)
        killed_at = time.monotonic()
        redis_server.kill()
        time.sleep(max(0.0, killed_at + DOWN_SECONDS - time.monotonic()))
        redis_server.restart()  # same port, same AOF: returns once it answers PING
        restarted_at = time.monotonic()
        deadline = restarted_at + RECOVERY_TIMEOUT + 5
        while first_success_after(load.records, restarted_at) is None:
            assert time.monotonic() < deadline, gateway.log_tail()
            time.sleep(0.05)
        time.sleep(1.5)  # normal traffic again, for the record
    end = FaultEnd.read(gateway, load, before)
    records, summary, after = end.records, end.summary, end.stats
    recovered = first_success_after(records, restarted_at)
    fast = [
        r.latency
        for r in records
        if r.code is grpc.StatusCode.UNAVAILABLE and "circuit breaker" in r.message
    ]
    fast_p99 = percentile(fast, 99)
    report(
        end.row(
            "1 redis kill+restart (AOF)",
            recover_s=recovered,
            notes=f"fail-fast n={len(fast)} p99={fast_p99 * 1000:.1f}ms",
        )
    )
    assert len(fast) >= MIN_FAST_FAILS, f"only {len(fast)} calls met the open breaker"
    assert fast_p99 <= FAIL_FAST_P99, f"fail-fast p99 {fast_p99 * 1000:.1f} ms"
    assert recovered is not None
    assert recovered <= RECOVERY_TIMEOUT + 1, f"first success {recovered:.2f}s after restart"
    assert end.lost == [], f"{len(end.lost)} acknowledged writes lost, e.g. {end.lost[:5]}"
    assert summary.bad_reads == 0
    assert after.breaker.opened_total > before.breaker.opened_total
    assert after.breaker.state == pb.CIRCUIT_STATE_CLOSED  # back to normal
