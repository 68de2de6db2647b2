"""The migration guide's in-process pool reaches Redis the way the guide configures it.

With CACHEGATE_BACKEND unset, REDIS_URL / REDIS_HOST / REDIS_SENTINELS /
REDIS_CLUSTER_NODES choose the backend (core.select_backend); `get_redis_pool()`
defaults to Redis at localhost:6379 like the guide; the server with nothing set
stays on the embedded backend. Each start logs one line naming backend and target.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachegate.pool import close_redis_pool, get_redis_pool
from redisprocs import RedisProcess, free_port

SERVER = str(Path(sys.executable).parent / "cachegate-server")

# The guide's in-process code blocks in its order, unchanged but for the import line;
# the glue (values the guide leaves undefined, a print) is marked. FastAPI's handlers
# are left out: the pool calls inside them are the ones above them.
GUIDE_SCRIPT = textwrap.dedent(
    """
    import logging
    logger = logging.getLogger(__name__)
    value1, value2, value3 = b"v1", b"v2", b"v3"          # glue
    session_data = b"session"                             # glue
    keys = ["key1", "key2", "key3"]                       # glue

    # 1. Update Cache Implementation (new way)
    from cachegate.pool import get_redis_pool   # was: from api.services.redis_pool import ...
    pool = get_redis_pool()
    result = pool.execute("get", "key")

    # 2. Use Context Manager for Batch Operations
    with pool.get_client() as client:
        pipe = client.pipeline()
        pipe.set("key1", value1)
        pipe.set("key2", value2)
        pipe.set("key3", value3)
        pipe.execute()

    # 3. Update Health Checks
    health = pool.health_check()
    assert health["healthy"] is True, health                # glue

    # 5. Update Error Handling
    try:
        result = pool.execute("get", "key")
    except ConnectionError as e:
        # Circuit breaker is open
        logger.warning(f"Redis unavailable: {e}")
        result = None

    # Monitoring
    stats = pool.get_stats()
    print(f"Connections in use: {stats['in_use_connections']}/{stats['max_connections']}")
    print(f"Circuit state: {stats['circuit_state']}")

    # Performance tips 1-3
    with pool.get_client() as client:
        pipe = client.pipeline()
        for key in keys:
            pipe.get(key)
        results = pipe.execute()
    assert results == [b"v1", b"v2", b"v3"], results      # glue

    from functools import lru_cache

    @lru_cache(maxsize=1000)
    def get_cached_value(key: str):
        return pool.execute("get", key)
    assert get_cached_value("key1") == b"v1"              # glue

    result = b"analysis"                                  # glue
    pool.execute("setex", "user_session", 300, session_data)  # 5 minutes
    pool.execute("setex", "analysis_result", 3600, result)  # 1 hour

    # Rollback Plan
    class RedisCache:
        def __init__(self):
            self.pool = get_redis_pool()

        def get(self, key):
            return self.pool.execute("get", key)

        def set(self, key, value, ttl=3600):
            return self.pool.execute("setex", key, ttl, value)
    cache = RedisCache()
    cache.set("rollback", b"old")
    assert cache.get("rollback") == b"old"                # glue

    from cachegate.pool import close_redis_pool
    close_redis_pool()
    print("guide ok", stats["backend"])
    """
)


def clean_env(**env: str) -> dict[str, str]:
    """os.environ without any CACHEGATE_* / REDIS_* variable, plus `env`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("CACHEGATE_", "REDIS_"))}
    return {**kept, **env}


def test_the_guides_examples_reach_redis_at_redis_host_and_port(
    redis_server: RedisProcess,
) -> None:
    host, port = redis_server.address
    result = subprocess.run(
        [sys.executable, "-c", GUIDE_SCRIPT],
        env=clean_env(REDIS_HOST=host, REDIS_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "guide ok redis", result.stdout
    client = redis_server.client()
    assert client.mget("key1", "key2", "key3") == [b"v1", b"v2", b"v3"]
    assert client.get("user_session") == b"session"
    assert 0 < client.ttl("user_session") <= 300
    assert client.get("analysis_result") == b"analysis"
    assert client.get("rollback") == b"old"


@pytest.fixture
def fresh_global_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("CACHEGATE_", "REDIS_")):
            monkeypatch.delenv(name)
    close_redis_pool()
    yield
    close_redis_pool()


def pool_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cachegate.pool"]


def test_get_redis_pool_logs_one_line_with_backend_and_masked_target(
    fresh_global_pool: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    redis_server: RedisProcess,
) -> None:
    caplog.set_level(logging.INFO, logger="cachegate.pool")
    host, port = redis_server.address
    monkeypatch.setenv("REDIS_URL", f"redis://app:hunter2@{host}:{port}/3")
    pool = get_redis_pool()
    assert get_redis_pool() is pool  # built once, logged once
    assert pool_lines(caplog) == [
        f"cachegate pool: backend redis at redis://app:***@{host}:{port}/3 (chosen by REDIS_URL)"
    ]
    assert "hunter2" not in caplog.text


def test_get_redis_pool_defaults_to_the_guides_redis_and_memory_only_by_name(
    fresh_global_pool: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cachegate.pool")
    pool = get_redis_pool()  # nothing set: the guide's localhost:6379 (not dialled here)
    assert pool.backend_kind == "redis"
    assert pool_lines(caplog) == [
        "cachegate pool: backend redis at redis://localhost:6379/0 (chosen by default)"
    ]
    close_redis_pool()
    caplog.clear()
    monkeypatch.setenv("CACHEGATE_BACKEND", "memory")
    pool = get_redis_pool()
    assert pool.backend_kind == "memory"
    assert pool.execute("setex", "k", 60, b"v") is True
    assert pool_lines(caplog) == [
        "cachegate pool: backend memory at embedded (chosen by CACHEGATE_BACKEND)"
    ]


def serving_line(env: dict[str, str], timeout: float = 20) -> dict[str, object]:
    """Start cachegate-server, return its "serving" log record, stop it."""
    port = free_port()
    proc = subprocess.Popen(
        [SERVER],
        env=clean_env(CACHEGATE_LISTEN=f"127.0.0.1:{port}", CACHEGATE_HTTP_LISTEN="off",
                      CACHEGATE_WORKERS="1", **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stderr = proc.stderr

    def pump() -> None:
        for line in stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            seen.append(line)
            record = json.loads(line)
            if record.get("msg") == "serving":
                return dict(record)
        raise AssertionError(f"no serving line in {timeout} s: {seen}")
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_the_server_with_nothing_set_stays_on_the_embedded_backend() -> None:
    record = serving_line({})
    assert (record["backend"], record["redis"], record["backend_chosen_by"]) == (
        "memory", "embedded", "default"
    )  # fmt: skip


def test_the_server_follows_redis_host_and_masks_the_password() -> None:
    # Nothing listens there: the serving line comes before Redis answers.
    record = serving_line(
        {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port()), "REDIS_PASSWORD": "hunter2"}
    )
    assert record["backend"] == "redis"
    assert record["backend_chosen_by"] == "REDIS_HOST"
    assert str(record["redis"]).startswith("redis://:***@127.0.0.1:")
    assert "hunter2" not in json.dumps(record)
