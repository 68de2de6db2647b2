"""Stale-if-error against a real redis-server that is killed or paused under the server.

Reads that allow staleness get the worker's copy of a key, marked stale with its age,
only while Redis cannot answer; everyone else gets the usual error, and a key that
expired or was deleted is never answered from the copy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cachegate.client import (
    CacheClient,
    CacheEntry,
    CacheUnavailableError,
    DeadlineExceededError,
    Delete,
    FailedPreconditionError,
    Get,
    RedisCache,
    SetEx,
)
from conftest import RunningServer, StartServer
from redisprocs import RedisProcess
from staleness import ALLOW, stale_answers, stale_env

WRITER_KEYS = [f"w{n}" for n in range(8)]
READ_ONLY_KEYS = [f"r{n}" for n in range(8)]

Serve = Callable[..., RunningServer]


@pytest.fixture
def serve(start_server: StartServer, redis_server: RedisProcess) -> Serve:
    """A server in front of the test's redis-server; the breaker opens after 3 failures."""

    def start(**env: str) -> RunningServer:
        return start_server(stale_env(redis_server, **env))

    return start


@pytest.fixture
def server(serve: Serve) -> RunningServer:
    return serve()


@pytest.fixture
def cache(server: RunningServer) -> Iterator[CacheClient]:
    with CacheClient(server.target, retries=False, timeout=3) as client:
        yield client


def expect_stale(client: CacheClient, key: str, allow: int = ALLOW) -> CacheEntry:
    entry = client.get_entry(key, stale_if_error=allow)
    assert entry is not None, f"{key}: a stale answer is never a miss"
    assert entry.stale, f"{key}: Redis is down, yet the answer is not marked stale"
    return entry


