"""Worker mode: `cachegate-server` as a real process tree sharing one port (SO_REUSEPORT)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cachegate.core import ConfigError, load_config
from cachegate.runtime._plan import (
    check_worker_mode,
    plan_workers,
    worker_config,
)
from cachegate.v1 import admin_pb2, admin_pb2_grpc, cache_pb2_grpc
from cachegate.v1 import cache_pb2 as pb
from redisprocs import RedisProcess, free_port

SERVER = str(Path(sys.executable).parent / "cachegate-server")


# --- helpers ---------------------------------------------------------------------------


class ServerProcess:
    """A `cachegate-server` subprocess whose JSON log goes to a file we can read any time."""

    def __init__(self, env: dict[str, str], log: Path, command: list[str] | None = None) -> None:
        self.log_path = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                command or [SERVER],
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entries.append(json.loads(line))
        return entries

    def messages(self, msg: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs() if entry.get("msg") == msg]

    def worker_pids(self) -> dict[int, int]:
        """worker id -> pid of its latest start."""
        return {e["worker_id"]: e["pid"] for e in self.messages("worker started")}

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Launch(Protocol):
    def __call__(self, env: dict[str, str], command: list[str] | None = None) -> ServerProcess: ...


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
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def two_free_ports() -> int:
    """A port p with p + 1 free as well (worker i serves HTTP on p + i)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


def stats(target: str) -> pb.StatsResponse:
    with grpc.insecure_channel(target) as channel:
        reply: pb.StatsResponse = cache_pb2_grpc.CacheServiceStub(channel).Stats(
            pb.StatsRequest(), timeout=5
        )
        return reply


