"""Drill 4: `CLIENT KILL TYPE normal` a few times under load; Redis itself stays up.

Every connection the server holds is cut, idle or in flight. Get and SetEx are
idempotent, so the server retries them on a fresh connection: callers must see no error
at all, and nothing acknowledged may be lost.
"""

from __future__ import annotations

import time

import pytest

from drills.harness import FaultEnd, Report, StartGateway, StartRedis
from drills.load import Load

pytestmark = pytest.mark.drill

KILLS = 10
EVERY = 0.3


def test_client_kill_is_invisible(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    gateway = start_gateway({"CACHEGATE_BACKEND": "redis", "REDIS_URL": redis_server.url})
    before = gateway.stats()
    admin = redis_server.client()
    killed: list[int] = []
    with Load(gateway.target, "ckill", max_seconds=12) as load:
        load.wait_for_requests(200, timeout=5)
        for _ in range(KILLS):
            killed.append(int(admin.execute_command("CLIENT", "KILL", "TYPE", "normal")))
            time.sleep(EVERY)
    end = FaultEnd.read(gateway, load, before)
    summary, after = end.summary, end.stats
    report(
        end.row(
            "4 CLIENT KILL TYPE normal x10",
            recover_s=None,
            notes=f"connections killed={sum(killed)} retries="
            f"{after.calls.retries_total - before.calls.retries_total}",
        )
    )
    assert sum(killed) >= KILLS, f"CLIENT KILL found only {killed} connections: nothing was drilled"
    assert dict(summary.failed) == {}, f"callers saw errors: {summary.failed_text}"
    assert end.lost == [], f"{len(end.lost)} acknowledged writes lost, e.g. {end.lost[:5]}"
    assert summary.bad_reads == 0
