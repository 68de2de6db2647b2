"""The HTTP side port: /metrics and /health/redis, against real channels and real redis-servers."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cachegate.core import load_config
from cachegate.rpc import PrometheusObserver
from cachegate.runtime import HttpListenError, Service, build_service
from cachegate.v1 import admin_pb2, admin_pb2_grpc, cache_pb2_grpc
from cachegate.v1 import cache_pb2 as pb
from redisprocs import RedisProcess, free_port, start_standalone

SERVER = str(Path(sys.executable).parent / "cachegate-server")
SERVICE = "cachegate.v1.CacheService"

Sample = tuple[str, dict[str, str], float]


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, bytes, str]:
    """(status, body, content type) of one request to 127.0.0.1:port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        reply = connection.getresponse()
        return reply.status, reply.read(), reply.getheader("Content-Type", "")
    finally:
        connection.close()


def scrape(port: int) -> list[Sample]:
    status, body, content_type = http_get(port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sample `name` whose labels include `labels` (exactly one must match)."""
    found = [v for n, ls, v in samples if n == name and labels.items() <= ls.items()]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body, content_type = http_get(port, "/health/redis")
    assert content_type == "application/json"
    report: dict[str, Any] = json.loads(body)
    return status, report


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@dataclass
class Metered:
    service: Service
    channel: grpc.Channel
    stub: cache_pb2_grpc.CacheServiceStub

    @property
    def http_port(self) -> int:
        assert self.service.http is not None
        return self.service.http.port

    def scrape(self) -> list[Sample]:
        return scrape(self.http_port)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.service.server.pool.get_stats()
        return stats


StartMetered = Callable[..., Metered]


@pytest.fixture
def start_metered() -> Iterator[StartMetered]:
    """Servers built like `cachegate-server` builds them (metrics, side port), port 0."""
    running: list[Metered] = []

    def start(env: Mapping[str, str] | None = None) -> Metered:
        config = load_config(
            {
                "CACHEGATE_LISTEN": "127.0.0.1:0",
                "CACHEGATE_HTTP_LISTEN": "127.0.0.1:0",
                **(env or {}),
            }
        )
        service = build_service(config)
        service.start()
        assert service.server.health.wait_ready(10), "backend never answered"
        channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
        handle = Metered(service, channel, cache_pb2_grpc.CacheServiceStub(channel))
        running.append(handle)
        return handle

    yield start
    for handle in running:
        handle.channel.close()
        handle.service.stop(grace=0)


def redis_env(redis: RedisProcess, **extra: str) -> dict[str, str]:
    return {
        "CACHEGATE_BACKEND": "redis",
        "REDIS_URL": redis.url,
        "REDIS_SOCKET_TIMEOUT": "0.5",
        "REDIS_RETRY_ATTEMPTS": "0",
        **extra,
    }


def test_rpc_metrics_count_each_method_and_code(start_metered: StartMetered) -> None:
    server = start_metered()
    stub = server.stub
    assert stub.Get(pb.GetRequest(key="a")).found is False
    stub.SetEx(pb.SetExRequest(key="a", value=b"1", ttl_seconds=60))
    stub.SetEx(pb.SetExRequest(key="b", value=b"2", ttl_seconds=60))
    assert stub.Get(pb.GetRequest(key="a")).found is True
    assert stub.Get(pb.GetRequest(key="zz")).found is False
    for bad in (
        pb.SetExRequest(key="a", value=b"1", ttl_seconds=0),
        pb.SetExRequest(key="", value=b"1", ttl_seconds=5),
    ):
        with pytest.raises(grpc.RpcError) as info:
            stub.SetEx(bad)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert stub.Delete(pb.DeleteRequest(key="b")).deleted is True
    batch = pb.PipelineRequest(
        operations=[
            pb.Operation(get=pb.GetOperation(key="a")),
            pb.Operation(get=pb.GetOperation(key="nope")),
        ]
    )
    replies = list(stub.Pipeline(iter([batch, batch])))
    assert len(replies) == 2

    samples = server.scrape()
    started = {"unary": {"Get": 3, "SetEx": 4, "Delete": 1, "Stats": 0}}
    for method, count in started["unary"].items():
        labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": method}
        assert value(samples, "grpc_server_started_total", **labels) == count, method
        assert value(samples, "grpc_server_handling_seconds_count", **labels) == count, method
    pipeline = {"grpc_type": "bidi_stream", "grpc_service": SERVICE, "grpc_method": "Pipeline"}
    assert value(samples, "grpc_server_started_total", **pipeline) == 1
    assert value(samples, "grpc_server_handled_total", grpc_code="OK", **pipeline) == 1

    def handled(method: str, code: str) -> float:
        return value(samples, "grpc_server_handled_total", grpc_method=method, grpc_code=code)

    assert handled("Get", "OK") == 3
    assert handled("SetEx", "OK") == 2
    assert handled("SetEx", "INVALID_ARGUMENT") == 2
    assert handled("Delete", "OK") == 1
    assert handled("Get", "UNAVAILABLE") == 0  # every (method, code) exists from the start
    # Each unary RPC lands in exactly one bucket, and it took more than nothing.
    get = {"grpc_method": "Get", "grpc_type": "unary"}
    assert value(samples, "grpc_server_handling_seconds_bucket", le="+Inf", **get) == 3
    assert value(samples, "grpc_server_handling_seconds_sum", **get) > 0
    # Reads: Gets a(miss) a(hit) zz(miss), then twice [a(hit), nope(miss)].
    assert value(samples, "cachegate_cache_hits_total") == 3
    assert value(samples, "cachegate_cache_misses_total") == 4
    assert value(samples, "cachegate_info", backend="memory", workers="1", worker="0") == 1
    # Stats itself is counted on the next scrape.
    stub.Stats(pb.StatsRequest())
    assert value(server.scrape(), "grpc_server_started_total", grpc_method="Stats") == 1


def test_pool_gauges_follow_get_stats(
    start_metered: StartMetered, redis_server: RedisProcess
) -> None:
    server = start_metered(
        redis_env(
            redis_server,
            REDIS_MAX_CONNECTIONS="1",
            REDIS_POOL_TIMEOUT="0.1",
            REDIS_SOCKET_TIMEOUT="1",
        )
    )
    server.stub.SetEx(pb.SetExRequest(key="k", value=b"v", ttl_seconds=60))
    # Hang Redis: one call holds the only connection, the next finds none free in time.
    redis_server.pause()
    holder_code: list[grpc.StatusCode] = []

    def hold() -> None:
        try:
            server.stub.Get(pb.GetRequest(key="k"), timeout=5)
        except grpc.RpcError as error:
            holder_code.append(error.code())

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        wait_for(lambda: server.stats()["in_use_connections"] == 1, 5, "the connection in use")
        during = server.scrape()
        assert value(during, "db_client_connection_count", state="used") == 1
        with pytest.raises(grpc.RpcError) as info:
            server.stub.Get(pb.GetRequest(key="k"), timeout=5)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        holder.join(10)  # still hung: the holder runs into REDIS_SOCKET_TIMEOUT
    finally:
        redis_server.resume()
        holder.join(10)
    assert holder_code == [grpc.StatusCode.UNAVAILABLE] or holder_code == [
        grpc.StatusCode.DEADLINE_EXCEEDED
    ]

    samples = server.scrape()
    stats = server.stats()
    assert (
        value(samples, "db_client_connection_count", state="idle") == stats["available_connections"]
    )
    assert value(samples, "db_client_connection_count", state="used") == 0
    assert value(samples, "db_client_connection_max") == stats["max_connections"] == 1
    assert value(samples, "db_client_connection_pending_requests") == stats["pending_requests"]
    assert value(samples, "db_client_connection_timeouts_total") == stats["pool_wait_timeouts"]
    assert stats["pool_wait_timeouts"] == 1
    waited = value(samples, "db_client_connection_wait_time_seconds_total")
    assert waited == pytest.approx(stats["wait_seconds_total"])
    assert waited >= 0.09  # the RESOURCE_EXHAUSTED call waited REDIS_POOL_TIMEOUT
    for metric, key in (
        ("cachegate_redis_calls_total", "calls"),
        ("cachegate_redis_failures_total", "failures"),
        ("cachegate_redis_retries_total", "retries"),
        ("cachegate_breaker_rejected_total", "rejected_calls"),
        ("cachegate_breaker_opened_total", "breaker_opened_total"),
        ("cachegate_breaker_consecutive_failures", "consecutive_failures"),
        ("cachegate_cache_hits_total", "hits"),
        ("cachegate_cache_misses_total", "misses"),
    ):
        assert value(samples, metric) == stats[key], metric
    assert stats["calls"] >= 2
    assert stats["failures"] == 1
    assert (
        value(
            samples, "grpc_server_handled_total", grpc_method="Get", grpc_code="RESOURCE_EXHAUSTED"
        )
        == 1
    )
    # The hung call ran into REDIS_SOCKET_TIMEOUT: one failure, the breaker stays closed.
    assert value(samples, "cachegate_breaker_state") == 0


def test_breaker_metrics_and_health_follow_a_killed_redis(
    start_metered: StartMetered, redis_server: RedisProcess
) -> None:
    server = start_metered(
        redis_env(redis_server, REDIS_FAILURE_THRESHOLD="2", REDIS_RECOVERY_TIMEOUT="1")
    )
    status, report = health(server.http_port)
    assert status == 200
    assert report["healthy"] is True
    assert report["circuit_state"] == "closed"
    assert value(server.scrape(), "cachegate_breaker_state") == 0

    redis_server.kill()
    for _ in range(10):  # bounded: the breaker opens after two failures
        with pytest.raises(grpc.RpcError) as info:
            server.stub.Get(pb.GetRequest(key="k"), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        if server.stats()["circuit_state"] == "open":
            break
    with pytest.raises(grpc.RpcError):  # rejected by the open breaker, Redis untouched
        server.stub.Get(pb.GetRequest(key="k"), timeout=5)
    samples = server.scrape()
    assert (
        value(samples, "cachegate_breaker_transitions_total", to="open", **{"from": "closed"}) == 1
    )
    assert value(samples, "cachegate_breaker_state") in (1, 2)  # open, or probing already
    assert value(samples, "cachegate_breaker_opened_total") >= 1
    assert value(samples, "cachegate_redis_failures_total") >= 2
    assert value(samples, "cachegate_breaker_rejected_total") >= 1
    assert (
        value(samples, "grpc_server_handled_total", grpc_method="Get", grpc_code="UNAVAILABLE") >= 3
    )

    status, report = health(server.http_port)
    assert status == 503
    assert report["healthy"] is False
    assert report["error"]

    redis_server.restart()
    wait_for(lambda: server.stats()["circuit_state"] == "closed", 15, "the breaker to close")
    samples = server.scrape()
    assert value(samples, "cachegate_breaker_state") == 0
    back = {"from": "half-open", "to": "closed"}
    assert value(samples, "cachegate_breaker_transitions_total", **back) == 1
    probing = {"from": "open", "to": "half-open"}
    assert value(samples, "cachegate_breaker_transitions_total", **probing) >= 1
    assert health(server.http_port)[0] == 200


def test_side_port_paths(start_metered: StartMetered) -> None:
    server = start_metered()
    assert http_get(server.http_port, "/")[0] == 200
    assert http_get(server.http_port, "/nope")[0] == 404
    status, report = health(server.http_port)
    assert status == 200
    assert report["backend"] == "memory"
    assert http_get(server.http_port, "/health/redis", method="POST")[0] == 405


def test_side_port_off(start_metered: StartMetered) -> None:
    server = start_metered({"CACHEGATE_HTTP_LISTEN": "off"})
    assert server.service.http is None
    assert server.stub.Get(pb.GetRequest(key="k")).found is False


def test_side_port_taken_fails_loudly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = load_config(
            {"CACHEGATE_LISTEN": "127.0.0.1:0", "CACHEGATE_HTTP_LISTEN": f"127.0.0.1:{port}"}
        )
        with pytest.raises(HttpListenError, match="cannot listen"):
            build_service(config)


def test_each_server_has_its_own_registry(start_metered: StartMetered) -> None:
    first, second = start_metered(), start_metered()
    first.stub.Get(pb.GetRequest(key="k"))
    assert value(first.scrape(), "grpc_server_started_total", grpc_method="Get") == 1
    assert value(second.scrape(), "grpc_server_started_total", grpc_method="Get") == 0


def test_observer_binds_a_method_it_did_not_know() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    observer.started(f"/{SERVICE}/Future")
    observer.handled(f"/{SERVICE}/Future", grpc.StatusCode.OK, 0.001)
    labels = {"grpc_method": "Future", "grpc_type": "unary", "grpc_service": SERVICE}
    assert registry.get_sample_value("grpc_server_started_total", {**labels, "worker": "0"}) == 1


# --- every service, through the observing interceptor ----------------------------------

HEALTH = "grpc.health.v1.Health"
ADMIN = "cachegate.v1.AdminService"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
CLIENT_TOKEN = "client-token-0123456789abcd"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_health_and_admin_rpcs_and_refusals_are_counted(
    start_metered: StartMetered, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN_TOKEN} ops admin\n{CLIENT_TOKEN} app client\n")
    server = start_metered({"CACHEGATE_TOKENS_FILE": str(tokens)})
    before = server.scrape()
    for service, method, kind in (
        (HEALTH, "Check", "unary"),
        (HEALTH, "Watch", "server_stream"),
        (ADMIN, "ResetBreaker", "unary"),
    ):  # every served method's series exist from the start, with the contract's type
        labels = {"grpc_service": service, "grpc_method": method, "grpc_type": kind}
        assert value(before, "grpc_server_handled_total", grpc_code="OK", **labels) == 0
    health = health_pb2_grpc.HealthStub(server.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == 1  # SERVING
    with pytest.raises(grpc.RpcError) as unknown:  # grpc_health sets the code, returns
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    admin = admin_pb2_grpc.AdminServiceStub(server.channel)
    admin.ResetBreaker(admin_pb2.ResetBreakerRequest(), metadata=bearer(ADMIN_TOKEN))
    with pytest.raises(grpc.RpcError) as denied:
        admin.ResetBreaker(admin_pb2.ResetBreakerRequest(), metadata=bearer(CLIENT_TOKEN))
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as anonymous:  # refused by auth: counted all the same
        server.stub.Get(pb.GetRequest(key="k"))
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as streaming:
        list(server.stub.Pipeline(iter([pb.PipelineRequest()])))
    assert streaming.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert server.stub.Get(pb.GetRequest(key="k"), metadata=bearer(CLIENT_TOKEN)).found is False

    samples = server.scrape()

    def handled(service: str, method: str, code: str) -> float:
        labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
        return value(samples, "grpc_server_handled_total", **labels)

    assert handled(HEALTH, "Check", "OK") == 1
    assert handled(HEALTH, "Check", "NOT_FOUND") == 1
    assert handled(ADMIN, "ResetBreaker", "OK") == 1
    assert handled(ADMIN, "ResetBreaker", "PERMISSION_DENIED") == 1
    assert handled(SERVICE, "Get", "UNAUTHENTICATED") == 1
    assert handled(SERVICE, "Get", "OK") == 1
    assert handled(SERVICE, "Pipeline", "UNAUTHENTICATED") == 1
    started = {"grpc_service": ADMIN, "grpc_method": "ResetBreaker", "grpc_type": "unary"}
    assert value(samples, "grpc_server_started_total", **started) == 2
    assert value(samples, "grpc_server_handling_seconds_count", **started) == 2


def test_the_code_counted_is_the_code_the_caller_sees(start_metered: StartMetered) -> None:
    # An undecodable request (the servicer answers it), and a stream ended from another
    # thread (the idle watchdog, through end_call: the send watch takes the same way).
    server = start_metered({"CACHEGATE_STREAM_IDLE_SECONDS": "0.3"})
    raw_get = server.channel.unary_unary(
        f"/{SERVICE}/Get", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as bad:
        raw_get(b"\xff\xff\xff", timeout=5)
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    done = threading.Event()

    def silent() -> Iterator[pb.PipelineRequest]:  # sends nothing, for a bounded while
        done.wait(10)
        yield from ()

    replies = iter(server.stub.Pipeline(silent(), timeout=10))
    with pytest.raises(grpc.RpcError) as idle:
        next(replies)
    done.set()
    assert idle.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

    def handled(method: str, code: str) -> float:
        return value(
            server.scrape(), "grpc_server_handled_total", grpc_method=method, grpc_code=code
        )

    assert handled("Get", "INVALID_ARGUMENT") == 1
    wait_for(lambda: handled("Pipeline", "RESOURCE_EXHAUSTED") == 1, 5, "the stream's end")
    assert handled("Pipeline", "CANCELLED") == 0
    assert handled("Pipeline", "UNKNOWN") == 0


# --- secrets ---------------------------------------------------------------------------


def _run_server(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [SERVER], env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=err
        )


def _wait_http(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            http_get(port, "/")
        except OSError:
            return False
        return True

    wait_for(up, 20, "the side port")


def test_the_redis_password_never_shows(tmp_path: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    wrong = f"wrong-{uuid.uuid4().hex}"
    redis = start_standalone(tmp_path / "redis", password=password)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        right_port, right_http = free_port(), free_port()
        wrong_port, wrong_http = free_port(), free_port()
        common = {
            "CACHEGATE_BACKEND": "redis",
            "CACHEGATE_WORKERS": "1",
            "CACHEGATE_LOG_LEVEL": "DEBUG",
            "REDIS_SOCKET_TIMEOUT": "0.5",
            "REDIS_FAILURE_THRESHOLD": "2",
        }
        right = _run_server(
            {
                **common,
                "REDIS_URL": redis.url,  # the password inside the URL
                "CACHEGATE_LISTEN": f"127.0.0.1:{right_port}",
                "CACHEGATE_HTTP_LISTEN": f"127.0.0.1:{right_http}",
            },
            tmp_path / "right.log",
        )
        procs.append(right)
        bad = _run_server(
            {
                **common,
                "REDIS_HOST": "127.0.0.1",
                "REDIS_PORT": str(redis.port),
                "REDIS_PASSWORD": wrong,  # the password on its own, and wrong
                "CACHEGATE_LISTEN": f"127.0.0.1:{wrong_port}",
                "CACHEGATE_HTTP_LISTEN": f"127.0.0.1:{wrong_http}",
            },
            tmp_path / "wrong.log",
        )
        procs.append(bad)
        _wait_http(right_http, right, tmp_path / "right.log")
        _wait_http(wrong_http, bad, tmp_path / "wrong.log")
        wait_for(lambda: health(right_http)[0] == 200, 20, "a healthy server")

        seen: list[bytes] = []
        with grpc.insecure_channel(f"127.0.0.1:{right_port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            stub.SetEx(pb.SetExRequest(key="k", value=b"v", ttl_seconds=60), timeout=5)
            assert stub.Get(pb.GetRequest(key="k"), timeout=5).value == b"v"
        for port in (right_http, wrong_http):
            seen.append(http_get(port, "/metrics")[1])
            seen.append(http_get(port, "/health/redis")[1])
        status, report = health(wrong_http)
        assert status == 503
        assert "Authentication" in report["error"], report

        redis.kill()  # error paths: refused connections, breaker opening
        with grpc.insecure_channel(f"127.0.0.1:{right_port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.RpcError):
                    stub.Get(pb.GetRequest(key="k"), timeout=5)
            seen.append(str(stub.Stats(pb.StatsRequest(), timeout=5)).encode())
        status, body, _ = http_get(right_http, "/health/redis")
        assert status == 503
        seen.append(body)
        seen.append(http_get(right_http, "/metrics")[1])
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        redis.stop()
    logs = [(tmp_path / name).read_bytes() for name in ("right.log", "wrong.log")]
    assert b'"msg": "serving"' in logs[0]
    assert b"breaker transition" in logs[0]
    for text in [*seen, *logs]:
        assert password.encode() not in text
        assert wrong.encode() not in text
