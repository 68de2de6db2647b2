"""The seed's five test scenarios, and the pool's other promises, against real redis-server."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cachegate.core import CircuitState, load_config
from cachegate.pool import (
    CircuitOpenError,
    CommandError,
    PoolExhaustedError,
    RedisConnectionPool,
    RedisTimeoutError,
    RedisUnavailableError,
    close_redis_pool,
    get_redis_pool,
)
from redisprocs import RedisProcess, wait_until


def make_pool(url: str, **env: str) -> RedisConnectionPool:
    settings = {"CACHEGATE_BACKEND": "redis", "REDIS_URL": url, **env}
    return RedisConnectionPool(load_config(settings))


@pytest.fixture
def pool(redis_server: RedisProcess) -> Iterator[RedisConnectionPool]:
    # Small numbers so the scenarios run in seconds: 3 failures open, 1 s to half-open.
    p = make_pool(
        redis_server.url,
        REDIS_FAILURE_THRESHOLD="3",
        REDIS_RECOVERY_TIMEOUT="1",
        REDIS_SOCKET_TIMEOUT="0.3",
        REDIS_RETRY_ATTEMPTS="0",
    )
    yield p
    p.close()


def state(pool: RedisConnectionPool) -> CircuitState:
    # A function, so mypy does not narrow the property across the test's steps.
    return pool.breaker.state


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


# --- 1. normal operation ---------------------------------------------------------------


def test_normal_operation_get_set_setex_pipeline(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    k = key()
    assert pool.execute("get", k) is None
    assert pool.execute("set", k, b"v1") is True
    assert pool.execute("get", k) == b"v1"
    assert pool.execute("setex", k, 300, b"v2") is True
    assert pool.execute("get", k) == b"v2"
    assert 0 < redis_server.client().ttl(k) <= 300

    keys = [key() for _ in range(3)]
    with pool.get_client() as client:
        pipe = client.pipeline()
        for i, k2 in enumerate(keys):
            pipe.set(k2, f"value{i}")
        pipe.execute()
    with pool.get_client() as client:
        pipe = client.pipeline()
        for k2 in keys:
            pipe.get(k2)
        assert pipe.execute() == [b"value0", b"value1", b"value2"]

    stats = pool.get_stats()
    assert stats["hits"] == 2
    assert stats["misses"] == 1
    assert stats["in_use_connections"] == 0
    assert stats["circuit_state"] == "closed"


def test_a_redis_error_reply_is_not_an_outage(pool: RedisConnectionPool) -> None:
    k = key()
    pool.execute("lpush", k, b"x")
    for _ in range(5):  # more than the threshold
        with pytest.raises(CommandError, match="WRONGTYPE"):
            pool.execute("incr", k)
    assert state(pool) is CircuitState.CLOSED
    assert pool.get_stats()["failures"] == 0


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_get_with_ttl_reads_a_value_and_its_ttl_in_one_transaction(
    backend: str, redis_server: RedisProcess
) -> None:
    pool = make_pool(redis_server.url, CACHEGATE_BACKEND=backend)
    try:
        lasting, persistent, listed = key(), key(), key()
        pool.execute("setex", lasting, 300, b"v")
        pool.execute("set", persistent, b"p")
        pool.execute("lpush", listed, b"x")
        value, pttl = pool.get_with_ttl(lasting)
        assert value == b"v"
        assert 0 < pttl <= 300_000
        assert pool.get_with_ttl(persistent) == (b"p", -1)
        assert pool.get_with_ttl(key()) == (None, -2)
        with pytest.raises(CommandError, match="WRONGTYPE"):  # as GET says, not MGET's miss
            pool.get_with_ttl(listed)
        assert pool.get_with_ttl(persistent) == (b"p", -1)  # the connection read clean
        assert pool.get_stats()["hits"] == 3
        assert pool.get_stats()["misses"] == 1
        if backend == "redis":  # each read was one MULTI/EXEC
            commands = redis_server.client().info("commandstats")
            assert commands["cmdstat_exec"]["calls"] == 5
            assert commands["cmdstat_get"]["calls"] == commands["cmdstat_pttl"]["calls"] == 5
    finally:
        pool.close()


# --- 2. connection failure -------------------------------------------------------------


def test_connection_failure_opens_the_breaker_and_calls_fail_fast(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    pool.execute("ping")
    redis_server.kill()
    for _ in range(2):  # below the threshold: real errors, breaker still closed
        with pytest.raises(RedisUnavailableError):
            pool.execute("get", "k")
        assert state(pool) is CircuitState.CLOSED
    with pytest.raises(RedisUnavailableError):
        pool.execute("get", "k")
    assert state(pool) is CircuitState.OPEN

    attempts_before = pool.get_stats()["calls"]
    took = []
    for _ in range(200):
        start = time.perf_counter()
        with pytest.raises(CircuitOpenError) as caught:
            pool.execute("get", "k")
        took.append(time.perf_counter() - start)
    assert isinstance(caught.value, ConnectionError)  # the seed's `except ConnectionError`
    assert 0 < caught.value.retry_after <= 1.0
    # Fast because Redis is never asked: no attempt (and so no connect or socket
    # timeout) was made for any of the 200. The median guards the same claim in time;
    # a single call may still meet a scheduling stall on a loaded CI host.
    stats = pool.get_stats()
    assert stats["calls"] == attempts_before
    median = statistics.median(took)
    assert median < 0.005, f"the median call while open took {median * 1000:.2f} ms"
    assert stats["failures"] == 3
    assert stats["rejected_calls"] == 200
    assert stats["circuit_state"] == "open"


def test_the_seeds_error_handling_works(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    redis_server.kill()
    results = []
    for _ in range(5):
        try:
            result = pool.execute("get", "key")
        except ConnectionError:  # exactly what the seed's migration guide writes
            result = None
        results.append(result)
    assert results == [None] * 5
    assert state(pool) is CircuitState.OPEN


# --- 3. recovery -----------------------------------------------------------------------


def test_recovery_after_restart_half_opens_then_closes(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    redis_server.kill()
    for _ in range(3):
        with pytest.raises(RedisUnavailableError):
            pool.execute("get", "k")
    assert state(pool) is CircuitState.OPEN
    redis_server.restart()
    with pytest.raises(CircuitOpenError):  # Redis is back, but the timeout has not passed
        pool.execute("get", "k")

    transitions: list[tuple[CircuitState, CircuitState]] = []
    pool.add_state_listener(lambda old, new: transitions.append((old, new)))
    time.sleep(1.05)
    assert state(pool) is CircuitState.HALF_OPEN
    assert pool.execute("set", "k", b"back") is True
    assert state(pool) is CircuitState.CLOSED
    assert pool.execute("get", "k") == b"back"
    assert transitions == [
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]


def test_a_failed_probe_reopens(pool: RedisConnectionPool, redis_server: RedisProcess) -> None:
    redis_server.kill()
    for _ in range(3):
        with pytest.raises(RedisUnavailableError):
            pool.execute("get", "k")
    time.sleep(1.05)
    with pytest.raises(RedisUnavailableError):  # the probe goes to Redis, which is still down
        pool.execute("get", "k")
    assert state(pool) is CircuitState.OPEN


# --- 4. load ---------------------------------------------------------------------------


def run_threads(count: int, work: Any) -> list[BaseException]:
    errors: list[BaseException] = []

    def runner(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:  # collected and asserted by the test
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    return errors


def test_load_64_threads_no_errors_and_in_use_bounded(redis_server: RedisProcess) -> None:
    pool = make_pool(redis_server.url, REDIS_MAX_CONNECTIONS="8", REDIS_POOL_TIMEOUT="10")
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, pool.get_stats()["in_use_connections"])
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    prefix = key()

    def work(n: int) -> None:
        for i in range(100):
            k = f"{prefix}:{n}:{i}"
            assert pool.execute("setex", k, 60, f"{n}-{i}".encode()) is True
            assert pool.execute("get", k) == f"{n}-{i}".encode()

    try:
        errors = run_threads(64, work)
    finally:
        stop.set()
        sampler.join()
    assert errors == []
    stats = pool.get_stats()
    assert stats["calls"] == 64 * 100 * 2
    assert stats["hits"] == 64 * 100
    assert 1 <= peak <= 8
    assert stats["created_connections"] <= 8
    assert stats["in_use_connections"] == 0
    pool.close()


# --- 5. connections under load, as Redis counts them ----------------------------------


def redis_client_count(admin: redis.Redis) -> int:
    # Every client but the admin connection asking.
    return int(admin.info("clients")["connected_clients"]) - 1


def test_redis_sees_at_most_max_connections_and_fewer_when_idle(
    redis_server: RedisProcess,
) -> None:
    pool = make_pool(
        redis_server.url,
        REDIS_MAX_CONNECTIONS="5",
        REDIS_POOL_TIMEOUT="10",
        REDIS_IDLE_TIMEOUT="0.5",
    )
    admin = redis_server.client()
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(redis_client_count(admin))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()

    def work(n: int) -> None:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            pool.execute("get", f"k{n}")

    try:
        errors = run_threads(32, work)
    finally:
        stop.set()
        sampler.join()
    assert errors == []
    assert max(seen) == 5, f"Redis saw {max(seen)} clients at most"  # bounded, and used
    # Idle: after the idle timeout, the next call closes the stale connections.
    time.sleep(1.2)
    pool.execute("get", "k")
    assert redis_client_count(admin) == 1
    assert pool.get_stats()["created_connections"] == 1
    pool.close()
    time.sleep(0.1)
    assert redis_client_count(admin) == 0


# --- more: hangs, full pool, deadlines, retries ----------------------------------------


def test_a_paused_redis_fails_by_the_socket_timeout_and_opens_the_breaker(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    pool.execute("ping")
    redis_server.pause()
    try:
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                pool.execute("get", "k")
            elapsed = time.monotonic() - start
            assert 0.25 < elapsed < 0.8, elapsed
        assert state(pool) is CircuitState.OPEN
        start = time.monotonic()
        with pytest.raises(CircuitOpenError):
            pool.execute("get", "k")
        assert time.monotonic() - start < 0.01
    finally:
        redis_server.resume()


def test_the_callers_deadline_caps_the_wait_and_is_not_blamed_on_redis(
    redis_server: RedisProcess,
) -> None:
    pool = make_pool(redis_server.url, REDIS_SOCKET_TIMEOUT="5", REDIS_FAILURE_THRESHOLD="1")
    pool.execute("ping")
    redis_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="deadline"):
            pool.execute("get", "k", timeout=0.1)
        assert time.monotonic() - start < 0.3
        # Redis's own 5 s were not used up: no verdict, the breaker stays closed.
        assert state(pool) is CircuitState.CLOSED
    finally:
        redis_server.resume()
        pool.close()


def test_a_full_pool_waits_then_fails_clearly(redis_server: RedisProcess) -> None:
    pool = make_pool(redis_server.url, REDIS_MAX_CONNECTIONS="1", REDIS_POOL_TIMEOUT="0.2")
    with pool.get_client():  # holds the only slot
        start = time.monotonic()
        with pytest.raises(PoolExhaustedError, match="REDIS_MAX_CONNECTIONS") as caught:
            pool.execute("get", "k")
        waited = time.monotonic() - start
    assert 0.18 < waited < 1.0
    assert isinstance(caught.value, ConnectionError)
    assert pool.execute("get", "k") is None  # free again after the block
    stats = pool.get_stats()
    assert stats["pool_wait_timeouts"] == 1
    assert stats["circuit_state"] == "closed"  # capacity is not an outage
    pool.close()


def test_a_waiting_caller_gets_the_connection_when_it_is_released(
    redis_server: RedisProcess,
) -> None:
    pool = make_pool(redis_server.url, REDIS_MAX_CONNECTIONS="1", REDIS_POOL_TIMEOUT="5")
    got: list[Any] = []
    with pool.get_client():
        waiter = threading.Thread(target=lambda: got.append(pool.execute("ping")))
        waiter.start()
        time.sleep(0.2)
        assert pool.get_stats()["pending_requests"] == 1
    waiter.join(timeout=5)
    assert got == [True]
    pool.close()


def test_get_client_gives_the_connection_back_on_exceptions(
    pool: RedisConnectionPool,
) -> None:
    def fail_inside() -> None:
        with pool.get_client() as client:
            client.set("k", 1)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fail_inside()
    assert pool.get_stats()["in_use_connections"] == 0
    assert state(pool) is CircuitState.CLOSED
    assert pool.execute("get", "k") == b"1"


def test_get_client_outage_counts_for_the_breaker(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    redis_server.kill()
    for _ in range(3):
        with pytest.raises(RedisUnavailableError), pool.get_client() as client:
            client.get("k")
    assert state(pool) is CircuitState.OPEN
    with pytest.raises(CircuitOpenError), pool.get_client():
        pass


def test_idempotent_commands_are_retried_and_incr_is_not(redis_server: RedisProcess) -> None:
    pool = make_pool(
        redis_server.url,
        REDIS_RETRY_ATTEMPTS="2",
        REDIS_RETRY_BACKOFF_BASE="0.01",
        REDIS_RETRY_BACKOFF_CAP="0.02",
        REDIS_FAILURE_THRESHOLD="100",
    )
    pool.execute("set", "n", 1)
    admin = redis_server.client()
    # Drop every connection: the pooled one is dead, and redis-py only notices on use.
    admin.client_kill_filter(_type="normal", skipme=True)
    assert pool.execute("get", "n") == b"1"  # transparently retried on a new connection
    redis_server.kill()
    with pytest.raises(RedisUnavailableError):
        pool.execute("get", "n")
    assert pool.get_stats()["retries"] == 2  # GET: 2 retries after the first try
    with pytest.raises(RedisUnavailableError):
        pool.execute("incr", "n")
    assert pool.get_stats()["retries"] == 2  # INCR: never retried
    pool.close()


def test_a_connection_redis_closed_while_idle_never_fails_a_command(
    redis_server: RedisProcess,
) -> None:
    # INCR is never retried: it succeeds only if the dead idle connection is noticed
    # before the command is sent (redis-py's socket test, which parking keeps).
    pool = make_pool(redis_server.url, REDIS_RETRY_ATTEMPTS="0")
    assert pool.execute("incr", "n") == 1
    for round_ in range(3):
        redis_server.client().client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.05)  # the FIN reaches our socket
        assert pool.execute("incr", "n") == round_ + 2
    assert pool.get_stats()["failures"] == 0
    pool.close()


def test_idle_connections_serve_every_caller_within_the_bound(
    redis_server: RedisProcess,
) -> None:
    pool = make_pool(redis_server.url, REDIS_MAX_CONNECTIONS="2", REDIS_SOCKET_TIMEOUT="5")
    # Two calls at once (Redis paused while both wait) make both connections redis-py
    # may make; then both are idle.
    redis_server.pause()
    try:
        calls = [threading.Thread(target=pool.execute, args=("get", "k")) for _ in range(2)]
        for call in calls:
            call.start()
        wait_until(lambda: pool.get_stats()["in_use_connections"] == 2, timeout=5, what="two calls")
    finally:
        redis_server.resume()
    for call in calls:
        call.join()
    stats = pool.get_stats()
    assert (stats["created_connections"], stats["available_connections"]) == (2, 2)
    assert stats["in_use_connections"] == 0
    # A redis-py client (get_client) gets one of them, then the pool's own path.
    with pool.get_client() as client:
        assert client.set("k", b"v") is True
    assert pool.execute("get", "k") == b"v"
    assert pool.get_stats()["created_connections"] == 2
    pool.close()


def test_a_wait_longer_than_the_socket_timeout_is_not_an_outage(
    redis_server: RedisProcess,
) -> None:
    # No replica: WAIT 1 blocks its whole timeout (0.6 s), three times the socket timeout.
    pool = make_pool(
        redis_server.url,
        REDIS_WAIT_REPLICAS="1",
        REDIS_WAIT_TIMEOUT="0.6",
        REDIS_SOCKET_TIMEOUT="0.2",
        REDIS_FAILURE_THRESHOLD="2",
        REDIS_RETRY_ATTEMPTS="0",
    )
    for _ in range(3):
        with pytest.raises(RedisUnavailableError, match="not confirmed by 1 replica") as caught:
            pool.execute("setex", "k", 60, b"v")
        assert not isinstance(caught.value, RedisTimeoutError)
    stats = pool.get_stats()
    assert (stats["circuit_state"], stats["failures"]) == ("closed", 0)
    # A caller's shorter deadline still bounds the wait, with no verdict on Redis.
    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        pool.execute("setex", "k", 60, b"v", timeout=0.3)
    assert time.monotonic() - started < 0.5
    assert pool.get_stats()["circuit_state"] == "closed"
    pool.close()


def test_health_check_reports_the_seeds_fields_and_never_raises(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    pool.execute("set", "h", 1)
    pool.execute("get", "h")
    health = pool.health_check()
    assert health["healthy"] is True
    assert health["version"] == redis_server.client().info("server")["redis_version"]
    assert health["ping_ms"] > 0
    assert health["connected_clients"] >= 1
    assert health["used_memory_human"].endswith(("B", "K", "M", "G"))
    assert 0.0 <= health["hit_rate"] <= 1.0
    assert health["circuit_state"] == "closed"
    assert set(health["pool"]) == {
        "created_connections",
        "available_connections",
        "in_use_connections",
    }
    redis_server.kill()
    down = pool.health_check()
    assert down["healthy"] is False
    assert "Connection refused" in down["error"] or "Error 111" in down["error"]


def test_password_never_shows(tmp_path: Any) -> None:
    from redisprocs import start_standalone

    server = start_standalone(tmp_path / "auth", password="hunter2-secret")
    try:
        pool = make_pool(server.url, REDIS_FAILURE_THRESHOLD="1")
        assert pool.execute("set", "k", 1) is True
        texts = [repr(pool), str(pool.get_stats()), str(pool.health_check()), repr(pool.config)]
        server.kill()
        with pytest.raises(RedisUnavailableError) as caught:
            pool.execute("get", "k")
        texts += [str(caught.value), str(pool.health_check())]
        assert not [t for t in texts if "hunter2-secret" in t]
        pool.close()
    finally:
        server.stop()


def test_get_and_close_redis_pool_follow_the_environment(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHEGATE_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    close_redis_pool()
    try:
        pool = get_redis_pool()
        assert get_redis_pool() is pool
        assert pool.execute("setex", "user_session", 300, b"data") is True
        close_redis_pool()
        close_redis_pool()  # idempotent
        with pytest.raises(RedisUnavailableError, match="closed"):
            pool.execute("get", "user_session")
        fresh = get_redis_pool()
        assert fresh is not pool
        assert fresh.execute("get", "user_session") == b"data"
    finally:
        close_redis_pool()


def test_health_check_waits_its_turn_for_a_connection(redis_server: RedisProcess) -> None:
    pool = make_pool(redis_server.url, REDIS_MAX_CONNECTIONS="1")
    with pool.get_client():  # the only connection is busy for the whole check
        busy = pool.health_check()
    assert busy["healthy"] is False
    assert "REDIS_MAX_CONNECTIONS" in busy["error"]
    held = threading.Event()

    def hold_briefly() -> None:
        with pool.get_client():
            held.set()
            time.sleep(0.2)

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    held.wait(2)
    assert pool.health_check()["healthy"] is True  # waited for the connection to come back
    holder.join()
    assert redis_client_count(redis_server.client()) <= 1
    pool.close()


def test_a_new_connections_health_ping_respects_the_deadline(redis_server: RedisProcess) -> None:
    # redis-py PINGs a new (or long idle) connection before the first command and, left
    # alone, waits the whole socket timeout for the answer: 5 s for a 0.2 s budget.
    pool = make_pool(redis_server.url, REDIS_HEALTH_CHECK_INTERVAL="1")
    redis_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            pool.execute("get", "k", timeout=0.2)
        assert time.monotonic() - start < 0.5
    finally:
        redis_server.resume()
    pool.execute("get", "k")  # warm, then idle past the health-check interval
    time.sleep(1.1)
    redis_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            pool.execute("get", "k", timeout=0.2)
        assert time.monotonic() - start < 0.5
    finally:
        redis_server.resume()
    pool.close()


def test_max_clients_is_named_not_hidden(redis_server: RedisProcess) -> None:
    import socket

    pool = make_pool(redis_server.url, REDIS_FAILURE_THRESHOLD="1000000", REDIS_RETRY_ATTEMPTS="0")
    pool.execute("ping")
    admin = redis_server.client()
    admin.config_set("maxclients", 2)  # the admin connection and one more
    admin.client_kill_filter(_type="normal", skipme=True)  # our pooled connection is gone
    filler = socket.create_connection(("127.0.0.1", redis_server.port))
    try:
        time.sleep(0.1)
        messages = []
        for _ in range(30):
            with pytest.raises(RedisUnavailableError) as caught:
                pool.execute("get", "k", timeout=1)
            messages.append(str(caught.value))
        assert all("max number of clients" in m for m in messages), set(messages)
    finally:
        filler.close()
        admin.config_set("maxclients", 10000)
    deadline = time.monotonic() + 3
    while True:  # recovery once the extra client leaves
        try:
            assert pool.execute("get", "k") is None
            break
        except RedisUnavailableError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    pool.close()


# --- the breaker counts calls, not attempts ----------------------------------------------


def test_breaker_threshold_counts_calls_after_their_retries(redis_server: RedisProcess) -> None:
    """REDIS_FAILURE_THRESHOLD=5 with the default 3 retries: 4 failed calls (16 failed
    attempts) leave the breaker closed, the 5th failed call opens it."""
    pool = make_pool(
        redis_server.url,
        REDIS_FAILURE_THRESHOLD="5",
        REDIS_RECOVERY_TIMEOUT="60",
        REDIS_SOCKET_TIMEOUT="0.3",
        REDIS_RETRY_BACKOFF_BASE="0.01",
        REDIS_RETRY_BACKOFF_CAP="0.02",
    )
    try:
        assert pool.config.retry.attempts == 3  # the default: each call makes 4 attempts
        pool.execute("ping")
        redis_server.kill()
        for call in range(1, 5):
            with pytest.raises(RedisUnavailableError):
                pool.execute("get", "k")
            stats = pool.get_stats()
            print(
                f"failed call {call}: breaker {stats['circuit_state']}, "
                f"consecutive failures {stats['consecutive_failures']}, "
                f"failed attempts {stats['failures']}"
            )
            assert state(pool) is CircuitState.CLOSED, f"opened after {call} failed call(s)"
            assert stats["consecutive_failures"] == call
        assert pool.get_stats()["failures"] == 16  # every attempt reached the dead server
        with pytest.raises(RedisUnavailableError):
            pool.execute("get", "k")
        assert state(pool) is CircuitState.OPEN
        with pytest.raises(CircuitOpenError):  # now refused without touching Redis
            pool.execute("get", "k")
    finally:
        pool.close()


def test_a_call_that_succeeds_on_a_retry_is_one_success(redis_server: RedisProcess) -> None:
    """Failed attempts followed by a good one are one successful call for the breaker:
    they do not add to its consecutive failures."""
    pool = make_pool(
        redis_server.url,
        REDIS_FAILURE_THRESHOLD="2",
        REDIS_RECOVERY_TIMEOUT="60",
        REDIS_SOCKET_TIMEOUT="0.3",
        REDIS_RETRY_ATTEMPTS="20",
        REDIS_RETRY_BACKOFF_BASE="0.2",
        REDIS_RETRY_BACKOFF_CAP="0.2",
    )
    try:
        pool.execute("setex", "k", 60, b"v")
        redis_server.pause()
        revive = threading.Timer(1.1, redis_server.resume)  # two attempts time out first
        revive.start()
        try:
            assert pool.execute("get", "k") == b"v"  # attempts time out, then one answers
        finally:
            revive.join()
        stats = pool.get_stats()
        print(f"retried call: {stats['failures']} failed attempts, then a reply")
        assert stats["failures"] >= 2  # more failed attempts than the threshold...
        assert state(pool) is CircuitState.CLOSED  # ...yet one call, and it succeeded
        assert stats["consecutive_failures"] == 0
    finally:
        pool.close()