@dataclass
class Acknowledged:
    """What the writers know: the last value Redis acknowledged per key, and keys whose
    write failed after it (the server may then have dropped its copy of the key)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    values: dict[str, bytes] = field(default_factory=dict)
    unsure: set[str] = field(default_factory=set)


def test_killed_redis_under_load_gives_allowed_reads_the_last_acknowledged_value(
    server: RunningServer, cache: CacheClient, redis_server: RedisProcess
) -> None:
    direct = redis_server.client()
    for key in READ_ONLY_KEYS:  # written by another program: learned by allowed reads
        direct.set(key, f"direct-{key}".encode(), ex=600)
    acked = Acknowledged()
    stop = threading.Event()
    started = time.monotonic()
    read_errors: list[BaseException] = []

    def writer(keys: list[str]) -> None:
        with CacheClient(server.target, retries=False, timeout=2) as client:
            n = 0
            while not stop.is_set():
                for key in keys:
                    value = f"{key}-{n}".encode()
                    try:
                        client.set_ex(key, value, 600)
                    except (CacheUnavailableError, DeadlineExceededError):
                        with acked.lock:
                            acked.unsure.add(key)
                        return  # the writer stops at its first failure
                    with acked.lock:
                        acked.values[key] = value
                n += 1
                time.sleep(0.002)

    def reader() -> None:
        with CacheClient(server.target, retries=False, timeout=2) as client:
            while not stop.is_set():
                for key in WRITER_KEYS + READ_ONLY_KEYS:
                    try:
                        client.get_entry(key, stale_if_error=ALLOW)
                    except (CacheUnavailableError, DeadlineExceededError):
                        pass  # a key the copy does not hold (yet) fails as usual
                    except BaseException as exc:  # anything else fails the test
                        read_errors.append(exc)
                        return
                time.sleep(0.002)

    threads = [
        threading.Thread(target=writer, args=(WRITER_KEYS[:4],)),
        threading.Thread(target=writer, args=(WRITER_KEYS[4:],)),
        threading.Thread(target=reader),
        threading.Thread(target=reader),
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)  # load, with Redis up: every read is fresh
        fresh = cache.get_entry(READ_ONLY_KEYS[0], stale_if_error=ALLOW)
        assert fresh == CacheEntry(f"direct-{READ_ONLY_KEYS[0]}".encode(), False, 0.0)
        assert stale_answers(server) == 0  # never used while Redis answers
        redis_server.kill()
        time.sleep(0.5)  # load goes on against a dead Redis
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not read_errors, read_errors
    elapsed = time.monotonic() - started

    # Callers without an allowance get the usual error.
    for key in WRITER_KEYS + READ_ONLY_KEYS:
        with pytest.raises(CacheUnavailableError):
            cache.get(key)
    # Allowed callers get the last acknowledged value, marked stale, with a plausible age.
    for key in READ_ONLY_KEYS:
        entry = expect_stale(cache, key)
        assert entry.value == f"direct-{key}".encode()
        assert 0 <= entry.age_seconds <= elapsed
    answered = 0
    for key in WRITER_KEYS:
        assert key in acked.values, f"{key} was never written"
        try:
            entry = expect_stale(cache, key)
        except CacheUnavailableError:
            # Only a key whose last write failed with an unknown outcome may be dropped.
            assert key in acked.unsure, f"{key}: acknowledged, yet not answered stale"
            continue
        answered += 1
        assert entry.value == acked.values[key], f"{key}: not the last acknowledged value"
        assert 0 <= entry.age_seconds <= elapsed
    assert answered >= len(WRITER_KEYS) // 2, "most written keys should be answered stale"
    # The allowance bounds the age: a caller allowing less than it gets the error.
    time.sleep(1.1)
    with pytest.raises(CacheUnavailableError):
        cache.get(READ_ONLY_KEYS[0], stale_if_error=1)
    assert (
        cache.get(READ_ONLY_KEYS[0], stale_if_error=ALLOW) == f"direct-{READ_ONLY_KEYS[0]}".encode()
    )

    # A batch: gets answered stale, a write fails as usual; without an allowance, all fail.
    key = READ_ONLY_KEYS[1]
    results = cache.pipeline(
        [Get(key), SetEx("new", b"x", 60), Get("never-seen")], stale_if_error=ALLOW
    )
    assert results[0].outcome == "value"
    assert results[0].value == f"direct-{key}".encode()
    assert results[0].stale
    assert 0 < results[0].age_seconds <= time.monotonic() - started
    assert results[1].failed
    assert isinstance(results[1].error, CacheUnavailableError)
    assert results[2].failed
    assert isinstance(results[2].error, CacheUnavailableError)
    plain = cache.pipeline([Get(key), Get(READ_ONLY_KEYS[2])])
    assert all(r.failed and isinstance(r.error, CacheUnavailableError) for r in plain)
    # The guide's API, with an allowance.
    legacy = RedisCache(client=cache, stale_if_error=ALLOW)
    assert legacy.get(key) == f"direct-{key}".encode()
    assert stale_answers(server) >= len(READ_ONLY_KEYS) + answered + 2


def test_an_expired_key_is_never_served_stale(
    cache: CacheClient, redis_server: RedisProcess
) -> None:
    direct = redis_server.client()
    cache.set_ex("written", b"v", 1)  # this worker's own write: TTL 1 s
    direct.set("learned", b"v", px=1000)  # another program's: learned with its PTTL
    direct.set("lasting", b"v", ex=600)
    for key in ("written", "learned", "lasting"):
        assert cache.get_entry(key, stale_if_error=ALLOW) == CacheEntry(b"v")
    redis_server.kill()
    assert expect_stale(cache, "written").value == b"v"  # within its TTL: served
    assert expect_stale(cache, "learned").value == b"v"
    time.sleep(1.1)
    for key in ("written", "learned"):
        with pytest.raises(CacheUnavailableError):
            cache.get(key, stale_if_error=ALLOW)
    assert expect_stale(cache, "lasting").value == b"v"
    results = cache.pipeline([Get("written"), Get("lasting")], stale_if_error=ALLOW)
    assert results[0].failed
    assert results[1].stale


def test_a_deleted_key_is_never_served_stale(
    cache: CacheClient, redis_server: RedisProcess
) -> None:
    direct = redis_server.client()
    for key in ("unary", "batched", "elsewhere", "kept"):
        cache.set_ex(key, b"v", 600)
        assert cache.get_entry(key, stale_if_error=ALLOW) == CacheEntry(b"v")
    assert cache.delete("unary")
    assert cache.pipeline([Delete("batched")])[0].outcome == "ok"
    direct.delete("elsewhere")  # deleted by another program: an allowed read learns it
    assert cache.get_entry("elsewhere", stale_if_error=ALLOW) is None
    # A read without an allowance neither feeds nor consults the copy.
    direct.set("unlearned", b"v", ex=600)
    assert cache.get("unlearned") == b"v"
    redis_server.kill()
    for key in ("unary", "batched", "elsewhere", "unlearned"):
        with pytest.raises(CacheUnavailableError):
            cache.get(key, stale_if_error=ALLOW)
    assert expect_stale(cache, "kept").value == b"v"
    # A delete while Redis is down drops the key too (its outcome is unknown).
    with pytest.raises(CacheUnavailableError):
        cache.delete("kept")
    with pytest.raises(CacheUnavailableError):
        cache.get("kept", stale_if_error=ALLOW)


def test_a_key_of_another_type_is_failed_precondition_with_or_without_an_allowance(
    cache: CacheClient, redis_server: RedisProcess
) -> None:
    redis_server.client().lpush("listed", b"x")
    for allow in (0, ALLOW):  # the allowance's read is one GET, not MGET's miss
        with pytest.raises(FailedPreconditionError, match="WRONGTYPE"):
            cache.get("listed", stale_if_error=allow)
    redis_server.kill()
    with pytest.raises(CacheUnavailableError):  # and it was never kept
        cache.get("listed", stale_if_error=ALLOW)


def test_a_hung_redis_deadline_exceeded_is_answered_stale(
    serve: Serve, redis_server: RedisProcess
) -> None:
    server = serve(REDIS_FAILURE_THRESHOLD="100")  # the breaker stays closed
    with CacheClient(server.target, retries=False, timeout=3) as client:
        client.set_ex("k", b"v", 600)
        redis_server.pause()
        try:
            with pytest.raises(DeadlineExceededError):
                client.get("k", timeout=2)
            start = time.monotonic()
            entry = expect_stale(client, "k")
            assert entry.value == b"v"
            assert time.monotonic() - start < 2  # Redis's 0.5 s socket timeout, then the copy
        finally:
            redis_server.resume()
        assert client.get_entry("k", stale_if_error=ALLOW) == CacheEntry(b"v")  # fresh again


def test_the_copy_is_tenant_scoped_and_can_be_switched_off(
    serve: Serve, redis_server: RedisProcess, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice-token-0123456789 alice client\nbob-token-0123456789ab bob client\n")
    server = serve(CACHEGATE_TOKENS_FILE=str(tokens))
    off = serve(CACHEGATE_STALE_COPY_BYTES="0")
    alice = CacheClient(server.target, token="alice-token-0123456789", retries=False)
    bob = CacheClient(server.target, token="bob-token-0123456789ab", retries=False)
    plain = CacheClient(off.target, retries=False)
    try:
        alice.set_ex("k", b"alice's", 600)
        plain.set_ex("k", b"v", 600)
        assert plain.get_entry("k", stale_if_error=ALLOW) == CacheEntry(b"v")
        redis_server.kill()
        assert expect_stale(alice, "k").value == b"alice's"
        with pytest.raises(CacheUnavailableError):
            bob.get("k", stale_if_error=ALLOW)  # the same name, another tenant's key
        with pytest.raises(CacheUnavailableError):
            plain.get("k", stale_if_error=ALLOW)  # CACHEGATE_STALE_COPY_BYTES=0
        assert stale_answers(off) == 0
    finally:
        for client in (alice, bob, plain):
            client.close()


def test_a_tenant_that_writes_without_pause_cannot_push_out_anothers_copy(
    serve: Serve, redis_server: RedisProcess, tmp_path: Path
) -> None:
    """The copy is shared fairly: eve's 400 writes (six times the copy) leave bob's keys."""
    tokens = tmp_path / "tokens"
    tokens.write_text("bob-token-0123456789ab bob client\neve-token-0123456789ab eve client\n")
    server = serve(CACHEGATE_TOKENS_FILE=str(tokens), CACHEGATE_STALE_COPY_BYTES=str(256 * 1024))
    bob = CacheClient(server.target, token="bob-token-0123456789ab", retries=False)
    eve = CacheClient(server.target, token="eve-token-0123456789ab", retries=False)
    try:
        for n in range(8):
            bob.set_ex(f"b{n}", bytes([n]) * 4096, 600)
        for n in range(400):
            eve.set_ex(f"e{n}", b"e" * 4096, 600)
        redis_server.kill()
        for n in range(8):
            assert expect_stale(bob, f"b{n}").value == bytes([n]) * 4096
        assert expect_stale(eve, "e399").value == b"e" * 4096  # eve keeps the rest of it
        with pytest.raises(CacheUnavailableError):
            eve.get("e0", stale_if_error=ALLOW)  # her own oldest went
    finally:
        bob.close()
        eve.close()