def worker_ids(target: str, server: ServerProcess, want: set[int], timeout: float = 30) -> set[int]:
    """Worker ids that answered Stats, each over a fresh channel, until all of `want` did."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    for _ in range(500):  # bounded in count and time
        assert server.proc.poll() is None, server.log_path.read_text()
        try:
            seen.add(stats(target).worker_id)
        except grpc.RpcError:
            time.sleep(0.1)  # not listening yet
        if want <= seen or time.monotonic() > deadline:
            break
    return seen


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def redis_env(redis: RedisProcess, port: int, **extra: str) -> dict[str, str]:
    return {
        "CACHEGATE_BACKEND": "redis",
        "REDIS_URL": redis.url,
        "CACHEGATE_LISTEN": f"127.0.0.1:{port}",
        "CACHEGATE_HTTP_LISTEN": "off",
        "CACHEGATE_WORKERS": "2",
        "REDIS_MAX_CONNECTIONS": "4",
        "CACHEGATE_GRACE_SECONDS": "5",
        **extra,
    }


# --- planning (no processes) -----------------------------------------------------------


def test_plan_divides_the_connections_and_never_exceeds_them() -> None:
    redis = {"CACHEGATE_BACKEND": "redis", "CACHEGATE_HTTP_LISTEN": "127.0.0.1:9000"}
    plan = plan_workers(load_config({**redis, "REDIS_MAX_CONNECTIONS": "5"}), [0, 1, 2])
    assert (plan.workers, plan.max_connections_each) == (3, 1)  # 0 = one per CPU
    plan = plan_workers(
        load_config({**redis, "CACHEGATE_WORKERS": "8", "REDIS_MAX_CONNECTIONS": "4"}), [0, 1]
    )
    assert (plan.workers, plan.max_connections_each) == (4, 1)  # never more than connections
    config = load_config({**redis, "CACHEGATE_WORKERS": "2", "REDIS_MAX_CONNECTIONS": "5"})
    plan = plan_workers(config, [0, 1])
    assert (plan.workers, plan.max_connections_each) == (2, 2)
    second = worker_config(config, plan, 1)
    assert second == replace(
        config,
        pool=replace(config.pool, max_connections=2),
        server=replace(config.server, workers=2, http_listen="127.0.0.1:9001"),
    )
    memory = plan_workers(load_config({"CACHEGATE_WORKERS": "4"}), [0, 1, 2, 3])
    assert (memory.workers, memory.max_connections_each) == (1, 50)
    assert "memory" in memory.reason


def test_worker_mode_refuses_port_zero() -> None:
    config = load_config({"CACHEGATE_BACKEND": "redis", "CACHEGATE_LISTEN": "127.0.0.1:0"})
    with pytest.raises(ConfigError, match="port 0"):
        check_worker_mode(config, plan_workers(config, [0, 1]))


# --- real process trees ----------------------------------------------------------------


def test_two_workers_share_the_port_and_the_connection_budget(
    launch: Launch, redis_server: RedisProcess
) -> None:
    port, http_port = free_port(), two_free_ports()
    server = launch(redis_env(redis_server, port, CACHEGATE_HTTP_LISTEN=f"127.0.0.1:{http_port}"))
    target = f"127.0.0.1:{port}"
    assert worker_ids(target, server, {0, 1}) == {0, 1}
    pids = server.worker_pids()
    assert sorted(pids) == [0, 1]
    for _ in range(4):
        reply = stats(target)
        assert reply.workers == 2
        assert reply.pool.max_connections == 2  # 4 // 2

    # Bounded load from many channels (each its own TCP connection, spread by the kernel),
    # while Redis's own client count is watched.
    admin = redis_server.client()
    stop = threading.Event()
    peak = [0]
    calls: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    lock = threading.Lock()

    def watch() -> None:
        while not stop.is_set():
            info = admin.info("clients")
            assert isinstance(info, dict)
            peak[0] = max(peak[0], int(info["connected_clients"]) - 1)  # minus admin
            time.sleep(0.01)

    def load(n: int) -> None:
        deadline = time.monotonic() + 2.0
        local: Counter[str] = Counter()
        local_codes: Counter[str] = Counter()
        # gRPC shares one connection among a process's channels to the same target
        # unless told not to; a local subchannel pool gives each channel its own.
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(target, options=options) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for i in range(2000):  # bounded in count and time
                if time.monotonic() > deadline:
                    break
                key = f"k{n}:{i % 10}"
                try:
                    if i % 3 == 0:
                        local["SetEx"] += 1
                        stub.SetEx(pb.SetExRequest(key=key, value=b"v", ttl_seconds=60), timeout=5)
                    else:
                        local["Get"] += 1
                        stub.Get(pb.GetRequest(key=key), timeout=5)
                    local_codes["OK"] += 1
                except grpc.RpcError as error:
                    local_codes[error.code().name] += 1
        with lock:
            calls.update(local)
            codes.update(local_codes)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=load, args=(n,)) for n in range(16)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        stop.set()
        watcher.join(10)
    assert calls["Get"] > 100
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes  # waiting for a slot may time out
    assert codes["OK"] > 100
    assert 1 <= peak[0] <= 4, f"Redis saw {peak[0]} cachegate connections; the limit is 4"

    # Figures are per worker: each side port speaks for its own process, and the two
    # together account for every call the clients made.
    per_worker = [scrape(http_port + worker_id) for worker_id in (0, 1)]
    for worker_id, samples in enumerate(per_worker):
        assert metric(samples, "cachegate_info", worker=str(worker_id), workers="2") == 1
        assert metric(samples, "db_client_connection_max") == 2
    for method in ("Get", "SetEx"):
        started = [metric(s, "grpc_server_started_total", grpc_method=method) for s in per_worker]
        assert sum(started) == calls[method]
        assert min(started) > 0, f"one worker got no {method}: {started}"

    assert server.stop() == 0, server.log_path.read_text()
    for pid in pids.values():
        assert not _alive(pid), f"worker {pid} outlived the supervisor"
    exited = server.messages("worker exited")
    assert sorted(e["exit_code"] for e in exited) == [0, 0]
    # No worker pinned itself (CACHEGATE_PIN_CPUS is off by default; pinned layouts:
    # test_no_process_pins_itself_unless_asked).
    started_on = {e["worker_id"]: e["cpu"] for e in server.messages("worker started")}
    assert started_on == {0: None, 1: None}


def test_a_dead_worker_is_restarted(launch: Launch, redis_server: RedisProcess) -> None:
    port = free_port()
    server = launch(redis_env(redis_server, port))
    target = f"127.0.0.1:{port}"
    assert worker_ids(target, server, {0, 1}) == {0, 1}
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: server.worker_pids()[0] != victim, 15, "worker 0 to be restarted")
    died = server.messages("worker died unexpectedly")
    assert [(e["worker_id"], e["pid"], e["signal"]) for e in died] == [(0, victim, "SIGKILL")]
    assert worker_ids(target, server, {0, 1}) == {0, 1}
    server.proc.send_signal(signal.SIGINT)  # Ctrl-C is forwarded like SIGTERM
    assert server.proc.wait(30) == 0, server.log_path.read_text()
    assert server.messages("stopping workers")[0]["signal"] == "SIGINT"


def test_a_worker_that_keeps_dying_is_restarted_with_backoff(
    launch: Launch, redis_server: RedisProcess
) -> None:
    port = free_port()
    server = launch(redis_env(redis_server, port))
    assert worker_ids(f"127.0.0.1:{port}", server, {0, 1}) == {0, 1}
    survivor = server.worker_pids()[1]
    killed: list[int] = []
    for _ in range(7):  # more than the old budget of five a minute
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
        wait_for(
            lambda: server.proc.poll() is not None or server.worker_pids()[0] not in killed,
            30,
            "worker 0 to be restarted",
        )
        assert server.proc.poll() is None, server.log_path.read_text()
    died = server.messages("worker died unexpectedly")
    assert [e["pid"] for e in died] == killed
    assert [e["deaths_in_a_row"] for e in died] == [1, 2, 3, 4, 5, 6, 7]
    delays = [e["restart_in_seconds"] for e in died]
    assert delays[0] < 1.0, delays  # from well under a second...
    assert delays[-1] > delays[0], delays  # ...growing
    assert all(e["signal"] == "SIGKILL" and e["max_rss_mb"] > 0 for e in died)
    assert not server.messages("workers keep dying; stopping everything")
    assert _alive(survivor)  # the other worker served throughout
    assert worker_ids(f"127.0.0.1:{port}", server, {0, 1}) == {0, 1}
    assert server.stop() == 0, server.log_path.read_text()


_FAILING_WORKER = """
import sys, threading
from cachegate.core import load_config
from cachegate.runtime._plan import plan_workers
from cachegate.runtime._supervisor import Supervisor

