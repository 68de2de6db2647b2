"""Drill 17: one client keeps killing workers; the supervisor keeps the port.

Two workers on a Redis backend. The drill SIGKILLs a worker (by PID, alternating between
the two, each time once both serve again) up to `KILLS` times within `SECONDS`, the way a
request that crashes or OOMs a worker would, while a bystander keeps calling over its
own connections, and a prober sends a Get over a FRESH connection every 0.1 s.
Expected: the supervisor never exits (no "workers keep dying"); every death is logged
with its cause (signal name) and the worker's peak RSS, and followed by a restart after a
backoff; the port answers throughout (every fresh-connection probe is OK, at the latest
on one retry 0.2 s later, as a client retries UNAVAILABLE: a connect that lands in the
killed worker's accept queue at the instant of the kill is reset; the other worker serves
while one restarts) and afterwards; the bystander sees OK, or UNAVAILABLE
only within `AFTER_KILL` seconds of a kill (which clients retry); its p99 stays <= 50 ms;
every acknowledged write survives.

Why a bystander's channel can fail for up to a second after a kill: its connection to
the killed worker breaks while the kernel tears the worker's sockets down, and gRPC
reconnects at once; a reconnect that lands on the dying listener is refused, and the
channel then fails calls fast until its reconnect backoff (1 s +-20%) ends. Nothing in
the server can order a SIGKILLed process's teardown; fresh connections are not affected.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import grpc
import pytest

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from drills.attack import Bystander, MemoryWatch, attack_row, workers_env
from drills.harness import Gateway, Report, Sampler, StartGateway, StartRedis
from drills.load import make_channel, read_back

pytestmark = pytest.mark.drill

KILLS = 10
MIN_KILLS = 8
SECONDS = 25.0
P99_MS = 50.0
AFTER_KILL = 2.0
PROBE_EVERY = 0.1


def _latest_pids(entries: list[dict[str, Any]]) -> dict[int, int]:
    return {e["worker_id"]: e["pid"] for e in entries if e.get("msg") == "worker started"}


def _all_serving(entries: list[dict[str, Any]], killed: list[int]) -> bool:
    """Both workers serve: each one's latest start was not killed and logged "serving"."""
    starts: dict[int, int] = {}
    serving: dict[int, int] = {}
    for e in entries:
        if e.get("msg") == "worker started":
            starts[e["worker_id"]] = starts.get(e["worker_id"], 0) + 1
        elif e.get("msg") == "serving" and "worker" in e:
            serving[e["worker"]] = serving.get(e["worker"], 0) + 1
    alive = set(_latest_pids(entries).values()).isdisjoint(killed)
    return alive and len(starts) == 2 and starts == serving


def _answers(gateway: Gateway) -> str:
    """A Get over a fresh connection: the code's name."""
    with make_channel(gateway.target) as channel:
        try:
            cache_pb2_grpc.CacheServiceStub(channel).Get(pb.GetRequest(key="probe"), timeout=2)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return "OK"


def _probe(gateway: Gateway) -> float:
    """1.0: a fresh connection answered OK; 0.5: only its one retry did; 0.0: neither."""
    if _answers(gateway) == "OK":
        return 1.0
    time.sleep(0.2)
    return 0.5 if _answers(gateway) == "OK" else 0.0


def test_worker_deaths_never_take_the_port(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(workers_env(redis_server.url, workers=2))
    deadline = time.monotonic() + 20
    while not _all_serving(gateway.logs(), []) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed: list[int] = []
    kill_times: list[float] = []
    with MemoryWatch(gateway, max_seconds=SECONDS + 30) as memory:
        bystander = Bystander(gateway.target, threads=4, max_seconds=SECONDS + 5)
        prober = Sampler(lambda: _probe(gateway), PROBE_EVERY, SECONDS + 5)
        with bystander, prober:
            end = time.monotonic() + SECONDS
            while len(killed) < KILLS and time.monotonic() < end and gateway.alive():
                entries = gateway.logs()
                if not _all_serving(entries, killed):
                    time.sleep(0.05)
                    continue
                victim = _latest_pids(entries)[len(killed) % 2]
                time.sleep(0.3)  # let the bystander's connections settle on both
                os.kill(victim, signal.SIGKILL)  # a worker of our own gateway, by PID
                kill_times.append(time.monotonic())
                killed.append(victim)
            # Until both serve again (bounded), then the port must still answer.
            settle = time.monotonic() + 15
            while gateway.alive() and time.monotonic() < settle:
                if _all_serving(gateway.logs(), killed):
                    break
                time.sleep(0.1)
        after = _answers(gateway) if gateway.alive() else "supervisor gone"
    entries = gateway.logs()
    deaths = [e for e in entries if e.get("msg") == "worker died unexpectedly"]
    gave_up = [e for e in entries if "keep dying" in str(e.get("msg"))]
    causes = sorted({str(e.get("signal", e.get("exit_code"))) for e in deaths})
    rss = [e.get("max_rss_mb") for e in deaths]
    delays = [e.get("restart_in_seconds") for e in deaths]
    lost = len(read_back(gateway.target, bystander.load.acked)) if gateway.alive() else None
    summary = bystander.summary
    probes = [v for _, v in prober.samples]
    failed_probes = sum(1 for v in probes if v == 0.0)
    retried_probes = sum(1 for v in probes if v == 0.5)
    unexplained = [
        r
        for r in bystander.load.records
        if not r.ok and not any(-0.1 <= r.start - t <= AFTER_KILL for t in kill_times)
    ]
    report(
        attack_row(
            "17 worker deaths",
            bystander,
            memory,
            lost=lost,
            notes=(
                f"kills={len(killed)} deaths logged={len(deaths)} causes={causes} "
                f"max_rss_mb={rss} restart_in_s={delays} supervisor "
                f"{'up' if gateway.alive() else f'EXITED {gateway.proc.returncode}'} "
                f"after={after} fresh-connection probes failed {failed_probes}/{len(probes)} "
                f"(OK on retry {retried_probes}); "
                f"bystander failures later than {AFTER_KILL}s after a kill: {len(unexplained)}"
            ),
        )
    )
    assert not gave_up, gateway.log_tail()
    assert gateway.alive(), f"the supervisor exited:\n{gateway.log_tail()}"
    assert len(killed) >= MIN_KILLS, f"only {len(killed)} kills in {SECONDS}s"
    assert after == "OK"
    assert [e["pid"] for e in deaths] == killed
    assert all(e.get("signal") == "SIGKILL" and e.get("max_rss_mb", 0) > 0 for e in deaths)
    assert all(e.get("restart_in_seconds", 99) <= 30 for e in deaths)
    assert len(probes) >= SECONDS / PROBE_EVERY / 4
    assert failed_probes == 0
    assert set(summary.failed) <= {"UNAVAILABLE"}, summary.failed
    assert not unexplained, unexplained[:5]
    assert bystander.p99_ms() <= P99_MS
    assert lost == 0
    assert not memory.killed
