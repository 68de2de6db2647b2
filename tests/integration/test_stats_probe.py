"""Stats serves the health prober's latest Redis figures, with their age, without a
Redis round trip of its own: a burst of Stats sends Redis at most a PING and an INFO a
second (counted by the real redis-server's INFO commandstats)."""

from __future__ import annotations

import threading
import time

from cachegate.v1 import cache_pb2 as pb
from conftest import RunningServer
from redisprocs import RedisProcess


def probe_commands(redis_server: RedisProcess) -> dict[str, int]:
    """PING and INFO calls the redis-server has served since its last CONFIG RESETSTAT."""
    stats = redis_server.client().info("commandstats")
    return {
        name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("ping", "info")
    }


def test_a_burst_of_stats_sends_redis_at_most_a_probe_a_second(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    stub = redis_backed_server.stub
    time.sleep(1.1)  # the start-up probe is now stale: the burst's first Stats asks for one
    redis_server.client().config_resetstat()
    replies: list[pb.StatsResponse] = []
    lock = threading.Lock()

    def burst() -> None:
        for _ in range(50):
            reply = stub.Stats(pb.StatsRequest(), timeout=5)
            with lock:
                replies.append(reply)

    start = time.monotonic()
    threads = [threading.Thread(target=burst) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    seconds = time.monotonic() - start
    time.sleep(0.2)  # a refresh the burst asked for has landed in the counts
    sent = probe_commands(redis_server)
    ages = [reply.redis.age_seconds for reply in replies]
    print(
        f"{len(replies)} Stats in {seconds:.2f}s: Redis saw {sent['ping']} PING and "
        f"{sent['info']} INFO; ages {min(ages):.3f}..{max(ages):.3f}s"
    )
    assert len(replies) == 200
    assert all(reply.redis.healthy for reply in replies)
    assert all(reply.redis.version for reply in replies)
    # At most one probe per started second of the burst, plus the one it began with.
    allowed = int(seconds) + 2
    assert sent["ping"] <= allowed, sent
    assert sent["info"] <= allowed, sent
    # Each reply says how old its figures are; the first ones were over a second old.
    assert max(ages) >= 1.0
    assert all(age >= 0.0 for age in ages)


def test_stats_figures_catch_up_within_a_second_or_so(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    """Stale figures are refreshed in the background: Redis's death shows in Stats
    (healthy false, the error, a young age) without any Stats waiting for Redis."""
    stub = redis_backed_server.stub
    assert stub.Stats(pb.StatsRequest(), timeout=5).redis.healthy
    redis_server.kill()
    deadline = time.monotonic() + 10
    reply = stub.Stats(pb.StatsRequest(), timeout=5)
    while reply.redis.healthy and time.monotonic() < deadline:
        time.sleep(0.2)
        reply = stub.Stats(pb.StatsRequest(), timeout=5)
    print(f"after the kill: healthy={reply.redis.healthy} age={reply.redis.age_seconds:.3f}s")
    assert not reply.redis.healthy
    assert reply.redis.error
    assert reply.redis.age_seconds < 2.0
