"""Worker mode under test: a real `cachegate-server` process tree, its logs and figures.

Shared by the worker-mode tests (test_workers, test_worker_admin, test_worker_placement);
the `launch` fixture that starts and reaps these processes lives in conftest.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import grpc
from prometheus_client.parser import text_string_to_metric_families

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from redisprocs import RedisProcess, free_port

SERVER = str(Path(sys.executable).parent / "cachegate-server")


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


def alive(pid: int) -> bool:
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
