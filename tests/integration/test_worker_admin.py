"""Worker mode: admin RPCs reach every worker of a real process tree, and later ones too."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import grpc

from cachegate.v1 import admin_pb2, admin_pb2_grpc, cache_pb2_grpc
from cachegate.v1 import cache_pb2 as pb
from redisprocs import RedisProcess, free_port
from workerprocs import (
    Launch,
    ServerProcess,
    metric,
    redis_env,
    scrape,
    two_free_ports,
    wait_for,
)

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ALICE_TOKEN = "alice-token-0123456789abcdef"
FRESH = 20


def _fresh(target: str) -> grpc.Channel:
    """A channel with its own TCP connection: the kernel may give it to any worker."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def _gets(target: str) -> Counter[str]:
    """Codes of a Get over each of FRESH fresh connections (a client token)."""
    codes: Counter[str] = Counter()
    for _ in range(FRESH):
        with _fresh(target) as channel:
            try:
                cache_pb2_grpc.CacheServiceStub(channel).Get(
                    pb.GetRequest(key="k"), metadata=_bearer(ALICE_TOKEN), timeout=5
                )
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
    return codes


def _views(target: str, server: ServerProcess) -> dict[int, tuple[int, bool, str]]:
    """worker id -> (breaker state, forced, health of the cache service), as each worker
    reports them over fresh connections, until both workers answered (bounded)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    seen: dict[int, tuple[int, bool, str]] = {}
    for _ in range(60):
        assert server.proc.poll() is None, server.log_path.read_text()
        with _fresh(target) as channel:
            reply = cache_pb2_grpc.CacheServiceStub(channel).Stats(
                pb.StatsRequest(), metadata=_bearer(ADMIN_TOKEN), timeout=5
            )
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="cachegate.v1.CacheService"), timeout=5
            )
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
        seen[reply.worker_id] = (reply.breaker.state, reply.breaker.forced, status)
        if len(seen) == 2:
            break
    return seen


def _breaker_gauges(http_port: int) -> list[float]:
    return [
        metric(scrape(http_port + worker_id), "cachegate_breaker_state") for worker_id in (0, 1)
    ]


def _both_workers_show(
    target: str,
    server: ServerProcess,
    http_port: int,
    code: str,
    view: tuple[int, bool, str],
    gauge: float,
) -> None:
    """Fresh connections' Gets all end `code`, and both workers' Stats and health
    (`view`) and breaker gauge (`gauge`) agree."""
    assert _gets(target) == {code: FRESH}
    assert _views(target, server) == {0: view, 1: view}
    assert _breaker_gauges(http_port) == [gauge, gauge]


def _serving_count(server: ServerProcess, worker_id: int) -> int:
    return sum(1 for e in server.messages("serving") if e.get("worker") == worker_id)


def test_admin_rpcs_reach_every_worker_and_later_ones(
    launch: Launch, redis_server: RedisProcess, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN_TOKEN} ops admin\n{ALICE_TOKEN} alice client\n")
    port, http_port = free_port(), two_free_ports()
    server = launch(
        redis_env(
            redis_server,
            port,
            CACHEGATE_TOKENS_FILE=str(tokens),
            CACHEGATE_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        )
    )
    target = f"127.0.0.1:{port}"
    wait_for(lambda: all(_serving_count(server, i) == 1 for i in (0, 1)), 30, "two workers")
    assert _gets(target) == {"OK": FRESH}
    admin_channel = _fresh(target)
    admin = admin_pb2_grpc.AdminServiceStub(admin_channel)
    opened = admin.ForceOpenBreaker(
        admin_pb2.ForceOpenBreakerRequest(), metadata=_bearer(ADMIN_TOKEN), timeout=10
    )
    assert (opened.breaker.state, opened.breaker.forced) == (pb.CIRCUIT_STATE_OPEN, True)

    # Every fresh connection, whichever worker it lands on, sees the breaker open,
    # and Stats, health and metrics of both workers agree.
    forced_open = (pb.CIRCUIT_STATE_OPEN, True, "NOT_SERVING")
    _both_workers_show(target, server, http_port, "UNAVAILABLE", forced_open, 2.0)

    # A worker that dies afterwards comes back up forced open.
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: _serving_count(server, 0) == 2, 30, "worker 0 to restart and serve")
    assert server.worker_pids()[0] != victim
    _both_workers_show(target, server, http_port, "UNAVAILABLE", forced_open, 2.0)

    reset = admin.ResetBreaker(
        admin_pb2.ResetBreakerRequest(), metadata=_bearer(ADMIN_TOKEN), timeout=10
    )
    assert (reset.breaker.state, reset.breaker.forced) == (pb.CIRCUIT_STATE_CLOSED, False)
    normal = (pb.CIRCUIT_STATE_CLOSED, False, "SERVING")
    _both_workers_show(target, server, http_port, "OK", normal, 0.0)

    closed = admin.ForceCloseBreaker(
        admin_pb2.ForceCloseBreakerRequest(), metadata=_bearer(ADMIN_TOKEN), timeout=10
    )
    assert (closed.breaker.state, closed.breaker.forced) == (pb.CIRCUIT_STATE_CLOSED, True)
    forced_closed = (pb.CIRCUIT_STATE_CLOSED, True, "SERVING")
    assert _views(target, server) == {0: forced_closed, 1: forced_closed}
    applied = server.messages("breaker command applied")
    assert {e["worker"] for e in applied} == {0, 1}
    admin_channel.close()
    assert server.stop() == 0, server.log_path.read_text()
