"""Another language calls us: the Node.js example in client/node against a real server.

client/node/smoke.js builds its stubs at run time from protos/cachegate/v1/cache.proto
(@grpc/grpc-js + @grpc/proto-loader), runs every RPC including a two-batch Pipeline
stream, and prints one JSON summary line. These tests run it against an in-process
server, on the embedded backend and in front of a real redis-server, then read back from
Python what Node wrote, so they fail if Node did nothing at all.

Node.js and npm are required, like redis-server: when missing, the tests fail saying how
to get them (a skip would let a broken contract for other languages go unnoticed).
client/node/node_modules is installed here with `npm ci` from the committed lockfile
when it is missing or does not match package-lock.json.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from cachegate.v1 import cache_pb2 as pb
from conftest import RunningServer, StartServer
from redisprocs import RedisProcess

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "client" / "node"
SMOKE = NODE_DIR / "smoke.js"
MIN_NODE_MAJOR = 18  # package.json's "engines"; tested with Node.js 20
NPM_CI_TIMEOUT = 300.0  # a cold npm cache downloads ~35 small packages
SMOKE_TIMEOUT = 90.0  # smoke.js gives up by itself after 60 s
# The checks smoke.js must have run (and passed): dropping one must not go unnoticed.
EXPECTED_CHECKS = {
    'health ""',
    'health "cachegate.v1.CacheService"',
    "set_ex",
    "get hit",
    "get miss",
    "set_ex ttl 0 is INVALID_ARGUMENT",
    "pipeline batch 1",
    "pipeline batch 2",
    "stats",
    "delete",
}
HOW_TO_GET_NODE = (
    f"Node.js {MIN_NODE_MAJOR}+ and npm are needed to test the Node client (client/node). "
    "Install them from your distribution (Debian/Ubuntu: `apt-get install nodejs npm`) "
    "or from https://nodejs.org/, make sure `node` and `npm` are on PATH, and re-run."
)

# npm ci may take minutes on a cold cache: allow for it beyond the suite's 120 s default.
pytestmark = pytest.mark.timeout(NPM_CI_TIMEOUT + SMOKE_TIMEOUT + 60)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"`{tool}` not found on PATH. {HOW_TO_GET_NODE}", pytrace=False)
    return path


def _locked_versions(lockfile: Path) -> dict[str, str] | None:
    """{install path: version} of every package a lockfile records; None if unreadable."""
    try:
        packages = json.loads(lockfile.read_text(encoding="utf-8"))["packages"]
    except (OSError, ValueError, KeyError):
        return None
    return {path: str(entry.get("version")) for path, entry in packages.items() if path}


def _needs_install() -> bool:
    """True when node_modules is missing or differs from package-lock.json.

    npm records what it installed in node_modules/.package-lock.json; comparing it with
    the committed lockfile catches a checkout that bumped a version since the last install.
    """
    installed = _locked_versions(NODE_DIR / "node_modules" / ".package-lock.json")
    return installed is None or installed != _locked_versions(NODE_DIR / "package-lock.json")


@pytest.fixture(scope="module")
def node() -> str:
    """The `node` binary, with client/node's dependencies installed from the lockfile."""
    node = _require("node")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        pytest.fail(f"node {version!r} is too old. {HOW_TO_GET_NODE}", pytrace=False)
    if _needs_install():
        npm = _require("npm")
        # `npm ci` installs exactly what package-lock.json records (and fails if it
        # disagrees with package.json). --ignore-scripts: the packages are plain
        # JavaScript, and no install script of a dependency has to run on our machines.
        command = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"]
        try:
            result = subprocess.run(
                command,
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT,
                env={**os.environ, "npm_config_update_notifier": "false"},
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"`npm ci` in {NODE_DIR} took more than {NPM_CI_TIMEOUT:.0f} s "
                "(is the npm registry reachable?)",
                pytrace=False,
            )
        if result.returncode != 0:
            pytest.fail(
                f"`{' '.join(command[1:])}` in {NODE_DIR} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
                pytrace=False,
            )
        assert not _needs_install(), "npm ci ran but node_modules differs from the lockfile"
    return node


def _run_smoke(node: str, target: str, prefix: str) -> dict[str, Any]:
    """Runs smoke.js against target and returns its JSON summary (all checks passed)."""
    try:
        result = subprocess.run(
            [node, str(SMOKE), target, prefix],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=SMOKE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"smoke.js still running after {SMOKE_TIMEOUT:.0f} s: {exc.stderr!r}")
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, (
        f"smoke.js exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert len(lines) == 1, f"expected one JSON line, got: {result.stdout!r}"
    summary: dict[str, Any] = json.loads(lines[0])
    return summary


def _check_node_run(server: RunningServer, node: str, backend: str) -> tuple[str, bytes]:
    """Runs the Node client against server; returns the key Node left and its value."""
    prefix = f"node-test:{uuid.uuid4().hex}"
    summary = _run_smoke(node, server.target, prefix)

    assert summary["ok"] is True
    assert summary["failed"] == 0
    ran = {check["name"] for check in summary["checks"] if check["ok"]}
    assert ran == EXPECTED_CHECKS, f"checks that passed: {sorted(ran)}"
    assert summary["passed"] == len(EXPECTED_CHECKS)
    assert summary["target"] == server.target
    assert summary["prefix"] == prefix
    assert summary["backend"] == backend
    assert summary["breaker_state"] == "CIRCUIT_STATE_CLOSED"

    # From Python, through our own stub: the key Node wrote holds exactly the bytes
    # Node says it wrote, and those are the bytes smoke.js is documented to write
    # (non-UTF-8 bytes included, so a text round trip anywhere would show).
    kept_key = f"{prefix}:kept"
    expected = f"from node: {kept_key} ".encode() + b"\x00\xff\x80\n"
    assert summary["kept"]["key"] == kept_key
    assert summary["kept"]["value_base64"] == base64.b64encode(expected).decode("ascii")
    reply = server.stub.Get(pb.GetRequest(key=kept_key), timeout=5)
    assert reply == pb.GetResponse(found=True, value=expected), (
        f"after the Node run, Get({kept_key!r}) from Python gave {reply!r}: Node did not write it"
    )

    # ...and what Node deleted (or never validly wrote) is gone.
    for name in ("pipe-a", "pipe-b", "pipe-c", "zero-ttl"):
        gone = server.stub.Get(pb.GetRequest(key=f"{prefix}:{name}"), timeout=5)
        assert gone.found is False, f"{name} should not exist after the Node run"
    return kept_key, expected


def test_node_client_against_embedded_backend(node: str, start_server: StartServer) -> None:
    server = start_server()
    _check_node_run(server, node, "memory")


def test_node_client_against_redis_server(
    node: str, start_server: StartServer, redis_server: RedisProcess
) -> None:
    server = start_server({"CACHEGATE_BACKEND": "redis", "REDIS_URL": redis_server.url})
    kept_key, expected = _check_node_run(server, node, "redis")

    # The bytes really landed in Redis, with the TTL Node asked for.
    client = redis_server.client()
    try:
        assert client.get(kept_key) == expected
        assert 0 < client.ttl(kept_key) <= 600
    finally:
        client.close()
