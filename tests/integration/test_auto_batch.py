"""Auto-batching of single calls (pool/_autobatch.py) against a real redis-server.

To make calls meet deterministically, a test pauses Redis (SIGSTOP) while one call is
in flight, queues the others behind it, and resumes Redis: the queued calls then go
as one round trip. Redis's own counters (INFO commandstats and stats) say what
reached it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import redis

from cachegate.core import load_config
from cachegate.pool import (
    CommandError,
    RedisConnectionPool,
    RedisTimeoutError,
    RedisUnavailableError,
)
from cachegate.pool._autobatch import AutoBatcher
from cachegate.v1 import cache_pb2 as pb
from conftest import StartServer
from redisprocs import RedisProcess, SentinelSetup, wait_until


def make_pool(url: str, **env: str) -> RedisConnectionPool:
    # A long pool timeout: a queued call's patience, so none leaves a paused round trip.
    settings = {"CACHEGATE_BACKEND": "redis", "REDIS_URL": url, "REDIS_POOL_TIMEOUT": "10"}
    return RedisConnectionPool(load_config({**settings, **env}), auto_batch=True)


@pytest.fixture
def pool(redis_server: RedisProcess) -> Iterator[RedisConnectionPool]:
    p = make_pool(redis_server.url)
    yield p
    p.close()


def batcher(pool: RedisConnectionPool) -> AutoBatcher:
    found = pool.auto_batcher
    assert found is not None
    return found


class Calls:
    """Calls on threads of their own; each one's reply or exception, by name."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.took: dict[str, float] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, call: Callable[[], Any]) -> None:
        def run() -> None:
            started = time.monotonic()
            try:
                self.results[name] = call()
            except Exception as exc:
                self.results[name] = exc
            self.took[name] = time.monotonic() - started

        thread = threading.Thread(target=run, name=name)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(15)
        assert not any(t.is_alive() for t in self._threads), "a call hung"


def get(pool: RedisConnectionPool, key: str, timeout: float) -> Callable[[], Any]:
    return lambda: pool.execute("get", key, timeout=timeout)


def commandstats(admin: redis.Redis) -> dict[str, int]:
    return {name: int(row["calls"]) for name, row in admin.info("commandstats").items()}


def hold_a_round_trip(pool: RedisConnectionPool, redis_server: RedisProcess, calls: Calls) -> None:
    """Pause Redis with one call (a SETEX) in flight: later calls queue behind it."""
    redis_server.pause()
    calls.start("holder", lambda: pool.execute("setex", "holder", 60, b"h", timeout=10))
    wait_until(lambda: pool.get_stats()["in_use_connections"] == 1, timeout=5, what="in flight")


