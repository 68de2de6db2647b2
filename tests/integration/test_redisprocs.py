"""Proof that the real-Redis helpers (tests/redisprocs.py) do what later tests rely on."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

import redisprocs
from redisprocs import (
    ClusterSetup,
    RedisProcess,
    RedisStartError,
    RedisUnavailableError,
    SentinelSetup,
    WaitTimeoutError,
    free_port,
    start_standalone,
    wait_until,
)

# --- the building blocks ------------------------------------------------------------------


def test_binaries_are_found() -> None:
    for path in (redisprocs.find_redis_server(), redisprocs.find_redis_cli()):
        assert os.access(path, os.X_OK), path


def test_free_port_leaves_room_for_the_cluster_bus() -> None:
    ports = [free_port(cluster_bus=True) for _ in range(5)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        assert 0 < port <= 65535 - 10000
        assert redisprocs._can_bind(port)
        assert redisprocs._can_bind(port + 10000)


def test_wait_until_is_bounded_and_says_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError, match="the impossible"):
        wait_until(lambda: False, timeout=0.2, what="the impossible")
    assert time.monotonic() - started < 2.0


def test_no_redis_at_all_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redisprocs, "_find_binary", lambda name: None)
    monkeypatch.setattr(redisprocs, "docker_available", lambda: False)
    with pytest.raises(RedisUnavailableError) as raised:
        start_standalone(tmp_path)
    message = str(raised.value)
    for hint in ("apt-get install redis-server", "REDIS_URL", "Docker"):
        assert hint in message
    with pytest.raises(RedisUnavailableError, match="apt-get install redis-server"):
        redisprocs.start_sentinel_setup(tmp_path)


def test_failed_start_reports_the_redis_log(tmp_path: Path) -> None:
    with pytest.raises(RedisStartError, match="no-such-directive"):
        RedisProcess(tmp_path, free_port(), extra_args=["--no-such-directive", "1"])


# --- standalone ---------------------------------------------------------------------------


def test_kill_and_restart_on_the_same_port_loses_the_data(redis_server: RedisProcess) -> None:
    port, pid = redis_server.port, redis_server.pid
    with redis_server.client() as client:
        client.set(b"k", b"v")
        assert client.execute_command("DEBUG", "SLEEP", "0") in (b"OK", True)
        redis_server.kill()  # with this client still connected
        assert not redis_server.is_running()
        with pytest.raises(redis.ConnectionError):
            client.get(b"k")

        redis_server.restart()

        assert redis_server.is_running()
        assert (redis_server.port, redis_server.url) == (port, f"redis://127.0.0.1:{port}/0")
        assert redis_server.pid != pid
        assert client.get(b"k") is None  # no persistence: a restart comes back empty


def test_restart_waits_for_a_busy_port_to_free_up(redis_server: RedisProcess) -> None:
    redis_server.kill()
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(redis_server.address)
    squatter.listen()
    release = threading.Timer(0.7, squatter.close)  # well inside RESTART_BIND_TIMEOUT
    release.start()
    try:
        redis_server.restart()
    finally:
        release.cancel()
        squatter.close()
    with redis_server.client() as client:
        assert client.ping()


def test_pause_makes_clients_time_out_and_resume_recovers(redis_server: RedisProcess) -> None:
    with redis_server.client(socket_timeout=0.3) as client:
        assert client.ping()
        redis_server.pause()
        assert redis_server.is_running()
        assert redis_server.is_paused
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert time.monotonic() - started < 2.0
        redis_server.resume()
        assert client.ping()


def test_stop_is_idempotent_even_when_paused(tmp_path: Path) -> None:
    with start_standalone(tmp_path) as server:
        server.pause()
        server.stop()
        assert not server.is_running()
    server.stop()  # and again after __exit__
    assert not server.is_running()


def test_password_server_requires_auth_and_repr_hides_it(tmp_path: Path) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    with start_standalone(tmp_path, password=secret) as server:
        with server.client(password=None) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with server.client(password="wrong") as wrong, pytest.raises(redis.AuthenticationError):
            wrong.ping()
        with server.client() as authed:
            assert authed.ping()
        with redis.Redis.from_url(server.url) as via_url:
            assert via_url.ping()
        assert server.url == f"redis://:{secret}@127.0.0.1:{server.port}/0"
        assert secret not in repr(server)
        assert secret not in str(server)


def test_shared_redis_url_answers(shared_redis_url: str) -> None:
    key = f"{uuid.uuid4().hex}:probe"
    with redis.Redis.from_url(shared_redis_url) as client:
        assert client.set(key, b"1", ex=60)
        assert client.get(key) == b"1"
        client.delete(key)


# --- sentinel -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sentinel_failover_gives_a_writable_new_master(sentinel_setup: SentinelSetup) -> None:
    old_address = sentinel_setup.current_master_address()
    assert old_address == ("127.0.0.1", sentinel_setup.master.port)
    replica_address = sentinel_setup.replica.address

    new_address = sentinel_setup.kill_master_and_wait_failover(timeout=30)

    assert new_address != old_address
    assert new_address == replica_address
    assert sentinel_setup.current_master_address() == new_address
    with redis.Redis(*new_address, socket_timeout=2) as client:
        assert client.set(b"after-failover", b"yes")
        assert client.get(b"after-failover") == b"yes"
    # A Sentinel-aware client agrees, which is what the gateway will use.
    sentinel = Sentinel(sentinel_setup.sentinel_addresses, socket_timeout=2)
    master = sentinel.master_for(sentinel_setup.master_name, socket_timeout=2)
    assert master.get(b"after-failover") == b"yes"
    master.close()


# --- cluster ------------------------------------------------------------------------------


def _cluster_client(cluster: ClusterSetup) -> RedisCluster:
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    return RedisCluster(startup_nodes=nodes, socket_timeout=2)


def _dbsize(node: RedisProcess) -> int:
    with node.client() as client:
        size = client.dbsize()
    assert isinstance(size, int)
    return size


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_cluster_serves_keys_on_every_master(redis_cluster: ClusterSetup) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    assert len(redis_cluster.nodes) == 6
    client = _cluster_client(redis_cluster)
    try:
        keys = [f"key-{i}" for i in range(60)]
        for key in keys:
            assert client.set(key, key)
        for key in keys:
            assert client.get(key) == key.encode()
    finally:
        client.close()
    # 60 keys spread over 16384 slots: every master must have got some.
    assert all(_dbsize(master) > 0 for master in masters)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_cluster_failover_promotes_the_replica(redis_cluster: ClusterSetup) -> None:
    before = redis_cluster.masters()
    victim = before[0]
    victim_id = next(i.node_id for i in redis_cluster.cluster_nodes() if i.port == victim.port)
    heirs = {i.port for i in redis_cluster.cluster_nodes() if i.master_id == victim_id}

    elapsed = redis_cluster.kill_master_and_wait_failover(index=0, timeout=30)

    assert 0 < elapsed < 30
    assert not victim.is_running()
    after = redis_cluster.masters()
    assert len(after) == 3
    assert victim not in after
    assert {m.port for m in after} - {m.port for m in before} <= heirs
    assert any(m.port in heirs for m in after)
    client = _cluster_client(redis_cluster)
    try:
        for i in range(30):  # covers the failed-over slots too
            assert client.set(f"after-{i}", b"v")
            assert client.get(f"after-{i}") == b"v"
    finally:
        client.close()
