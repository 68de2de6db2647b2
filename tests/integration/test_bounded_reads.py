"""Bounded reads against real backends: never more value bytes than asked, same answers.

The redis backend takes the Lua path (sizes first, values when they fit, chunked MGETs
after); the memory backend and Cluster the pipeline-of-STRLEN path. Both must answer
like MGET where everything fits (misses None, empty values b"", other types None) and
leave out, as TooLarge, exactly the values past the bound.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cachegate.core import load_config
from cachegate.pool import CommandError, PartialRead, RedisConnectionPool, TooLarge
from redisprocs import ClusterSetup, RedisProcess

MIB = 1024 * 1024


@pytest.fixture(params=["redis", "memory"])
def pool(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[RedisConnectionPool]:
    if request.param == "redis":
        server: RedisProcess = request.getfixturevalue("redis_server")
        settings = {"CACHEGATE_BACKEND": "redis", "REDIS_URL": server.url}
    else:
        settings = {"CACHEGATE_BACKEND": "memory"}
    made = RedisConnectionPool(load_config(settings))
    try:
        yield made
    finally:
        made.close()


def _seed(pool: RedisConnectionPool, prefix: str) -> None:
    pool.execute("SETEX", f"{prefix}big", 60, b"b" * MIB)
    pool.execute("SETEX", f"{prefix}empty", 60, b"")
    for i in range(1000):
        pool.execute_many([("SETEX", f"{prefix}s{i}", 60, f"v{i}".encode())])
    with pool.get_client() as client:
        client.hset(f"{prefix}hash", "f", "v")


def test_small_values_come_back_whole(pool: RedisConnectionPool) -> None:
    prefix = uuid.uuid4().hex
    _seed(pool, prefix)
    keys = [f"{prefix}s{i}" for i in range(1000)]
    odd = [f"{prefix}empty", f"{prefix}missing", f"{prefix}hash"]
    values = pool.get_many([*keys, *odd], max_bytes=64 * 1024)
    assert not isinstance(values, PartialRead)
    assert values == [*(f"v{i}".encode() for i in range(1000)), b"", None, None]


def test_large_values_past_the_bound_are_left_out_in_order(pool: RedisConnectionPool) -> None:
    prefix = uuid.uuid4().hex
    _seed(pool, prefix)
    keys = [f"{prefix}s1", f"{prefix}big", f"{prefix}big", f"{prefix}missing", f"{prefix}s2"]
    values = pool.get_many(keys, max_bytes=MIB + 10)
    assert isinstance(values, PartialRead)
    assert values == [b"v1", b"b" * MIB, TooLarge(MIB), None, b"v2"]
    many = pool.get_many([f"{prefix}big"] * 1000, max_bytes=5 * MIB)
    assert many[:5] == [b"b" * MIB] * 5
    assert many[5:] == [TooLarge(MIB)] * 995


def test_values_left_out_are_not_counted_as_hits(pool: RedisConnectionPool) -> None:
    # The one hit rate counts reads: a value left out of a bounded read was not read
    # (yet); reading it later counts it once.
    prefix = uuid.uuid4().hex
    pool.execute("SETEX", f"{prefix}a", 60, b"a" * 600_000)
    pool.execute("SETEX", f"{prefix}b", 60, b"b" * 600_000)
    before = pool.get_stats()
    values = pool.get_many([f"{prefix}a", f"{prefix}b", f"{prefix}none"], max_bytes=700_000)
    assert values == [b"a" * 600_000, TooLarge(600_000), None]
    assert pool.execute_many([("GET", f"{prefix}b")]) == [b"b" * 600_000]
    after = pool.get_stats()
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (2, 1)


def test_a_mixed_batch_is_bounded_too(pool: RedisConnectionPool) -> None:
    prefix = uuid.uuid4().hex
    _seed(pool, prefix)
    commands = [
        ("DEL", f"{prefix}s0"),
        *[("GET", f"{prefix}big")] * 299,
        ("SETEX", f"{prefix}after", 60, b"a"),
        ("GET", f"{prefix}after"),
        ("GET", f"{prefix}s0"),
    ]
    replies = pool.execute_many(commands, max_bytes=3 * MIB + 100)
    assert replies[0] == 1
    gets = replies[1:300]
    assert gets[:3] == [b"b" * MIB] * 3
    assert gets[3:] == [TooLarge(MIB)] * 296
    assert replies[300] is True
    assert replies[301:] == [b"a", None]  # the batch's own write is seen, in order


def test_cluster_reads_are_bounded(redis_cluster: ClusterSetup) -> None:
    nodes = ",".join(f"{h}:{p}" for h, p in redis_cluster.startup_nodes)
    pool = RedisConnectionPool(
        load_config({"CACHEGATE_BACKEND": "cluster", "REDIS_CLUSTER_NODES": nodes})
    )
    try:
        keys = [f"k{i}" for i in range(30)]  # over all three masters' slots
        for key in keys:
            pool.execute("SETEX", key, 60, b"x" * (MIB // 4))
        values = pool.get_many([*keys, "missing"], max_bytes=MIB)
        assert values[:4] == [b"x" * (MIB // 4)] * 4
        assert values[4:30] == [TooLarge(MIB // 4)] * 26
        assert values[30] is None
        assert pool.get_many(keys[:3], max_bytes=MIB) == [b"x" * (MIB // 4)] * 3
    finally:
        pool.close()


def test_a_redis_user_without_scripts_gets_the_same_answers(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis_server.client()
    admin.acl_setuser(
        "noscripts",
        enabled=True,
        passwords=["+secret-password"],
        keys=["*"],
        commands=["-@all", "+get", "+mget", "+setex", "+del", "+ping", "+strlen"],
    )
    admin.set("big", b"b" * MIB)
    admin.set("small", b"s")
    admin.hset("hash", "f", "v")
    url = f"redis://noscripts:secret-password@127.0.0.1:{redis_server.port}/0"
    pool = RedisConnectionPool(load_config({"CACHEGATE_BACKEND": "redis", "REDIS_URL": url}))
    try:
        keys = ["small", "big", "big", "hash", "missing"]
        for _ in range(2):  # the first refusal switches scripts off; the second never asks
            values = pool.get_many(keys, max_bytes=MIB + 10)
            assert values == [b"s", b"b" * MIB, TooLarge(MIB), None, None]
        refused = [r for r in caplog.records if "refused the bounded-read script" in r.message]
        assert len(refused) == 1, [r.message for r in caplog.records]
    finally:
        pool.close()


def test_a_redis_user_without_strlen_gets_an_error_not_misses(redis_server: RedisProcess) -> None:
    """README's older ACL (no STRLEN, no scripts): a bounded read fails loudly."""
    admin = redis_server.client()
    admin.acl_setuser(
        "nostrlen",
        enabled=True,
        passwords=["+secret-password"],
        keys=["*"],
        commands=["-@all", "+get", "+mget", "+setex", "+del", "+ping", "+evalsha", "+eval"],
    )
    admin.set("big", b"b" * MIB)
    url = f"redis://nostrlen:secret-password@127.0.0.1:{redis_server.port}/0"
    pool = RedisConnectionPool(load_config({"CACHEGATE_BACKEND": "redis", "REDIS_URL": url}))
    try:
        for _ in range(2):  # through the script, then (scripts off) through the pipeline
            with pytest.raises(CommandError, match="no permissions to run the 'strlen'"):
                pool.get_many(["big", "big", "missing"], max_bytes=MIB + 10)
        assert pool.get_many(["big"], max_bytes=MIB + 10) == [b"b" * MIB]  # fits: MGET
    finally:
        pool.close()
