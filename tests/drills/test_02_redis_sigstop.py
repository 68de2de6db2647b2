"""Drill 2: Redis is SIGSTOPped for 3 s under load, then SIGCONTed.

A stopped Redis keeps its sockets open: nothing is refused, nothing answers. The server
runs with the default REDIS_SOCKET_TIMEOUT (5 s), longer than the callers' 500 ms
deadlines, so it is the callers' deadlines that must bound every call. With
REDIS_HEALTH_CHECK_INTERVAL=1 (default 30), connections idle for a second get their PING on
checkout during the stall, which makes that path part of the drill every time (with the
default it is hit only when a new connection is opened mid-stall). No RPC may outlive
its deadline, and the server must let go of Redis when the deadline passes: no RPC is
handled for longer than 1 s (the server's own grpc_server_handling_seconds histogram),
and the pool's used connections, sampled from /metrics, never exceed the number of
callers plus one (a call ending while its caller's next one starts). A caller's
own short deadline is no verdict on Redis, so the breaker is expected to stay closed.
Nothing acknowledged may be lost.
"""

from __future__ import annotations

import time

import grpc
import pytest

from drills.harness import (
    RECOVERY_TIMEOUT,
    FaultEnd,
    Report,
    Sampler,
    StartGateway,
    StartRedis,
    first_success_after,
)
from drills.load import Load

pytestmark = pytest.mark.drill

PAUSE_SECONDS = 3.0
DEADLINE = 0.5
THREADS = 4
# Client-side slack over the deadline: gRPC's own timer, the callback and a busy machine.
DEADLINE_SLACK = 0.1
# A histogram bucket bound: twice the deadline, so only a real overrun counts.
SERVER_HOLD_LIMIT = "1.0"


def test_redis_sigstopped_then_continued(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_HEALTH_CHECK_INTERVAL": "1",
        },
        http=True,
    )
    before = gateway.stats()
    load = Load(gateway.target, "stop", threads=THREADS, deadline=DEADLINE, max_seconds=14)
    used = Sampler(lambda: gateway.metric("db_client_connection_count", 'state="used"'), 0.05, 20)
    with load, used:
        load.wait_for_requests(200, timeout=5)
        paused_at = time.monotonic()
        redis_server.pause()
        try:
            time.sleep(PAUSE_SECONDS)
        finally:
            redis_server.resume()
        resumed_at = time.monotonic()
        deadline = resumed_at + RECOVERY_TIMEOUT + 5
        while first_success_after(load.records, resumed_at) is None:
            assert time.monotonic() < deadline, gateway.log_tail()
            time.sleep(0.05)
        time.sleep(1.5)
    end = FaultEnd.read(gateway, load, before)
    records, summary = end.records, end.summary
    recovered = first_success_after(records, resumed_at)
    timed_out = [r for r in records if r.code is grpc.StatusCode.DEADLINE_EXCEEDED]
    used_max = max(used.values(paused_at, resumed_at), default=-1)
    held_long = gateway.handled_slower_than(SERVER_HOLD_LIMIT)
    report(
        end.row(
            "2 redis SIGSTOP 3s",
            recover_s=recovered,
            notes=f"deadline={DEADLINE * 1000:.0f}ms; used conns max={used_max:.0f}; "
            f"server-side >{SERVER_HOLD_LIMIT}s={held_long}",
        )
    )
    assert len(timed_out) >= 10, "the pause did not hold calls up: nothing was drilled"
    assert summary.max_latency <= DEADLINE + DEADLINE_SLACK, (
        f"an RPC took {summary.max_latency * 1000:.0f} ms with a {DEADLINE * 1000:.0f} ms deadline"
    )
    assert held_long == 0, f"the server held {held_long} RPCs for over {SERVER_HOLD_LIMIT}s"
    assert 0 <= used_max <= THREADS + 1, f"{used_max} connections in use for {THREADS} callers"
    assert recovered is not None
    assert recovered <= RECOVERY_TIMEOUT + 1, f"first success {recovered:.2f}s after SIGCONT"
    assert end.lost == [], f"{len(end.lost)} acknowledged writes lost, e.g. {end.lost[:5]}"
    assert summary.bad_reads == 0
