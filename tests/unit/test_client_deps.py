"""The thin client (sync and asyncio) installs and imports with grpcio and protobuf alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Everything the server side needs, and the server side itself.
FORBIDDEN = (
    "redis",
    "hiredis",
    "fakeredis",
    "prometheus_client",
    "grpc_health",
    "grpc_reflection",
    "grpc_status",
    "google.rpc",
    "cachegate.core",
    "cachegate.pool",
    "cachegate.rpc",
    "cachegate.runtime",
)


def test_client_distribution_depends_on_grpcio_and_protobuf_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = sorted(dep.split(">")[0].split("=")[0].split("[")[0] for dep in project["dependencies"])
    assert names == ["grpcio", "protobuf"]


def test_client_imports_and_works_with_server_modules_blocked() -> None:
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        FORBIDDEN = {FORBIDDEN!r}

        def forbidden(m):
            return any(m == f or m.startswith(f + ".") for f in FORBIDDEN)

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if forbidden(name):
                    raise ImportError(f"the thin client must not import {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import cachegate.client as client
        from cachegate.v1 import cache_pb2, cache_pb2_grpc
        c = client.CacheClient("127.0.0.1:1", timeout=0.2)
        try:
            c.get("k")
        except client.CacheUnavailableError as exc:
            assert isinstance(exc, ConnectionError)
            print("unavailable as expected")
        finally:
            c.close()

        import asyncio
        import cachegate.client.aio as aio

        async def unreachable():
            async with aio.AsyncCacheClient("127.0.0.1:1", timeout=0.2) as c:
                try:
                    await c.get("k")
                except client.CacheUnavailableError as exc:
                    assert isinstance(exc, ConnectionError)
                    print("aio unavailable as expected")

        asyncio.run(unreachable())
        loaded = sorted(m for m in sys.modules if forbidden(m))
        assert not loaded, loaded
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "\nunavailable as expected" in "\n" + result.stdout
    assert "aio unavailable as expected" in result.stdout
