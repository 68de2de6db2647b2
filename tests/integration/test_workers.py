"""Worker mode: `cachegate-server` as a real process tree sharing one port (SO_REUSEPORT):
the plan, the supervisor, restarts and shutdown. Helpers in tests/workerprocs.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace

import grpc
import pytest

from cachegate.core import ConfigError, load_config
from cachegate.runtime._plan import (
    check_worker_mode,
    plan_workers,
    worker_config,
)
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from redisprocs import RedisProcess, free_port
from workerprocs import (
    SERVER,
    Launch,
    alive,
    metric,
    redis_env,
    scrape,
    stats,
    two_free_ports,
    wait_for,
    worker_ids,
)

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
        assert not alive(pid), f"worker {pid} outlived the supervisor"
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
    assert alive(survivor)  # the other worker served throughout
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
    wait_for(lambda: not any(alive(pid) for pid in pids), 20, "the orphaned workers to stop")
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
