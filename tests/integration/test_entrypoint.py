"""`cachegate-server` as a user runs it: a real process, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cachegate.core import SETTINGS
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from redisprocs import free_port

SERVER = str(Path(sys.executable).parent / "cachegate-server")


def run_server(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SERVER],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_serving(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "server never became SERVING"
            time.sleep(0.1)


def test_help_lists_every_variable_with_its_default() -> None:
    result = subprocess.run([SERVER, "--help"], capture_output=True, text=True, check=True)
    for setting in SETTINGS:
        assert setting.name in result.stdout


def test_bad_setting_stops_startup_with_one_line() -> None:
    result = subprocess.run(
        [SERVER],
        env={**os.environ, "REDIS_PORT": "abc"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cachegate-server: configuration error: REDIS_PORT='abc': must be a whole number"
    ]


def test_starts_on_memory_answers_and_exits_cleanly_on_sigterm() -> None:
    port = free_port()
    proc = run_server({"CACHEGATE_LISTEN": f"127.0.0.1:{port}", "CACHEGATE_HTTP_LISTEN": "off"})
    try:
        wait_serving(port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            stub.SetEx(pb.SetExRequest(key="k", value=b"v", ttl_seconds=30), timeout=5)
            assert stub.Get(pb.GetRequest(key="k"), timeout=5).value == b"v"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert '"msg": "serving"' in stderr
    assert '"msg": "stopped"' in stderr


def test_port_taken_fails_loudly() -> None:
    port = free_port()
    first = run_server({"CACHEGATE_LISTEN": f"127.0.0.1:{port}", "CACHEGATE_HTTP_LISTEN": "off"})
    try:
        wait_serving(port)
        second = subprocess.run(
            [SERVER],
            env={**os.environ, "CACHEGATE_LISTEN": f"127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 1
        assert "cannot listen" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)


def test_bad_tokens_file_stops_startup_in_worker_mode_too(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("too-short-Zk alice client\n")
    for workers in ("1", "2"):
        result = subprocess.run(
            [SERVER],
            env={
                **os.environ,
                "CACHEGATE_BACKEND": "redis",
                "CACHEGATE_LISTEN": f"127.0.0.1:{free_port()}",
                "CACHEGATE_HTTP_LISTEN": "off",
                "CACHEGATE_WORKERS": workers,
                "CACHEGATE_TOKENS_FILE": str(tokens),
            },
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert "token shorter than 16 characters" in result.stderr
        assert "too-short-Zk" not in result.stderr
