"""The pool on Sentinel and Cluster: failover, rediscovery, and meaningful stats."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from cachegate.core import CircuitState, load_config
from cachegate.pool import CircuitOpenError, RedisConnectionPool, RedisUnavailableError
from redisprocs import ClusterSetup, RedisProcess, SentinelSetup

pytestmark = pytest.mark.slow


def sentinel_pool(setup: SentinelSetup, **env: str) -> RedisConnectionPool:
    """A pool that finds its master through the setup's three sentinels."""
    addresses = ",".join(f"{h}:{p}" for h, p in setup.sentinel_addresses)
    settings = {
        "CACHEGATE_BACKEND": "sentinel",
        "REDIS_SENTINELS": addresses,
        "REDIS_SENTINEL_MASTER": setup.master_name,
        **env,
    }
    return RedisConnectionPool(load_config(settings))


def _role(node: RedisProcess) -> str | None:
    # Sentinel kills the demoted master's clients (ours too): a dropped connection
    # here only means "ask again".
    try:
        role: str = node.client().info("replication")["role"]
    except redis.ConnectionError:
        return None
    return role


def write_until_ok(pool: RedisConnectionPool, key: str, value: bytes, within: float) -> float:
    """Keep writing until one write is acknowledged; returns the seconds it took."""
    start = time.monotonic()
    while True:
        try:
            pool.execute("setex", key, 60, value)
            return time.monotonic() - start
        except (RedisUnavailableError, CircuitOpenError):
            if time.monotonic() - start > within:
                raise
            time.sleep(0.1)


def test_sentinel_failover_reaches_the_new_master(sentinel_setup: SentinelSetup) -> None:
    pool = sentinel_pool(
        sentinel_setup,
        REDIS_SOCKET_TIMEOUT="0.5",
        REDIS_RECOVERY_TIMEOUT="1",
        REDIS_RETRY_BACKOFF_BASE="0.05",
        REDIS_RETRY_BACKOFF_CAP="0.2",
    )
    key = f"failover:{uuid.uuid4().hex}"
    pool.execute("setex", key, 60, b"before")
    # WAIT: the write is on the replica before we kill the master, so it must survive.
    with pool.get_client() as client:
        assert client.wait(1, 2000) == 1
    old_master = sentinel_setup.master.address
    new_master = sentinel_setup.kill_master_and_wait_failover(timeout=30)
    assert new_master != old_master

    took = write_until_ok(pool, f"{key}:after", b"after", within=10)
    assert took < 10
    assert pool.execute("get", key) == b"before"
    assert pool.execute("get", f"{key}:after") == b"after"
    # The write went to the promoted node, not to a stale connection.
    assert sentinel_setup.master.client().get(f"{key}:after") == b"after"
    health = pool.health_check()
    assert health["healthy"] is True
    pool.close()


def test_durable_writes_are_acknowledged_only_once_replicated(
    sentinel_setup: SentinelSetup,
) -> None:
    pool = sentinel_pool(
        sentinel_setup,
        REDIS_WAIT_REPLICAS="1",
        REDIS_WAIT_TIMEOUT="0.3",
    )
    assert pool.execute("setex", "durable", 60, b"1") is True
    assert sentinel_setup.replica.client().get("durable") == b"1"  # there before the ack
    [ok, value] = pool.execute_many([("SETEX", "d2", 60, b"2"), ("GET", "durable")])
    assert (ok, value) == (True, b"1")
    sentinel_setup.replica.kill()
    start = time.monotonic()
    with pytest.raises(RedisUnavailableError, match="not confirmed by 1 replica"):
        pool.execute("setex", "durable", 60, b"lost?")
    assert 0.25 < time.monotonic() - start < 2
    [write, read] = pool.execute_many([("SETEX", "d3", 60, b"3"), ("GET", "durable")])
    assert isinstance(write, RedisUnavailableError)  # the write is not acknowledged...
    assert read == b"lost?"  # ...though the master took it: WAIT is no rollback
    pool.close()


