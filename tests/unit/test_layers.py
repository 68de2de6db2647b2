"""The house's layers, read from the source: no import runs back up.

contract (cachegate.v1) <- client; core <- pool <- rpc <- runtime. The core does no
I/O and knows neither gRPC nor redis; the pool knows no gRPC; the gRPC layer knows
nothing of processes; only the entry point reads the environment.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "core": ROOT / "server/cachegate/core",
    "pool": ROOT / "server/cachegate/pool",
    "rpc": ROOT / "server/cachegate/rpc",
    "runtime": ROOT / "server/cachegate/runtime",
    "client": ROOT / "client/cachegate/client",
}
# What each package may not import (a prefix matches the module and its submodules).
FORBIDDEN = {
    "core": (
        "grpc", "redis", "hiredis", "fakeredis", "prometheus_client", "google",
        "socket", "subprocess", "select", "selectors", "ssl", "http", "urllib.request",
        "cachegate.pool", "cachegate.rpc", "cachegate.runtime", "cachegate.client", "cachegate.v1",
    ),
    "pool": ("grpc", "google", "prometheus_client", "cachegate.rpc", "cachegate.runtime",
             "cachegate.client", "cachegate.v1"),
    "rpc": ("cachegate.runtime", "cachegate.client"),
    "runtime": ("cachegate.client",),
    "client": ("redis", "cachegate.core", "cachegate.pool", "cachegate.rpc", "cachegate.runtime"),
}  # fmt: skip


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def banned(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_runs_back_up(package: str) -> None:
    offences = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted(PACKAGES[package].rglob("*.py"))
        for module in sorted(imports(path))
        if banned(module, FORBIDDEN[package])
    ]
    assert not offences, offences


def test_the_rule_sees_an_offence() -> None:
    assert banned("cachegate.runtime._board", FORBIDDEN["rpc"])
    assert banned("grpc", FORBIDDEN["core"])
    assert not banned("grpcx", FORBIDDEN["core"])


# The entry points: the server's, the guide's get_redis_pool() (it reads the guide's
# variables by contract), and the client's defaults (CACHEGATE_TARGET, the CLI's token).
ENVIRONMENT_READERS = [
    "client/cachegate/client/_channel.py",
    "client/cachegate/client/_cli.py",
    "server/cachegate/pool/_global.py",
    "server/cachegate/runtime/main.py",
]


_ENVIRONMENT = {"environ", "environb", "getenv"}


def reads_environment(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in _ENVIRONMENT:
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and _ENVIRONMENT & {alias.name for alias in node.names}
        ):
            return True
    return False


def test_only_the_entry_points_read_the_environment() -> None:
    readers = sorted(
        str(path.relative_to(ROOT))
        for root in PACKAGES.values()
        for path in root.rglob("*.py")
        if reads_environment(path)
    )
    assert readers == ENVIRONMENT_READERS
