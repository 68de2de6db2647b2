"""Drill 10: ten times the load the pool can serve.

REDIS_MAX_CONNECTIONS=4 and REDIS_POOL_TIMEOUT=0.05, Redis made slow (DEBUG SLEEP 50 ms,
then 10 ms of service, over and over), and 40 calls kept in flight (4 channels x 10). The
pool must hold its bound and shed the excess quickly: Redis never sees more than 4
connections from the server (CLIENT LIST, the drill's own connections left out), the
excess gets RESOURCE_EXHAUSTED within REDIS_POOL_TIMEOUT + 100 ms (p99, client-side), and
the server's memory stays bounded (VmRSS grows by less than 50 MB).

Auto-batching is off here (CACHEGATE_AUTO_BATCH=0): with it, this load is no overload
(40 calls in flight share round trips, and on 2026-11-30 all 5,078 calls were served,
p99 115 ms, at most 4 connections), so the drill keeps the pool's one-call-per-round-trip
capacity that it is built to exceed.
"""

from __future__ import annotations

import grpc
import pytest

from drills.harness import (
    FaultEnd,
    Report,
    Sampler,
    StartGateway,
    StartRedis,
    Stutter,
)
from drills.load import Load, percentile

pytestmark = pytest.mark.drill

MAX_CONNECTIONS = 4
POOL_TIMEOUT = 0.05
SHED_P99 = POOL_TIMEOUT + 0.1
RSS_GROWTH_KB = 50 * 1024
SECONDS = 8.0


def test_ten_times_overload(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "REDIS_POOL_TIMEOUT": str(POOL_TIMEOUT),
            "CACHEGATE_AUTO_BATCH": "0",
        }
    )
    before = gateway.stats()
    rss_start = gateway.rss_kb()
    watcher = redis_server.client(client_name="drill-watcher")

    def server_connections() -> float:
        clients = watcher.client_list()
        return float(sum(1 for c in clients if not str(c.get("name", "")).startswith("drill")))

    load = Load(
        gateway.target,
        "over",
        threads=4,
        inflight=10,
        pace=0.0,
        max_seconds=SECONDS,
        max_requests=20_000,
    )
    with (
        Stutter(redis_server, sleep=0.05, gap=0.01, max_seconds=SECONDS + 5),
        Sampler(server_connections, 0.05, SECONDS + 5) as connections,
        Sampler(lambda: float(gateway.rss_kb()), 0.25, SECONDS + 5) as rss,
        load,
    ):
        load.join()
    end = FaultEnd.read(gateway, load, before)
    records, summary = end.records, end.summary
    shed = [r.latency for r in records if r.code is grpc.StatusCode.RESOURCE_EXHAUSTED]
    shed_p99 = percentile(shed, 99)
    peak_connections = max(connections.values(), default=-1)
    rss_growth = max(rss.values(), default=rss_start) - rss_start
    report(
        end.row(
            "10 overload 10x (pool 4)",
            recover_s=None,
            notes=f"shed p99={shed_p99 * 1000:.0f}ms (n={len(shed)}); redis conns max="
            f"{peak_connections:.0f} ({len(connections.values())} samples); "
            f"rss +{rss_growth / 1024:.1f}MB",
        )
    )
    assert len(shed) >= 100, f"only {len(shed)} calls were shed: no overload"
    assert summary.ok >= 100, "nothing got through"
    assert 0 < peak_connections <= MAX_CONNECTIONS, f"{peak_connections} connections in Redis"
    assert set(summary.failed) == {"RESOURCE_EXHAUSTED"}, summary.failed_text
    assert shed_p99 <= SHED_P99, f"shedding p99 {shed_p99 * 1000:.0f} ms"
    assert rss_growth < RSS_GROWTH_KB, f"RSS grew by {rss_growth / 1024:.1f} MB"
    assert end.lost == []
    assert summary.bad_reads == 0