def test_concurrent_callers_each_get_their_own_value_in_fewer_round_trips(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    admin = redis_server.client()
    threads, rounds = 32, 50
    before = admin.info("stats")["total_reads_processed"]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(rounds):
                key, value = f"own:{n}", f"{n}-{i}".encode()
                assert pool.execute("setex", key, 60, value) is True
                assert pool.execute("get", key) == value
                assert pool.execute("get", key) == value
            assert pool.execute("del", f"own:{n}") == 1
            assert pool.execute("get", f"own:{n}") is None
        except BaseException as exc:  # the test thread reports it
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    calls = threads * (rounds * 3 + 2)
    # One read of INFO is in the difference (Redis counts a read as it reads).
    round_trips = admin.info("stats")["total_reads_processed"] - before - 1
    assert round_trips / calls < 1, (round_trips, calls)
    stats = pool.get_stats()
    assert stats["round_trips_saved"] > 0
    assert stats["calls"] + stats["round_trips_saved"] == calls  # no retries here
    assert (stats["hits"], stats["misses"]) == (threads * rounds * 2, threads)


def test_one_wrongtype_key_among_batched_gets_fails_only_its_caller(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    admin = redis_server.client()
    admin.mset({f"k{n}": f"v{n}".encode() for n in range(8)})
    admin.lpush("listed", b"x")
    calls = Calls()
    try:
        hold_a_round_trip(pool, redis_server, calls)
        for n in range(8):
            calls.start(f"k{n}", get(pool, f"k{n}", 10))
        calls.start("listed", lambda: pool.execute("get", "listed", timeout=10))
        wait_until(lambda: batcher(pool).queued == 9, timeout=5, what="nine queued calls")
    finally:
        redis_server.resume()
    calls.join()
    assert calls.results["holder"] is True
    assert {calls.results[f"k{n}"] for n in range(8)} == {f"v{n}".encode() for n in range(8)}
    for n in range(8):
        assert calls.results[f"k{n}"] == f"v{n}".encode()
    wrong = calls.results["listed"]
    assert isinstance(wrong, CommandError)
    assert "WRONGTYPE" in str(wrong)
    stats = pool.get_stats()
    assert stats["round_trips_saved"] == 8  # nine calls, one round trip
    assert stats["circuit_state"] == "closed"
    assert stats["failures"] == 0


def test_a_wrongtype_caller_in_a_batch_is_failed_precondition_over_grpc(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    server = start_server(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_POOL_TIMEOUT": "10",
            "CACHEGATE_AUTO_BATCH": "1",
        }
    )
    served = server.server.pool
    admin = redis_server.client()
    admin.set("plain", b"value")
    admin.lpush("listed", b"x")
    codes: dict[str, Any] = {}

    def get(name: str, key: str) -> None:
        try:
            codes[name] = server.stub.Get(pb.GetRequest(key=key), timeout=10).value
        except grpc.RpcError as error:
            codes[name] = error.code()

    callers = [threading.Thread(target=get, args=("holder", "plain"))]
    redis_server.pause()
    try:
        callers[0].start()
        wait_until(lambda: batcher(served).busy, timeout=5, what="a round trip in flight")
        for name, key in (("a", "plain"), ("b", "listed"), ("c", "plain"), ("d", "missing")):
            callers.append(threading.Thread(target=get, args=(name, key)))
            callers[-1].start()
        wait_until(lambda: batcher(served).queued == 4, timeout=5, what="four queued calls")
    finally:
        redis_server.resume()
    for caller in callers:
        caller.join(15)
    assert codes == {
        "holder": b"value",
        "a": b"value",
        "b": grpc.StatusCode.FAILED_PRECONDITION,
        "c": b"value",
        "d": b"",
    }
    assert served.get_stats()["round_trips_saved"] == 3


def test_identical_concurrent_gets_share_one_read(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    admin = redis_server.client()
    admin.set("hot", b"value")
    admin.config_resetstat()
    calls = Calls()
    try:
        hold_a_round_trip(pool, redis_server, calls)
        for n in range(10):
            calls.start(f"get{n}", lambda: pool.execute("get", "hot", timeout=10))
        wait_until(lambda: batcher(pool).queued == 10, timeout=5, what="ten queued gets")
    finally:
        redis_server.resume()
    calls.join()
    assert [calls.results[f"get{n}"] for n in range(10)] == [b"value"] * 10
    seen = commandstats(admin)
    assert seen.get("cmdstat_get") == 1, seen  # ten callers, one read
    assert "cmdstat_mget" not in seen
    assert pool.get_stats()["hits"] == 10  # each caller's read counts as its own


def test_deadlines_bound_each_queued_caller_and_expired_calls_are_never_sent(
    pool: RedisConnectionPool, redis_server: RedisProcess
) -> None:
    admin = redis_server.client()
    admin.set("patient", b"value")
    admin.config_resetstat()
    calls = Calls()
    try:
        hold_a_round_trip(pool, redis_server, calls)
        for n in range(3):
            calls.start(f"short{n}", get(pool, f"short{n}", 0.3))
        calls.start("patient", lambda: pool.execute("get", "patient", timeout=10))
        wait_until(lambda: batcher(pool).queued >= 1, timeout=5, what="queued calls")
        # The short deadlines pass while Redis is still paused.
        wait_until(lambda: len(calls.results) == 3, timeout=5, what="the short calls to end")
        assert batcher(pool).queued == 1  # they left the queue
    finally:
        redis_server.resume()
    calls.join()
    for n in range(3):
        assert isinstance(calls.results[f"short{n}"], RedisTimeoutError)
        assert calls.took[f"short{n}"] < 0.3 + 0.5  # its own deadline, not the round trip's
    assert calls.results["patient"] == b"value"
    seen = commandstats(admin)
    assert seen.get("cmdstat_get") == 1, seen  # only the patient caller's key was read
    stats = pool.get_stats()
    assert stats["circuit_state"] == "closed"
    assert stats["failures"] == 0


def test_a_killed_redis_fails_every_waiting_caller_and_counts_once_per_round_trip(
    redis_server: RedisProcess,
) -> None:
    pool = make_pool(redis_server.url, REDIS_RETRY_ATTEMPTS="0", REDIS_FAILURE_THRESHOLD="100")
    calls = Calls()
    try:
        hold_a_round_trip(pool, redis_server, calls)
        for n in range(8):
            calls.start(f"get{n}", get(pool, f"k{n}", 10))
        wait_until(lambda: batcher(pool).queued == 8, timeout=5, what="eight queued calls")
        redis_server.kill()  # the paused process dies: its connections are reset
        calls.join()
        for name, result in calls.results.items():
            assert isinstance(result, RedisUnavailableError), (name, result)
            assert not isinstance(result, RedisTimeoutError), (name, result)
        stats = pool.get_stats()
        # Two round trips (the holder's, then the eight queued calls'), two verdicts.
        assert stats["consecutive_failures"] == 2
        assert (stats["calls"], stats["failures"], stats["round_trips_saved"]) == (2, 2, 7)
    finally:
        pool.close()


def test_a_stuck_round_trip_lets_queued_calls_go_alone_after_the_pool_timeout(
    redis_server: RedisProcess,
) -> None:
    # REDIS_POOL_TIMEOUT is the patience: past it a queued call takes its own connection.
    pool = make_pool(redis_server.url, REDIS_POOL_TIMEOUT="0.2", REDIS_MAX_CONNECTIONS="2")
    calls = Calls()
    try:
        hold_a_round_trip(pool, redis_server, calls)
        calls.start("second", lambda: pool.execute("get", "k", timeout=10))
        wait_until(
            lambda: pool.get_stats()["in_use_connections"] == 2, timeout=5, what="went alone"
        )
        assert batcher(pool).queued == 0
    finally:
        redis_server.resume()
    calls.join()
    assert (calls.results["holder"], calls.results["second"]) == (True, None)
    assert pool.get_stats()["round_trips_saved"] == 0
    pool.close()


def test_the_server_batches_only_when_the_setting_says_so(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    env = {"CACHEGATE_BACKEND": "redis", "REDIS_URL": redis_server.url}
    assert start_server(env).server.pool.auto_batcher is None  # off by default (README)
    assert start_server({**env, "CACHEGATE_AUTO_BATCH": "1"}).server.pool.auto_batcher is not None
    # The in-process pool of the guide's API never batches unless asked to.
    plain = RedisConnectionPool(load_config(env))
    assert plain.auto_batcher is None
    plain.close()


@pytest.mark.slow
def test_sentinel_batches_on_the_same_path(sentinel_setup: SentinelSetup) -> None:
    addresses = ",".join(f"{h}:{p}" for h, p in sentinel_setup.sentinel_addresses)
    settings = {
        "CACHEGATE_BACKEND": "sentinel",
        "REDIS_SENTINELS": addresses,
        "REDIS_SENTINEL_MASTER": sentinel_setup.master_name,
    }
    pool = RedisConnectionPool(load_config(settings), auto_batch=True)
    assert pool.auto_batcher is not None
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(30):
                value = f"{n}-{i}".encode()
                assert pool.execute("setex", f"s:{n}", 60, value) is True
                assert pool.execute("get", f"s:{n}") == value
        except BaseException as exc:  # the test thread reports it
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    stats = pool.get_stats()
    assert stats["calls"] + stats["round_trips_saved"] == 16 * 30 * 2
    assert sentinel_setup.master.client().get("s:0") == b"0-29"
    pool.close()
