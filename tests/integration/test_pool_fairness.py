"""No caller starves on a busy pool: a freed connection goes to the longest waiter.

Through the guide's API (`get_redis_pool().execute("get", key)`) against a real
redis-server. 32 threads on REDIS_MAX_CONNECTIONS=10 at the default REDIS_POOL_TIMEOUT:
before the direct hand-off, a thread that released a connection took it straight back
before the waiter it woke could run, and a few waiters lost that race until their pool
timeout failed the call (issue 17: 12-40 PoolExhaustedError per run, max 1-2 s).

The judgement does not rest on latency ratios (a shared 2-core machine moves them):
it is no pool timeout and no call near the pool timeout. The percentiles are printed.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cachegate.pool import PoolExhaustedError, RedisConnectionPool, close_redis_pool, get_redis_pool
from poolload import KEYS, VALUE, PoolLoad, hammer
from redisprocs import RedisProcess

WAIT = 5.0  # seconds any single expectation may take before the test fails


@pytest.fixture
def guide_pool(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RedisConnectionPool]:
    """The process-wide pool of the guide's API, on 10 connections, default pool timeout."""
    redis_server.client().mset({f"k{i}": VALUE for i in range(KEYS)})
    monkeypatch.setenv("CACHEGATE_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("REDIS_MAX_CONNECTIONS", "10")
    monkeypatch.delenv("REDIS_POOL_TIMEOUT", raising=False)
    close_redis_pool()
    try:
        yield get_redis_pool()
    finally:
        close_redis_pool()


def test_32_threads_on_10_connections_never_hit_the_pool_timeout(
    guide_pool: RedisConnectionPool,
) -> None:
    pool_timeout = guide_pool.config.pool.wait_timeout
    load = hammer("cachegate pool.execute('get')", lambda key: guide_pool.execute("get", key))
    stats = guide_pool.get_stats()
    print()
    print(PoolLoad.header())
    print(load.row())
    print(
        f"p99.9/p99 = {load.ms(0.999) / max(load.ms(0.99), 1e-9):.1f}; "
        f"pool_wait_timeouts={stats['pool_wait_timeouts']} "
        f"wait_seconds_total={stats['wait_seconds_total']} (REDIS_POOL_TIMEOUT={pool_timeout}s)"
    )
    assert load.calls > 1000, "too few calls to judge"
    assert load.errors == {}
    assert stats["pool_wait_timeouts"] == 0
    # A fair queue serves every waiter well before the pool timeout (a starved one
    # came within a hair of it, or ran into it).
    assert load.max_ms < pool_timeout * 1000, f"a call took {load.max_ms:.0f} ms"
    # Every wait was counted, and every slot came back.
    assert stats["wait_seconds_total"] > 0
    assert stats["pending_requests"] == 0
    assert stats["in_use_connections"] == 0
    assert stats["calls"] == load.calls


def test_a_caller_that_gives_up_while_queued_leaves_the_connection_to_the_next(
    redis_server: RedisProcess,
) -> None:
    from cachegate.core import load_config

    pool = RedisConnectionPool(
        load_config(
            {
                "CACHEGATE_BACKEND": "redis",
                "REDIS_URL": redis_server.url,
                "REDIS_MAX_CONNECTIONS": "1",
                "REDIS_POOL_TIMEOUT": "5",
            }
        )
    )
    redis_server.client().set("k", b"v")
    got: list[Any] = []
    try:
        with pool.get_client():  # holds the only connection
            # The first waiter's own deadline (0.05 s) ends its wait; the second waits on.
            with pytest.raises(PoolExhaustedError):
                pool.execute("get", "k", timeout=0.05)
            assert pool.get_stats()["pending_requests"] == 0
            patient = threading.Thread(target=lambda: got.append(pool.execute("get", "k")))
            patient.start()
            deadline = time.monotonic() + WAIT
            while pool.get_stats()["pending_requests"] != 1 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert pool.get_stats()["pending_requests"] == 1
        patient.join(WAIT)
        assert got == [b"v"]  # the connection went to the caller still waiting
        stats = pool.get_stats()
        assert stats["pool_wait_timeouts"] == 1
        assert (stats["pending_requests"], stats["in_use_connections"]) == (0, 0)
        assert stats["wait_seconds_total"] > 0
        assert pool.execute("get", "k") == b"v"  # and nothing was lost
    finally:
        pool.close()


class WaitInterruptedError(Exception):
    pass


def test_a_caller_interrupted_while_queued_leaves_no_connection_behind(
    redis_server: RedisProcess,
) -> None:
    from cachegate.core import load_config

    pool = RedisConnectionPool(
        load_config(
            {
                "CACHEGATE_BACKEND": "redis",
                "REDIS_URL": redis_server.url,
                "REDIS_MAX_CONNECTIONS": "1",
                "REDIS_POOL_TIMEOUT": "5",
                "REDIS_FAILURE_THRESHOLD": "1",
            }
        )
    )
    main = threading.main_thread().ident
    assert main is not None
    holding = threading.Event()
    let_go = threading.Event()

    def hold() -> None:
        with pool.get_client():
            holding.set()
            let_go.wait(WAIT)

    def interrupt_once_queued() -> None:
        deadline = time.monotonic() + WAIT
        while pool.get_stats()["pending_requests"] != 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        signal.pthread_kill(main, signal.SIGUSR1)

    def handler(signum: int, frame: object) -> None:
        raise WaitInterruptedError

    previous = signal.signal(signal.SIGUSR1, handler)
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(WAIT)
        sender = threading.Thread(target=interrupt_once_queued)
        sender.start()
        with pytest.raises(WaitInterruptedError):
            pool.execute("ping")
        sender.join(WAIT)
        let_go.set()
        holder.join(WAIT)
        stats = pool.get_stats()
        assert (stats["pending_requests"], stats["in_use_connections"]) == (0, 0)
        assert stats["circuit_state"] == "closed"  # our own interruption is no outage
        assert pool.execute("ping") is True
    finally:
        let_go.set()
        signal.signal(signal.SIGUSR1, previous)
        pool.close()
