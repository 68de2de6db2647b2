"""Drill 23: Subscribe requests past the watch limits.

A subscription watches at most 1000 keys and 100 prefixes (MAX_WATCHED_KEYS,
MAX_WATCHED_PREFIXES in rpc/_invalidations.py), each no longer than a key may be
(CACHEGATE_MAX_KEY_BYTES). An attacker (in its own process, see attackers.py) sends,
in a bounded loop on 4 connections, requests past each of them: 1001 keys (short, and
of 1 KiB each), 101 prefixes, a 1025-byte key, a 1025-byte prefix, and EMPTY_BYTES of
empty keys and of empty prefixes (the most entries a request of that size can hold,
each 2 bytes on the wire), while a bystander's unary calls run on 2 workers.

Passes when every such request gets INVALID_ARGUMENT naming the field and its limit
and none is admitted; each answer comes at once (the slowest within ANSWER_S: a
limit checked only after parsing millions of entries takes seconds); each worker's
peak RSS stays within the memory budget plus the fixed base, and grows by at most
GROWTH_MB; no worker dies; the bystander keeps p99 within issue 12's
BYSTANDER_P99_MS, no failures, and its acknowledged writes read back.
"""

from __future__ import annotations

import pytest

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

pytestmark = pytest.mark.drill

MIB = 1024 * 1024
EMPTY_BYTES = RECEIVE_LIMIT - 64  # within grpc's receive limit
CONNECTIONS = 4
ROUNDS = 5
# Each answer within a second: a limit checked only after parsing millions of
# entries took 3.5-4.7 s here, one counted on the wire takes a receive and a walk
# of at most 1,100 fields (0.07-0.5 s seen with other tests loading the host).
ANSWER_S = 1.0
# grpc buffers a request whole before any of our code sees it (its receive limit is
# one number for the server, CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES), and hands it on as
# a copy: two copies of one request per connection at once, and room for the
# allocator. Parsed before counting, the same requests grew a worker 330-590 MB.
GROWTH_MB = 2 * CONNECTIONS * EMPTY_BYTES / MIB + 32
# What each request must be told: the field, and its limit.
NAMED = {
    "1001 keys": "at most 1000 keys",
    "1001 keys of 1 KiB": "at most 1000 keys",
    "101 prefixes": "at most 100 prefixes",
    "a 1025-byte key": "the limit is 1024 bytes",
    "a 1025-byte prefix": "CACHEGATE_MAX_KEY_BYTES",
    "empty keys": "at most 1000 keys",
    "empty prefixes": "at most 100 prefixes",
}


def test_watch_limits(start_redis: StartRedis, start_gateway: StartGateway, report: Report) -> None:
    redis_server = start_redis()
    gateway = start_gateway(workers_env(redis_server.url, 2))
    workers_before = sorted(gateway_pids(gateway))
    with MemoryWatch(gateway) as memory, Bystander(gateway.target, max_seconds=40) as bystander:
        result = run_attacker(
            "bad-subscribe",
            gateway.target,
            "--streams",
            str(CONNECTIONS),
            "--batches",
            str(ROUNDS),
            "--bytes",
            str(EMPTY_BYTES),
            "--seconds",
            "30",
            "--deadline",
            "20",
        )
    workers_after = sorted(gateway_pids(gateway))
    lost = lost_writes(gateway, bystander.load.acked)
    growth = max((memory.peak_kb[pid] - memory.start_kb[pid]) / 1024 for pid in workers_before[1:])
    slowest = {name: round(seconds, 3) for name, seconds in result["slowest"].items()}
    report(
        attack_row(
            "23 watch limits",
            bystander,
            memory,
            lost=len(lost),
            notes=f"requests {result['status']}; slowest answer s {slowest}; "
            f"worker growth {growth:.0f} MB",
        )
    )
    assert_withstood(memory, gateway, workers_before, workers_after)
    expected = {f"{name}: INVALID_ARGUMENT": CONNECTIONS * ROUNDS for name in NAMED}
    assert result["status"] == expected, result["status"]
    for name, text in NAMED.items():
        assert text in result["messages"][name], (name, result["messages"][name])
    assert max(slowest.values()) <= ANSWER_S, f"answers took (s): {slowest}"
    assert growth <= GROWTH_MB, f"a worker grew {growth:.0f} MB"
    assert bystander.p99_ms() <= BYSTANDER_P99_MS, bystander.text()
    assert not bystander.summary.failed, bystander.text()
    assert bystander.summary.ok > 100, bystander.text()
    assert lost == []
