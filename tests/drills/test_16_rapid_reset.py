"""Drill 16: HTTP/2 rapid reset and stream flood (issue 12, finding 7).

Both attacks speak HTTP/2 directly (drills/h2attack.py, PyPI's `h2`) on ONE connection to
a gateway of 2 workers on Redis, while a bystander's unary SetEx/Get run on their own
connections.

- Rapid reset: open a Get stream and reset it at once, over and over (at most 40,000
  streams, at most 5 s). grpc core (1.85) has no RST_STREAM rate limit and sends no
  GOAWAY for it; what it offers is the per-connection stream limit with overload
  protection: a reset stream counts against SETTINGS_MAX_CONCURRENT_STREAMS until the
  server has freed its call, so one connection never queues more than that many calls.
  The drill prints the attack's rate, the server CPU it cost (the gateway's processes,
  less the bystander's own share measured before the attack), whether a GOAWAY came,
  and the bystander's p50/p99 during the attack; it asserts the advertised limit, the
  bystander's p99, and that no worker died.
- Stream flood: 2,000 Get streams opened at once (HEADERS without END_STREAM and no
  body, so each call waits for its request), ignoring the advertised limit, held 2 s.
  Before the limit, one connection took every RPC slot of its worker (1,000 calls,
  1,000 threads) and the bystander's calls there got RESOURCE_EXHAUSTED. Now the
  streams past CACHEGATE_MAX_STREAMS_PER_CONNECTION are refused (RST_STREAM
  REFUSED_STREAM) without becoming calls, the worker's threads stay bounded, and the
  bystander is served.
"""

from __future__ import annotations

import time

import pytest

from drills.attack import (
    Bystander,
    MemoryWatch,
    attack_row,
    cpu_seconds,
    gateway_pids,
    thread_count,
    workers_env,
)
from drills.h2attack import GET_PATH, rapid_reset, stream_flood
from drills.harness import Gateway, Report, Sampler, StartGateway, StartRedis
from drills.load import percentile, read_back

pytestmark = pytest.mark.drill

PER_CONNECTION = 100  # CACHEGATE_MAX_STREAMS_PER_CONNECTION's default
P99_MS = 50.0
RESET_STREAMS, RESET_SECONDS = 40_000, 5.0
FLOOD_STREAMS, FLOOD_HOLD = 2_000, 2.0
# A worker's threads: the hot RPC threads, grpc's and ours, plus one per held call.
THREADS_BOUND = 4 * PER_CONNECTION


def start(start_redis: StartRedis, start_gateway: StartGateway) -> tuple[Gateway, set[int]]:
    redis_server = start_redis()
    gateway = start_gateway(workers_env(redis_server.url))
    pids = set(gateway_pids(gateway))
    assert len(pids) == 3, f"expected a supervisor and 2 workers: {pids}"
    return gateway, pids


def window_ms(bystander: Bystander, since: float, until: float) -> tuple[float, float, int]:
    """The bystander's p50 and p99 (ms) over the calls it started in [since, until]."""
    latencies = [r.latency for r in bystander.load.records if since <= r.start <= until]
    return percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000, len(latencies)


def test_rapid_reset_on_one_connection(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    gateway, pids = start(start_redis, start_gateway)
    bystander = Bystander(gateway.target, max_seconds=RESET_SECONDS + 10)
    with MemoryWatch(gateway, max_seconds=60) as memory, bystander:
        time.sleep(0.5)  # connections up
        calm_cpu, calm_start = cpu_seconds(list(pids)), time.monotonic()
        time.sleep(1.5)  # the bystander alone: its own CPU cost
        began, cpu_before = time.monotonic(), cpu_seconds(list(pids))
        bystander_rate = (cpu_before - calm_cpu) / (began - calm_start)
        attack = rapid_reset(
            "127.0.0.1", gateway.port, max_streams=RESET_STREAMS, max_seconds=RESET_SECONDS
        )
        ended, cpu_after = time.monotonic(), cpu_seconds(list(pids))
        time.sleep(0.5)  # and after it
    spent = cpu_after - cpu_before
    by_attack = max(0.0, spent - bystander_rate * (ended - began))
    p50, p99, during = window_ms(bystander, began, ended)
    alive = set(gateway_pids(gateway))
    lost = read_back(gateway.target, bystander.load.acked)
    report(
        attack_row(
            "16 rapid reset",
            bystander,
            memory,
            lost=len(lost),
            notes=f"{attack.text()}; server CPU {spent:.2f}s in {ended - began:.2f}s, "
            f"{by_attack:.2f}s of it the attack's ({by_attack / max(attack.streams, 1) * 1e6:.0f}"
            f" us/stream); bystander during the attack n={during} p50={p50:.1f}ms "
            f"p99={p99:.1f}ms",
        )
    )
    assert attack.streams >= 1_000, "the attack never got going"
    assert attack.server_max_streams == PER_CONNECTION, "no per-connection stream limit"
    # The bystander's p99 over the calls made during the attack (not diluted by the
    # calm before and after it).
    assert p99 <= P99_MS, f"bystander during the attack: p50={p50:.1f}ms p99={p99:.1f}ms"
    assert bystander.summary.ok >= 100, bystander.text()
    assert not bystander.summary.failed, bystander.text()
    assert memory.killed == []
    assert alive == pids, f"workers before {pids}, after {alive}"
    assert lost == []


def test_stream_flood_on_one_connection(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    gateway, pids = start(start_redis, start_gateway)
    workers = sorted(pids - {gateway.pid})
    bystander = Bystander(gateway.target, max_seconds=FLOOD_HOLD + 10)

    def most_threads() -> float:
        return float(max(thread_count(pid) for pid in workers))

    with (
        MemoryWatch(gateway, max_seconds=60) as memory,
        bystander,
        Sampler(most_threads, 0.05, FLOOD_HOLD + 15) as threads,
    ):
        time.sleep(1.0)
        flood = stream_flood(
            "127.0.0.1",
            gateway.port,
            max_streams=FLOOD_STREAMS,
            max_seconds=FLOOD_HOLD + 5,
            hold=FLOOD_HOLD,
            path=GET_PATH,
        )
        time.sleep(0.5)
    refused = flood.resets.get("REFUSED_STREAM", 0)
    peak_threads = max(threads.values(), default=0.0)
    alive = set(gateway_pids(gateway))
    lost = read_back(gateway.target, bystander.load.acked)
    report(
        attack_row(
            "16 stream flood",
            bystander,
            memory,
            lost=len(lost),
            notes=f"{flood.text()}; most threads in a worker {peak_threads:.0f}",
        )
    )
    assert flood.streams == FLOOD_STREAMS, "the flood was cut short"
    assert refused >= FLOOD_STREAMS - PER_CONNECTION, f"only {refused} streams refused"
    assert peak_threads <= THREADS_BOUND, f"a worker ran {peak_threads:.0f} threads"
    assert not bystander.summary.failed, bystander.text()
    assert bystander.p99_ms() <= P99_MS, bystander.text()
    assert memory.killed == []
    assert alive == pids, f"workers before {pids}, after {alive}"
    assert lost == []
