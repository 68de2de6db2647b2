"""Shared pytest fixtures for cachegate's tests."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cachegate.core import load_config
from cachegate.rpc import CacheServer, RpcObserver
from cachegate.runtime import Service, build_service
from cachegate.v1 import cache_pb2_grpc
from redisprocs import (
    ClusterSetup,
    RedisProcess,
    SentinelSetup,
    start_cluster,
    start_sentinel_setup,
    start_standalone,
)
from workerprocs import Launch, ServerProcess, alive

# --- Redis fixtures ---------------------------------------------------------------------
# Real redis-server processes (see tests/redisprocs.py), on free 127.0.0.1 ports, in the
# test's tmp_path. Each fixture stops its processes in a finally block, so they go away
# even when the test fails; a server that fails to start raises with its log tail.


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated here so the marker exists (and
    # --strict-markers passes) whichever config file pytest picks up.
    config.addinivalue_line(
        "markers", "slow: starts several redis-server processes (sentinel, cluster)"
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh standalone server for this test alone: kill, pause, restart it freely."""
    server = start_standalone(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a server shared by the whole session, for tests that only need *a* server.

    $REDIS_URL wins when set (it may be a server that is not ours), so this server is
    never flushed: tests using it must not break it (no kill/pause/FLUSHALL/CONFIG SET)
    and must use unique keys, e.g. ``f"{uuid.uuid4().hex}:key"``.
    """
    from_env = os.environ.get("REDIS_URL")
    if from_env:
        yield from_env
        return
    server = start_standalone(tmp_path_factory.mktemp("shared-redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    """Master + replica + 3 sentinels monitoring "mymaster", ready for a failover."""
    setup = start_sentinel_setup(tmp_path / "sentinel")
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[ClusterSetup]:
    """A 3-master cluster with one replica per master, cluster_state:ok everywhere."""
    cluster = start_cluster(tmp_path / "cluster", masters=3, replicas_per_master=1)
    try:
        yield cluster
    finally:
        cluster.stop()


# --- end of Redis fixtures --------------------------------------------------------------


# --- gRPC server fixtures ---------------------------------------------------------------
# A real server bound to 127.0.0.1:0, and a real channel to the port it got.


@dataclass
class RunningServer:
    service: Service
    port: int
    channel: grpc.Channel
    stub: cache_pb2_grpc.CacheServiceStub
    health: health_pb2_grpc.HealthStub

    @property
    def server(self) -> CacheServer:
        return self.service.server

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def health_status(self, service: str = "") -> int:
        reply = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        status: int = reply.status
        return status


StartServer = Callable[..., RunningServer]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start servers with extra environment-style settings; all stopped at teardown.

    Built by the production composition root (`build_service`), side port included
    (on a port of its own unless the test says otherwise). `observer` and
    `interceptors` let a test see what the server sees of each call.
    """
    running: list[RunningServer] = []

    def start(
        env: Mapping[str, str] | None = None,
        *,
        wait_ready: bool = True,
        observer: RpcObserver | None = None,
        interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
    ) -> RunningServer:
        config = load_config(
            {
                "CACHEGATE_LISTEN": "127.0.0.1:0",
                "CACHEGATE_HTTP_LISTEN": "127.0.0.1:0",
                **(env or {}),
            }
        )
        service = build_service(config, observer=observer, interceptors=interceptors)
        service.start()
        port = service.port
        if wait_ready:
            assert service.server.health.wait_ready(10), "backend never answered"
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        handle = RunningServer(
            service,
            port,
            channel,
            cache_pb2_grpc.CacheServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
        )
        running.append(handle)
        return handle

    yield start
    for handle in running:
        handle.channel.close()
        handle.service.stop(grace=0)


@pytest.fixture
def memory_server(start_server: StartServer) -> RunningServer:
    """A server on the embedded in-memory backend."""
    return start_server()


@pytest.fixture
def redis_backed_server(start_server: StartServer, redis_server: RedisProcess) -> RunningServer:
    """A server in front of this test's own redis-server (kill or pause it freely)."""
    return start_server(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_SOCKET_TIMEOUT": "0.5",
            "REDIS_FAILURE_THRESHOLD": "3",
            "REDIS_RECOVERY_TIMEOUT": "1",
            "REDIS_RETRY_ATTEMPTS": "0",
        }
    )


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    started: list[ServerProcess] = []

    def start(env: dict[str, str], command: list[str] | None = None) -> ServerProcess:
        server = ServerProcess(env, tmp_path / f"server-{len(started)}.log", command)
        started.append(server)
        return server

    yield start
    for server in started:
        pids = list(server.worker_pids().values())
        server.kill()  # SIGKILL of the supervisor only: its workers must go by themselves
        for pid in pids:  # ...but never leave one behind if a test failed half-way
            with contextlib.suppress(ProcessLookupError):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
