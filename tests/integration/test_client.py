"""The thin client against real servers: CacheClient, RedisCache, near cache, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cachegate.client import (
    CacheClient,
    CacheClientError,
    CacheUnavailableError,
    DeadlineExceededError,
    Delete,
    Get,
    InvalidRequestError,
    NearCache,
    Operation,
    RedisCache,
    Result,
    SetEx,
)
from cachegate.v1 import cache_pb2 as pb
from conftest import RunningServer, StartServer
from redisprocs import RedisProcess, wait_until

# A script written against the migration guide's old RedisCache, unchanged but for
# the import line.
LEGACY_SCRIPT = textwrap.dedent(
    """
    import logging
    from cachegate.client import RedisCache   # was: from api.cache import RedisCache

    logger = logging.getLogger(__name__)
    cache = RedisCache()
    cache.set("user:1", "alice")
    cache.set("blob", b"\\x00\\xff", ttl=60)
    assert cache.get("user:1") == b"alice", cache.get("user:1")
    assert cache.get("blob") == b"\\x00\\xff"
    assert cache.get("nobody") is None
    health = cache.health_check()
    assert health["healthy"] is True, health
    assert health["circuit_state"] == "closed"
    assert set(health["pool"]) == {
        "created_connections", "available_connections", "in_use_connections"}
    try:
        result = cache.get("key")
    except Exception as e:
        logger.error(f"Cache error: {e}")
        result = None
    print("legacy ok")
    """
)


def run_legacy(target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LEGACY_SCRIPT],
        env={**os.environ, "CACHEGATE_TARGET": target},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_legacy_script_runs_unchanged_on_memory(memory_server: RunningServer) -> None:
    result = run_legacy(memory_server.target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "legacy ok"


def test_legacy_script_runs_unchanged_on_redis(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    result = run_legacy(redis_backed_server.target)
    assert result.returncode == 0, result.stderr
    assert redis_server.client().get("user:1") == b"alice"  # really in Redis
    assert 0 < redis_server.client().ttl("user:1") <= 3600  # the guide's default TTL


def test_redis_cache_encodings(memory_server: RunningServer) -> None:
    raw = RedisCache(memory_server.target)
    text = RedisCache(memory_server.target, decode_responses=True)
    raw.set("s", "héllo")
    raw.set("b", b"\xff\x00")
    raw.set("i", 42)
    raw.set("f", 1.5)
    assert raw.get("s") == "héllo".encode()
    assert text.get("s") == "héllo"
    assert raw.get("b") == b"\xff\x00"
    assert raw.get("i") == b"42"
    assert text.get("f") == "1.5"
    with pytest.raises(TypeError, match="bool"):
        raw.set("x", True)
    with pytest.raises(TypeError, match="dict"):
        raw.set("x", {"a": 1})  # type: ignore[arg-type]
    assert raw.delete("s") is True
    assert raw.get("s") is None
    raw.close()
    text.close()


def test_redis_cache_raises_connection_error_when_unreachable(
    memory_server: RunningServer,
) -> None:
    memory_server.server.stop(grace=0)
    cache = RedisCache(memory_server.target, timeout=1)
    try:
        result = cache.get("key")
    except ConnectionError:  # the guide's handler
        result = None
    assert result is None
    with pytest.raises(CacheUnavailableError):
        cache.set("k", "v")


def test_breaker_open_is_connection_error_with_retry_after(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    client = CacheClient(redis_backed_server.target, retries=False)
    redis_server.kill()
    for _ in range(3):
        with pytest.raises(CacheUnavailableError):
            client.get("k")
    with pytest.raises(CacheUnavailableError) as caught:
        client.get("k")
    assert isinstance(caught.value, ConnectionError)
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 1.0
    client.close()


def test_channel_retry_sits_out_a_short_open_breaker(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    server = start_server(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_FAILURE_THRESHOLD": "1",
            "REDIS_RECOVERY_TIMEOUT": "0.3",
            "REDIS_RETRY_ATTEMPTS": "0",
        }
    )
    client = CacheClient(server.target)
    redis_server.kill()
    with pytest.raises(CacheUnavailableError):
        client.get("k")  # opens the breaker (and the retries are refused while open)
    redis_server.restart()
    # Open for < 0.3 s: the server's pushback tells the channel to retry after it,
    # and the retry reaches the restarted Redis. No error reaches the caller.
    assert client.get("k", timeout=3) is None
    client.close()


def test_long_open_breaker_is_not_retried_by_the_channel(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    server = start_server(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_FAILURE_THRESHOLD": "1",
            "REDIS_RECOVERY_TIMEOUT": "30",
            "REDIS_RETRY_ATTEMPTS": "0",
        }
    )
    client = CacheClient(server.target)
    redis_server.kill()
    with pytest.raises(CacheUnavailableError):
        client.get("k")
    rejected_before = server.server.pool.breaker.snapshot().rejected_total
    start = time.monotonic()
    with pytest.raises(CacheUnavailableError):
        client.get("k")
    assert time.monotonic() - start < 0.2  # failed fast, no backoff
    assert server.server.pool.breaker.snapshot().rejected_total == rejected_before + 1
    client.close()


def test_deadline_and_invalid_request_errors(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    client = CacheClient(redis_backed_server.target)
    with pytest.raises(InvalidRequestError, match="ttl_seconds") as invalid:
        client.set_ex("k", b"v", ttl_seconds=0)
    assert isinstance(invalid.value, ValueError)
    with pytest.raises(InvalidRequestError, match="key"):
        client.get("")
    client.get("k")
    redis_server.pause()
    try:
        with pytest.raises(DeadlineExceededError) as late:
            client.get("k", timeout=0.2)
        assert isinstance(late.value, TimeoutError)
    finally:
        redis_server.resume()
    client.close()


def test_pipeline_and_stream_helpers(memory_server: RunningServer) -> None:
    with CacheClient(memory_server.target) as client:
        results = client.pipeline(
            [SetEx("a", b"1", 60), Get("a"), Get("missing"), SetEx("b", b"x", 0), Delete("a")]
        )
        assert [r.outcome for r in results] == ["ok", "value", "not_found", "error", "ok"]
        assert results[1] == Result("value", value=b"1")
        assert isinstance(results[3].error, InvalidRequestError)
        batches: Iterator[list[Operation]] = (
            [SetEx(f"k{i}", b"%d" % i, 60), Get(f"k{i}")] for i in range(50)
        )
        got = [batch[1].value for batch in client.stream(batches)]
        assert got == [b"%d" % i for i in range(50)]


def test_health_and_watch(memory_server: RunningServer) -> None:
    with CacheClient(memory_server.target) as client:
        assert client.health() == "SERVING"
        assert client.health("cachegate.v1.CacheService") == "SERVING"
        watch = client.watch_health("cachegate.v1.CacheService", timeout=5)
        assert next(watch) == "SERVING"
        del watch  # closing the generator cancels the Watch call
        with pytest.raises(CacheClientError) as caught:
            client.health("no.such.Service")
        assert caught.value.code.name == "NOT_FOUND"


def test_near_cache_bounds_staleness_and_sees_own_writes(memory_server: RunningServer) -> None:
    now = [0.0]
    near = NearCache(maxsize=2, ttl=5.0, clock=lambda: now[0])
    # Without the invalidation feed, the TTL alone bounds staleness (the feed's own
    # tests are in test_invalidations.py).
    cache = RedisCache(memory_server.target, near_cache=near, invalidations=False)
    other = CacheClient(memory_server.target)
    cache.set("k", b"v1")
    assert cache.get("k") == b"v1"  # from the near cache (put by the write)
    other.set_ex("k", b"v2", 60)  # another writer
    now[0] = 4.9
    assert cache.get("k") == b"v1"  # stale, within the bound
    now[0] = 5.1
    assert cache.get("k") == b"v2"  # the bound passed: read through
    cache.set("k", b"v3")  # own writes invalidate and refresh
    assert cache.get("k") == b"v3"
    cache.delete("k")
    assert cache.get("k") is None  # own deletes too; and misses are not cached:
    other.set_ex("k", b"v4", 60)
    assert cache.get("k") == b"v4"
    for key in ("x", "y", "z"):  # bounded size: least recently used goes
        other.set_ex(key, key.encode(), 60)
        cache.get(key)
    assert near.stats().size == 2
    stats = near.stats()
    assert stats.hits >= 2
    assert stats.misses >= 3
    cache.close()
    other.close()


def test_near_cache_entries_never_outlive_the_written_ttl(memory_server: RunningServer) -> None:
    now = [0.0]
    near = NearCache(ttl=60.0, clock=lambda: now[0])
    cache = RedisCache(memory_server.target, near_cache=near)
    cache.set("short", b"v", ttl=2)
    now[0] = 2.5
    assert near.get("short") is None
    cache.close()


def test_client_target_comes_from_the_environment(
    memory_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHEGATE_TARGET", memory_server.target)
    with CacheClient() as client:
        assert client.target == memory_server.target
        assert client.health() == "SERVING"


# --- the guide's health shape, on both sides ----------------------------------------------

POOL_KEYS = {"created_connections", "available_connections", "in_use_connections"}


def test_health_checks_share_one_shape_and_one_hit_rate(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    """RedisCache.health_check() (over gRPC) and the in-process pool's health_check()
    have the same keys, None for unknowns, and the same hit rate: hits / (hits + misses)
    of the reads the server process made, None before any read."""
    from cachegate.client._compat import HEALTH_KEYS

    pool = redis_backed_server.server.pool
    cache = RedisCache(redis_backed_server.target)
    try:
        remote, local = cache.health_check(), pool.health_check()
        print(f"client: {remote}\npool:   {local}")
        assert set(remote) == set(local) == set(HEALTH_KEYS)
        assert list(local) == list(HEALTH_KEYS)  # in the same order, too
        assert set(remote["pool"]) == set(local["pool"]) == POOL_KEYS
        for report in (remote, local):
            assert report["healthy"] is True
            assert report["error"] is None
            assert report["hit_rate"] is None  # nothing read yet: unknown, not 0.0
            assert report["version"] == redis_server.client().info("server")["redis_version"]
            assert isinstance(report["ping_ms"], float)
            assert report["ping_ms"] > 0
            assert report["connected_clients"] >= 1
            assert report["circuit_state"] == "closed"
            assert report["backend"] == "redis"
            assert isinstance(report["age_seconds"], float)
            assert report["age_seconds"] >= 0
        assert local["age_seconds"] == 0.0  # the in-process check is live

        cache.set("hr:1", "v")
        for key in ("hr:1", "hr:1", "hr:1", "hr:missing"):
            cache.get(key)
        remote, local = cache.health_check(), pool.health_check()
        stats = pool.get_stats()
        assert (stats["hits"], stats["misses"]) == (3, 1)
        # One definition, unrounded, everywhere: the pool's health and stats, the
        # client's health (from Stats), and both hit_rate fields of the Stats reply.
        reply = redis_backed_server.stub.Stats(pb.StatsRequest())
        assert local["hit_rate"] == stats["hit_rate"] == remote["hit_rate"] == 0.75
        assert reply.calls.hit_rate == reply.redis.hit_rate == 0.75
    finally:
        cache.close()


def test_health_check_never_raises_when_the_server_is_unreachable() -> None:
    """The guide's dict with healthy False and an error, every other figure None."""
    from cachegate.client._compat import HEALTH_KEYS
    from redisprocs import free_port

    cache = RedisCache(f"127.0.0.1:{free_port()}", timeout=1)  # nothing listens there
    try:
        health = cache.health_check()
    finally:
        cache.close()
    print(f"unreachable: {health}")
    assert list(health) == list(HEALTH_KEYS)
    assert health["healthy"] is False
    assert isinstance(health["error"], str)
    assert "UNAVAILABLE" in health["error"]
    unknown = set(HEALTH_KEYS) - {"healthy", "error", "pool"}
    assert {name: health[name] for name in unknown} == dict.fromkeys(unknown)
    assert health["pool"] == dict.fromkeys(POOL_KEYS)