def test_sentinel_demoted_master_readonly_triggers_rediscovery(
    sentinel_setup: SentinelSetup,
) -> None:
    """A master turned replica (still up) must not take our writes: they go to the new one."""
    pool = sentinel_pool(
        sentinel_setup,
        REDIS_SOCKET_TIMEOUT="0.5",
    )
    pool.execute("set", "a", 1)  # a pooled connection to the current master
    old = sentinel_setup.master
    # Ask the sentinels for a failover while the old master stays up: it becomes a
    # replica, and the pooled connection to it would now get READONLY on writes.
    sentinel_setup.sentinels[0].client().execute_command(
        "SENTINEL", "FAILOVER", sentinel_setup.master_name
    )
    # Wait until the old master really is a replica (before that, Redis's own async
    # replication may drop writes it took during the switch: not the pool's doing).
    deadline = time.monotonic() + 30
    while _role(old) != "slave":
        assert time.monotonic() < deadline, "sentinels did not fail over"
        time.sleep(0.1)
    assert sentinel_setup.current_master_address() != old.address
    # Sentinel also drops the demoted master's clients; either way (READONLY on a
    # stale connection, or a dropped one), the write must land on the new master.
    pool.execute("set", "b", b"2")
    host, port = sentinel_setup.current_master_address()
    assert redis.Redis(host=host, port=port).get("b") == b"2"
    deadline = time.monotonic() + 10  # replicated back from the new master (async)
    while True:
        try:
            if old.client().get("b") == b"2":
                break
        except redis.ConnectionError:
            pass
        assert time.monotonic() < deadline, "the demoted master never got the write"
        time.sleep(0.1)
    pool.close()


def test_cluster_routes_by_slot_and_survives_a_master_failover(
    redis_cluster: ClusterSetup,
) -> None:
    nodes = ",".join(f"{h}:{p}" for h, p in redis_cluster.startup_nodes)
    pool = RedisConnectionPool(
        load_config(
            {
                "CACHEGATE_BACKEND": "cluster",
                "REDIS_CLUSTER_NODES": nodes,
                "REDIS_SOCKET_TIMEOUT": "0.5",
                "REDIS_CONNECT_TIMEOUT": "0.5",
                "REDIS_FAILURE_THRESHOLD": "50",
                "REDIS_RETRY_ATTEMPTS": "5",
                "REDIS_RETRY_BACKOFF_BASE": "0.1",
                "REDIS_RETRY_BACKOFF_CAP": "0.5",
            }
        )
    )
    keys = [f"k{i}" for i in range(60)]  # spread over all three masters' slots
    for k in keys:
        assert pool.execute("setex", k, 60, k.encode()) is True
    assert [pool.execute("get", k) for k in keys] == [k.encode() for k in keys]
    replies = pool.execute_many([("GET", k) for k in keys])  # split by slot, in order
    assert replies == [k.encode() for k in keys]
    for k in keys[:3]:  # one transaction on the key's own node
        value, pttl = pool.get_with_ttl(k)
        assert value == k.encode()
        assert 0 < pttl <= 60_000
    stats = pool.get_stats()
    assert stats["backend"] == "cluster"
    assert stats["created_connections"] >= 3  # at least one per master
    assert stats["hits"] == 123
    health = pool.health_check()
    assert health["healthy"] is True
    assert health["version"]

    window = redis_cluster.kill_master_and_wait_failover(index=0, timeout=30)
    assert window > 0
    deadline = time.monotonic() + 15
    while True:
        try:
            values = [pool.execute("get", k) for k in keys]
            break
        except (RedisUnavailableError, CircuitOpenError):
            assert time.monotonic() < deadline, "cluster did not come back to the pool"
            time.sleep(0.2)
    # No persistence, but the replicas had the data: nothing written is lost.
    assert values == [k.encode() for k in keys]
    assert pool.breaker.state is CircuitState.CLOSED
    pool.close()