def body(config, *, worker_id, workers, stop, board=None):
    if worker_id == 1:
        return int(sys.argv[1])  # a start-up error before serving (run() returns 1 or 2)
    board.serving()
    stop.wait(30)
    return 0

config = load_config({"CACHEGATE_BACKEND": "redis", "CACHEGATE_WORKERS": "2",
                      "CACHEGATE_LISTEN": "127.0.0.1:%d", "CACHEGATE_HTTP_LISTEN": "off"})
sys.exit(Supervisor(config, plan_workers(config, [0, 1]), body).run())
"""


@pytest.mark.parametrize("code", [1, 2])
def test_a_worker_failing_its_first_start_stops_the_supervisor(code: int) -> None:
    # The real body (main.run) returns 2 for an unusable tokens/certificate file and 1
    # for an address taken; a body that does so on its first start stands in for them.
    done = subprocess.run(
        [sys.executable, "-c", _FAILING_WORKER % free_port(), str(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == code, done.stderr
    assert "worker failed to start; stopping everything" in done.stderr
    assert "worker died unexpectedly" not in done.stderr  # not restarted


def test_workers_stop_when_the_supervisor_is_killed(
    launch: Launch, redis_server: RedisProcess
) -> None:
    port = free_port()
    server = launch(redis_env(redis_server, port))
    assert worker_ids(f"127.0.0.1:{port}", server, {0, 1}) == {0, 1}
    pids = list(server.worker_pids().values())
    server.kill()  # SIGKILL: nothing is forwarded
    wait_for(lambda: not any(_alive(pid) for pid in pids), 20, "the orphaned workers to stop")
    assert len(server.messages("the supervisor is gone; stopping")) == 2
    assert len(server.messages("stopped")) == 2  # each stopped gracefully

    def port_free() -> bool:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    # A worker's listener closes with the process (no grpc stop, see CacheServer), and
    # /proc shows the process gone (a zombie leader) while its last threads still exit.
    wait_for(port_free, 5, "the port to be free again")


def test_memory_backend_runs_one_worker(
    launch: Launch,
) -> None:
    port = free_port()
    server = launch(
        {
            "CACHEGATE_LISTEN": f"127.0.0.1:{port}",
            "CACHEGATE_HTTP_LISTEN": "off",
            "CACHEGATE_WORKERS": "2",
        }
    )
    target = f"127.0.0.1:{port}"
    assert worker_ids(target, server, {0}) == {0}
    with grpc.insecure_channel(target) as channel:
        cache_pb2_grpc.CacheServiceStub(channel).SetEx(
            pb.SetExRequest(key="shared", value=b"one process", ttl_seconds=60), timeout=5
        )
    for _ in range(20):  # fresh channels: with two processes some would miss the key
        with grpc.insecure_channel(target) as channel:
            reply = cache_pb2_grpc.CacheServiceStub(channel).Get(
                pb.GetRequest(key="shared"), timeout=5
            )
        assert reply.value == b"one process"
    assert stats(target).workers == 1
    assert server.stop() == 0
    (plan,) = [e for e in server.logs() if e["logger"] == "cachegate.workers"]
    assert plan["workers"] == 1
    assert plan["requested_workers"] == 2
    assert plan["level"] == "warning"
    assert "memory backend" in plan["msg"]
    assert not server.messages("supervising")


def test_a_second_server_on_the_port_fails(launch: Launch, redis_server: RedisProcess) -> None:
    port, http_port = free_port(), two_free_ports()
    first = launch(redis_env(redis_server, port, CACHEGATE_HTTP_LISTEN=f"127.0.0.1:{http_port}"))
    assert worker_ids(f"127.0.0.1:{port}", first, {0, 1}) == {0, 1}

    def second(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SERVER],
            env={**os.environ, **redis_env(redis_server, port), **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    for clash in (
        second(),  # worker mode: SO_REUSEPORT would let it share, the pre-check refuses
        second(CACHEGATE_WORKERS="1"),  # one process, no SO_REUSEPORT
    ):
        assert clash.returncode == 1, clash.stderr
        assert "cannot listen" in clash.stderr
    # Another gRPC port, but worker 1's side port is taken.
    other = second(
        CACHEGATE_LISTEN=f"127.0.0.1:{free_port()}",
        CACHEGATE_HTTP_LISTEN=f"127.0.0.1:{http_port - 1}",
    )
    assert other.returncode == 1, other.stderr
    assert "CACHEGATE_HTTP_LISTEN" in other.stderr
    # Port 0 cannot be shared by workers.
    zero = second(CACHEGATE_LISTEN="127.0.0.1:0")
    assert zero.returncode == 2
    assert "port 0" in zero.stderr
    assert first.stop() == 0


# --- admin RPCs reach every worker ---------------------------------------------------

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

    # Every fresh connection, whichever worker it lands on, sees the breaker open...
    assert _gets(target) == {"UNAVAILABLE": FRESH}
    # ...and Stats, health and metrics of both workers agree.
    forced_open = (pb.CIRCUIT_STATE_OPEN, True, "NOT_SERVING")
    assert _views(target, server) == {0: forced_open, 1: forced_open}
    assert _breaker_gauges(http_port) == [2.0, 2.0]

    # A worker that dies afterwards comes back up forced open.
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: _serving_count(server, 0) == 2, 30, "worker 0 to restart and serve")
    assert server.worker_pids()[0] != victim
    assert _gets(target) == {"UNAVAILABLE": FRESH}
    assert _views(target, server) == {0: forced_open, 1: forced_open}
    assert _breaker_gauges(http_port) == [2.0, 2.0]

    reset = admin.ResetBreaker(
        admin_pb2.ResetBreakerRequest(), metadata=_bearer(ADMIN_TOKEN), timeout=10
    )
    assert (reset.breaker.state, reset.breaker.forced) == (pb.CIRCUIT_STATE_CLOSED, False)
    assert _gets(target) == {"OK": FRESH}
    normal = (pb.CIRCUIT_STATE_CLOSED, False, "SERVING")
    assert _views(target, server) == {0: normal, 1: normal}
    assert _breaker_gauges(http_port) == [0.0, 0.0]

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


# --- CPU placement: pinning is opt-in, the worker count follows the CPU quota -----------


def affinity_of(pid: int) -> set[int]:
    return set(os.sched_getaffinity(pid))


def test_no_process_pins_itself_unless_asked(launch: Launch, redis_server: RedisProcess) -> None:
    # On a shared machine (a Kubernetes node without exclusive cores) every cachegate
    # pinning itself would pick the same lowest-numbered CPUs.
    ours = affinity_of(0)
    if len(ours) < 2:
        pytest.skip("one CPU here: pinned and unpinned look the same")
    port = free_port()
    single = launch(redis_env(redis_server, port, CACHEGATE_WORKERS="1"))
    assert worker_ids(f"127.0.0.1:{port}", single, {0}) == {0}
    assert affinity_of(single.proc.pid) == ours
    assert not single.messages("pinned to one CPU")
    assert single.stop() == 0

    port = free_port()
    workers = launch(redis_env(redis_server, port))
    assert worker_ids(f"127.0.0.1:{port}", workers, {0, 1}) == {0, 1}
    assert [affinity_of(pid) for pid in workers.worker_pids().values()] == [ours, ours]
    assert workers.stop() == 0

    port = free_port()
    pinned = launch(redis_env(redis_server, port, CACHEGATE_PIN_CPUS="1"))
    assert worker_ids(f"127.0.0.1:{port}", pinned, {0, 1}) == {0, 1}
    first, second = sorted(ours)[:2]
    pids = pinned.worker_pids()
    assert (affinity_of(pids[0]), affinity_of(pids[1])) == ({first}, {second})
    assert pinned.stop() == 0


@pytest.fixture
def v1_cgroup() -> Iterator[Callable[[str, dict[str, int]], Path]]:
    """A real cgroup v1 group of one controller ("cpu", "memory") with the given files
    written (a quota, a limit), made for one test and removed after (skipped where the
    machine does not let us make one: no v1 hierarchy of it, no rights)."""
    made: list[Path] = []

    def make(controller: str, files: dict[str, int]) -> Path:
        parent = Path("/sys/fs/cgroup") / controller
        group = parent / f"cachegate-test-{os.getpid()}-{len(made)}"
        try:
            group.mkdir()
        except OSError as exc:
            pytest.skip(f"cannot make a cgroup here ({parent}: {exc})")
        made.append(group)
        try:
            for name, value in files.items():
                (group / name).write_text(str(value))
        except OSError as exc:
            pytest.skip(f"cannot set {', '.join(files)} here ({group}: {exc})")
        return group

    yield make
    for group in made:
        deadline = time.monotonic() + 10
        while True:
            # Only the test's own server is in the group: a test that failed half-way
            # may leave it running (this teardown runs before `launch`'s).
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                group.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def entering(group: Path) -> list[str]:
    """A command that starts the server inside `group` (it joins it, then becomes
    cachegate-server)."""
    enter = (
        "import os, sys; "
        f"open({str(group / 'cgroup.procs')!r}, 'w').write(str(os.getpid())); "
        f"os.execv({SERVER!r}, [{SERVER!r}])"
    )
    return [sys.executable, "-c", enter]


def test_the_worker_count_follows_a_real_cgroup_cpu_quota(
    launch: Launch, redis_server: RedisProcess, v1_cgroup: Callable[[str, dict[str, int]], Path]
) -> None:
    if len(affinity_of(0)) < 2:
        pytest.skip("one CPU here: the quota cannot lower the worker count")
    # Half a CPU.
    group = v1_cgroup("cpu", {"cpu.cfs_period_us": 100_000, "cpu.cfs_quota_us": 50_000})
    port = free_port()
    server = launch(redis_env(redis_server, port, CACHEGATE_WORKERS="0"), entering(group))
    assert worker_ids(f"127.0.0.1:{port}", server, {0}) == {0}
    assert stats(f"127.0.0.1:{port}").workers == 1  # two CPUs here, but half a CPU's time
    (plan,) = server.messages("one process, no supervisor")
    assert (plan["workers"], plan["cpu_quota"], plan["cpu_share_each"]) == (1, 0.5, 0.5)
    assert server.stop() == 0


def test_each_workers_memory_follows_a_real_cgroup_limit_unless_set(
    launch: Launch, redis_server: RedisProcess, v1_cgroup: Callable[[str, dict[str, int]], Path]
) -> None:
    # 448 MiB for 2 workers: 224 MiB each, less a worker's base (112 MiB), split 8 : 1
    # between the memory budget and the stale copy: both below their defaults (the caps).
    mib = 1024 * 1024
    group = v1_cgroup("memory", {"memory.limit_in_bytes": 448 * mib})
    budget, stale = 112 * mib * 8 // 9, 112 * mib // 9

    def figures(server: ServerProcess) -> list[tuple[int, int]]:
        """The budget and stale copy each worker runs with, from its `serving` line."""
        wait_for(lambda: len(server.messages("serving")) == 2, 30, "two serving workers")
        return [
            (s["memory_budget_bytes"], s["stale_copy_bytes"]) for s in server.messages("serving")
        ]

    port = free_port()
    derived = launch(redis_env(redis_server, port), entering(group))
    assert figures(derived) == [(budget, stale)] * 2
    (plan,) = [entry for entry in derived.logs() if "memory_budget_from" in entry]
    assert (plan["workers"], plan["memory_limit_mib"], plan["memory_limit_from"]) == (
        2,
        448.0,
        "cgroup",
    )
    assert (plan["memory_budget_from"], plan["stale_copy_from"]) == ("default", "default")
    assert derived.stop() == 0

    # Set, the operator's figures win over the derived ones, even past the limit (which
    # the plan warns about: 2 x (112 + 200) MiB is more than 448).
    port = free_port()
    chosen = {"CACHEGATE_MEMORY_BUDGET_BYTES": str(200 * mib), "CACHEGATE_STALE_COPY_BYTES": "0"}
    explicit = launch(redis_env(redis_server, port, **chosen), entering(group))
    assert figures(explicit) == [(200 * mib, 0)] * 2
    (plan,) = [entry for entry in explicit.logs() if "memory_budget_from" in entry]
    assert (plan["memory_budget_from"], plan["stale_copy_from"]) == ("set", "set")
    assert [e for e in explicit.logs() if "pass the memory limit of 448.0 MiB" in e["msg"]]
    assert explicit.stop() == 0