def test_health_check_with_redis_down_behind_the_server(
    redis_backed_server: RunningServer, redis_server: RedisProcess
) -> None:
    """Redis down: both checks say unhealthy with an error, and the Redis figures are
    None (unknown), not 0.0 or ''."""
    cache = RedisCache(redis_backed_server.target, timeout=2)
    try:
        redis_server.kill()

        # The client reads the server's latest probe: poll until it saw the outage.
        def unhealthy() -> dict[str, Any] | None:
            health = cache.health_check()
            return None if health["healthy"] else health

        remote = wait_until(
            unhealthy,
            timeout=10,
            what="the client's health_check to see Redis down",
            interval=0.2,
        )
    finally:
        cache.close()
    local = redis_backed_server.server.pool.health_check()
    print(f"client: {remote}\npool:   {local}")
    assert set(remote) == set(local)
    for report in (remote, local):
        assert report["healthy"] is False
        assert isinstance(report["error"], str)
        assert report["error"]
        for name in ("ping_ms", "version", "connected_clients", "used_memory_human"):
            assert report[name] is None, (name, report)


def test_one_target_naming_two_servers_spreads_calls_over_both(
    start_server: StartServer,
) -> None:
    # A headless Service's dns:/// name resolves to one address per pod; the `ipv4:`
    # resolver hands the channel the same kind of address list offline, and the policy
    # that picks among the addresses (the service config's) is the same code either way.
    first, second = start_server(), start_server()
    target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
    gets = 200
    with CacheClient(target) as client:
        for n in range(gets):
            assert client.get(f"spread:{n}") is None
    misses = [
        server.stub.Stats(pb.StatsRequest(), timeout=5).calls.misses_total
        for server in (first, second)
    ]
    assert sum(misses) == gets
    assert min(misses) > 0, f"one server got every call: {misses}"
