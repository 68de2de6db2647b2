"""Drill 25: one tenant filling the stale copy cannot push out another's (issue 12's
"one caller never costs another its service", for stale-if-error answers).

2 workers on Redis with tokens, the default 16 MiB copy per worker. The victim (bob)
writes KEYS_EACH small values on a connection to each worker. Then the attacker (eve,
in its own process, see attackers.py) writes FILL_KEYS distinct 512 KiB values and
reads each back with a stale-if-error allowance, about 7 times what both copies hold,
while a bystander (carol) runs unary calls. Redis is then SIGKILLed and bob reads his
keys with an allowance on the same connections.

Passes when every one of bob's keys is answered stale with its own value (the copy
evicts from the tenant holding the most bytes; one LRU order for all would have pushed
them out: the drill fails with `owner_of=None` in runtime/_compose.py), eve's first
keys are gone from the copy but her last ones are answered (she keeps the room bob
leaves); the copy never passes its bound; each worker's peak RSS stays within the
memory budget plus the copy's bound plus the fixed base; no worker dies; the bystander
keeps p99 <= 50 ms, no failures, and its acknowledged writes read back.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from drills.attack import (
    BASE_MB,
    BUDGET_MB,
    BYSTANDER_P99_MS,
    Bystander,
    MemoryWatch,
    attack_row,
    gateway_pids,
    tokens_file,
    workers_env,
)
from drills.harness import Report, Sampler, StartGateway, StartRedis
from drills.load import read_back
from drills.test_24_stale_copy_bound import (
    BOUND,
    CONNECTIONS,
    MIB,
    PER_CONNECTION,
    channel_per_worker,
    fill_copies,
    read_stale,
    stale_copy_bytes,
)

pytestmark = pytest.mark.drill

TOKENS = {
    "bob": "bob-token-0123456789abcd",
    "eve": "eve-token-0123456789abcd",
    "carol": "carol-token-0123456789ab",
}
KEYS_EACH = 8
SMALL_BYTES = 4096


def bearer(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[tenant]}"),)


def test_one_tenant_cannot_push_out_anothers_stale_copy(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report, tmp_path: Path
) -> None:
    tokens = tokens_file(tmp_path, TOKENS)
    redis_server = start_redis()
    gateway = start_gateway(
        workers_env(redis_server.url, 2, CACHEGATE_TOKENS_FILE=str(tokens)), http=True
    )
    workers_before = sorted(gateway_pids(gateway))
    channels = channel_per_worker(gateway.target, bearer("bob"))
    kept: dict[tuple[int, str], bytes] = {}
    for worker, channel in channels.items():
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        for index in range(KEYS_EACH):
            key = f"bob-{worker}-{index}"
            value = f"{key}:".encode().ljust(SMALL_BYTES, b"b")
            stub.SetEx(
                pb.SetExRequest(key=key, value=value, ttl_seconds=600),
                timeout=5,
                metadata=bearer("bob"),
            )
            kept[(worker, key)] = value
    sampler = Sampler(lambda: stale_copy_bytes(gateway), interval=0.1, max_seconds=60)
    bystander = Bystander(gateway.target, max_seconds=40, metadata=bearer("carol"))
    with MemoryWatch(gateway) as memory, sampler, bystander:
        result = fill_copies(gateway.target, TOKENS["eve"])
        time.sleep(0.3)  # the sampler's last look
    lost = read_back(gateway.target, bystander.load.acked, metadata=bearer("carol"))
    copy_peak = max(sampler.values(), default=0.0)
    redis_server.kill()
    answers = {
        (worker, key): read_stale(
            cache_pb2_grpc.CacheServiceStub(channels[worker]), key, bearer("bob")
        )
        for worker, key in kept
    }
    first = [f"fill-{c}-{n}" for c in range(CONNECTIONS) for n in range(3)]
    last = [f"fill-{c}-{PER_CONNECTION - 1}" for c in range(CONNECTIONS)]
    eve_first = Counter(
        read_stale(cache_pb2_grpc.CacheServiceStub(channel), key, bearer("eve"))[0]
        for channel in channels.values()
        for key in first
    )
    eve_last = Counter(
        read_stale(cache_pb2_grpc.CacheServiceStub(channel), key, bearer("eve"))[0]
        for channel in channels.values()
        for key in last
    )
    for channel in channels.values():
        channel.close()
    workers_after = sorted(gateway_pids(gateway))
    kept_right = sum(1 for k, v in kept.items() if answers[k] == ("stale", v))
    report(
        attack_row(
            "25 stale copy fairness",
            bystander,
            memory,
            lost=len(lost),
            notes=f"attacker (eve) {result['status']}; cachegate_stale_copy_bytes peak "
            f"{copy_peak / MIB:.2f} MiB (bound {BOUND / MIB:.0f}); Redis killed: bob's keys "
            f"answered stale {kept_right}/{len(kept)} "
            f"({dict(Counter(a[0] for a in answers.values()))}); eve's first keys "
            f"{dict(eve_first)}, her last keys {dict(eve_last)}",
        )
    )
    assert not memory.killed, f"killed at the 3 GB guard: {memory.killed}"
    assert workers_after == workers_before, "a worker died"
    assert result["status"] == {"OK": CONNECTIONS * PER_CONNECTION}, result
    assert copy_peak <= BOUND, f"the copy held {copy_peak:.0f} bytes > {BOUND}"
    assert kept_right == len(kept), {k: a[0] for k, a in answers.items()}
    assert not eve_first.get("stale"), dict(eve_first)
    # Each of eve's last keys lives in the copy of the worker that served it: of the
    # two workers asked, one answers it stale.
    assert eve_last.get("stale", 0) >= len(last), dict(eve_last)
    peak = memory.max_worker_mb
    limit = BUDGET_MB + BOUND / MIB + BASE_MB
    assert peak <= limit, f"peak RSS {peak:.0f} MB > {BUDGET_MB} + {BOUND // MIB} + {BASE_MB}"
    assert bystander.p99_ms() <= BYSTANDER_P99_MS, bystander.text()
    assert not bystander.summary.failed, bystander.text()
    assert bystander.summary.ok > 100, bystander.text()
    assert lost == []
