"""The `cachegate` command line, run as a shell user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import RunningServer
from redisprocs import free_port

CLI = str(Path(sys.executable).parent / "cachegate")


def cli(target: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "--target", target, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def table(stdout: str) -> dict[str, str]:
    """The summary table: `name  value` lines after the progress lines."""
    rows = {}
    for line in stdout.splitlines():
        name, _, value = line.partition("  ")
        if name and not name.startswith(" "):
            rows[name] = value.strip()
    return rows


def test_get_set_del(memory_server: RunningServer) -> None:
    target = memory_server.target
    missing = cli(target, "get", "greeting")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    assert cli(target, "set", "greeting", "héllo", "--ttl", "60").returncode == 0
    got = cli(target, "get", "greeting")
    assert (got.returncode, got.stdout) == (0, "héllo\n")
    assert cli(target, "del", "greeting").returncode == 0
    assert cli(target, "del", "greeting").returncode == 1


def test_stats_and_health(memory_server: RunningServer) -> None:
    stats = cli(memory_server.target, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert data["backend"] == "memory"
    assert data["breaker"]["state"] == "CIRCUIT_STATE_CLOSED"
    plain = cli(memory_server.target, "stats")
    assert "pool.max_connections: 50" in plain.stdout
    health = cli(memory_server.target, "health")
    assert (health.returncode, health.stdout) == (0, "SERVING\n")
    watched = cli(memory_server.target, "health", "--watch", "--for", "1")
    assert watched.returncode == 0
    assert watched.stdout.strip().endswith("SERVING")


def test_bench_prints_progress_and_a_summary(memory_server: RunningServer) -> None:
    result = cli(
        memory_server.target, "bench", "--count", "400", "--concurrency", "4", "--keys", "50"
    )
    assert result.returncode == 0, result.stderr
    summary = table(result.stdout)
    assert summary["operations"] == "400"
    assert summary["errors"] == "0"
    assert "ops/s" in result.stdout.splitlines()[0]  # the progress line came first
    assert float(summary["ops/s"]) > 0
    batched = cli(
        memory_server.target, "bench", "--op", "mixed", "--count", "1000", "--batch", "100"
    )
    assert batched.returncode == 0, batched.stderr
    assert table(batched.stdout)["operations"] == "1000"


def test_exit_codes_for_errors(memory_server: RunningServer) -> None:
    invalid = cli(memory_server.target, "set", "k", "v", "--ttl", "0")
    assert invalid.returncode == 4
    assert "INVALID_ARGUMENT" in invalid.stderr
    usage = cli(memory_server.target, "frobnicate")
    assert usage.returncode == 2
    nobody = cli(f"127.0.0.1:{free_port()}", "--timeout", "1", "get", "k")
    assert nobody.returncode == 3
    assert "UNAVAILABLE" in nobody.stderr


def test_bench_reports_the_rate_of_a_short_run(memory_server: RunningServer) -> None:
    """The summary's ops/s agrees with the count over a wall clock taken around the load.

    A consistency check, not a speed target. The clock starts before bench() and stops
    when the last of its calls returns (a real client that notes the time of each
    reply). A short run used to be divided by its time plus the progress loop's idle
    tick (`--count 200`: 397 ops/s reported against 2,630 seen live).
    """
    import io
    import threading
    import time
    from typing import Any

    from cachegate.client import CacheClient
    from cachegate.client._cli import _parser, bench

    class TimedClient(CacheClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.lock = threading.Lock()
            self.last_reply = 0.0

        def set_ex(self, *args: Any, **kwargs: Any) -> Any:
            result = super().set_ex(*args, **kwargs)
            now = time.monotonic()
            with self.lock:
                self.last_reply = max(self.last_reply, now)
            return result

    args = _parser().parse_args(
        ["bench", "--op", "set", "--count", "200", "--concurrency", "4", "--keys", "50"]
    )
    client = TimedClient(memory_server.target, timeout=5.0)
    try:
        client.set_ex("warm-up", b"x", 60)  # connected before the clock starts
        out = io.StringIO()
        start = time.monotonic()
        assert bench(client, args, out) == 0, out.getvalue()
        returned = time.monotonic()
    finally:
        client.close()
    summary = table(out.getvalue())
    assert summary["operations"] == "200"
    reported = float(summary["ops/s"])
    measured = 200 / (client.last_reply - start)
    print(
        f"bench --count 200: reported {reported:.0f} ops/s, count/wall {measured:.0f} ops/s, "
        f"returned {(returned - client.last_reply) * 1000:.0f} ms after its last reply"
    )
    assert measured * 0.8 <= reported <= measured * 1.2, (reported, measured)
