"""Drill 5: Redis at `maxclients`: every new connection is turned away.

The server runs with REDIS_MAX_CONNECTIONS=4. Its connections are cut (CLIENT KILL) and
their places taken by idle raw connections up to a small `maxclients`, so every
connection it opens next is answered "ERR max number of clients reached" and closed.
The breaker threshold is set out of reach here (REDIS_FAILURE_THRESHOLD=1000000), so that
every call meets Redis and every caller's message can be checked (drill 1 covers the
breaker). Expected: a clear status for every call (UNAVAILABLE, naming the cause), no
crash (the process lives, health "" stays SERVING), and recovery once the idle clients
leave and maxclients is back, within REDIS_RECOVERY_TIMEOUT + 1 s.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import Counter

import grpc
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
from redisprocs import HOST

pytestmark = pytest.mark.drill

MAXCLIENTS = 8
FULL_SECONDS = 3.0
CAUSE = "max number of clients"


def fill(port: int, limit: int) -> list[socket.socket]:
    """Open idle connections until Redis refuses one (at most `limit`); the accepted ones."""
    held: list[socket.socket] = []
    for _ in range(limit):
        sock = socket.create_connection((HOST, port), timeout=2)
        sock.sendall(b"PING\r\n")
        answer = sock.recv(128)
        if answer != b"+PONG\r\n":
            sock.close()
            assert CAUSE.encode() in answer, answer
            return held
        held.append(sock)
    raise AssertionError(f"Redis accepted {limit} connections with maxclients {MAXCLIENTS}")


def test_maxclients_reached(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_MAX_CONNECTIONS": "4",
            "REDIS_FAILURE_THRESHOLD": "1000000",
        }
    )
    before = gateway.stats()
    admin = redis_server.client()
    admin.ping()
    admin.config_set("maxclients", MAXCLIENTS)
    admin.execute_command("CLIENT", "KILL", "TYPE", "normal")  # SKIPME yes: not this one
    fillers = fill(redis_server.port, MAXCLIENTS + 5)
    health_during: list[str] = []
    try:
        with Load(gateway.target, "maxcl", max_seconds=12) as load:
            full_until = time.monotonic() + FULL_SECONDS
            while time.monotonic() < full_until:
                health_during.append(gateway.health(""))
                time.sleep(0.25)
            for sock in fillers:
                sock.close()
            fillers = []
            admin.config_set("maxclients", 10000)
            released_at = time.monotonic()
            deadline = released_at + RECOVERY_TIMEOUT + 5
            while first_success_after(load.records, released_at) is None:
                assert time.monotonic() < deadline, gateway.log_tail()
                time.sleep(0.05)
            time.sleep(1.5)
    finally:
        for sock in fillers:
            with contextlib.suppress(OSError):
                sock.close()
    end = FaultEnd.read(gateway, load, before)
    records, summary = end.records, end.summary
    recovered = first_success_after(records, released_at)
    during = [r for r in records if r.start < released_at]
    named = sum(1 for r in during if CAUSE in r.message)
    unclear = Counter(r.message for r in during if not r.ok and CAUSE not in r.message)
    report(
        end.row(
            "5 redis maxclients reached",
            recover_s=recovered,
            notes=f"{len(during)} calls while full: {named} named the cause, "
            f"{sum(unclear.values())} did not; "
            f"health ''={'/'.join(sorted(set(health_during)))}; alive={gateway.alive()}",
        )
    )
    assert gateway.alive(), gateway.log_tail()
    assert set(health_during) == {"SERVING"}, health_during
    failed_codes = {r.code for r in during if not r.ok}
    assert failed_codes == {grpc.StatusCode.UNAVAILABLE}, summary.failed_text
    assert not [r for r in during if r.ok and r.end < released_at], "calls got through"
    assert named >= 1, "no caller was told why"
    assert not unclear, f"callers not told the cause: {dict(unclear)}"
    assert recovered is not None
    assert recovered <= RECOVERY_TIMEOUT + 1, f"first success {recovered:.2f}s after release"
    assert end.lost == [], f"{len(end.lost)} acknowledged writes lost, e.g. {end.lost[:5]}"
    assert summary.bad_reads == 0
