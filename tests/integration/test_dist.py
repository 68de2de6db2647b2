"""`make dist` builds a wheel that installs into a fresh virtualenv as the thin client:
grpcio and protobuf come along, no server dependency does, and the client works
against a real server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import RunningServer

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("redis", "hiredis", "fakeredis", "prometheus_client", "grpc_health",
               "grpc_reflection", "grpc_status")  # fmt: skip


def run(argv: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=cwd)
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result.stdout


def test_built_wheel_installs_the_client_alone(
    memory_server: RunningServer, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    run(["make", "--no-print-directory", "dist", f"DIST={dist}"], cwd=ROOT)
    (wheel,) = dist.glob("cachegate-*-py3-none-any.whl")
    venv = tmp_path / "fresh"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", str(wheel)])
    script = textwrap.dedent(
        f"""
        import importlib.util
        import cachegate.client
        from cachegate.client import CacheClient
        missing = [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m) is None]
        print("absent:", ",".join(missing))
        print("from:", cachegate.client.__file__)
        with CacheClient("{memory_server.target}") as cache:
            cache.set_ex("from-the-wheel", b"hello", ttl_seconds=60)
            print("read:", cache.get("from-the-wheel"))
        """
    )
    out = run([python, "-c", script], cwd=tmp_path)
    assert f"absent: {','.join(SERVER_ONLY)}" in out  # nothing of the server came along
    assert f"from: {venv}" in out  # the wheel's copy, not this checkout's
    assert "read: b'hello'" in out
