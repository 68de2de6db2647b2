"""Stats per tenant: a client token sees its own figures; pool, call and Redis figures need admin.

A real redis-server (tests/redisprocs.py) behind a server with a tokens file, as in
test_security.py; every caller is a real gRPC client.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cachegate.client import CacheClient, Get, RedisCache
from cachegate.rpc import CacheServer
from cachegate.v1 import cache_pb2 as pb
from conftest import StartServer
from redisprocs import RedisProcess

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ALICE_TOKEN = "alice-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef00"

Serve = Callable[[dict[str, str]], CacheServer]


@pytest.fixture
def serve(start_server: StartServer, redis_server: RedisProcess) -> Serve:
    """conftest's in-process servers, on the test's redis-server."""

    def start(env: dict[str, str]) -> CacheServer:
        env = {"CACHEGATE_BACKEND": "redis", "REDIS_URL": redis_server.url, **env}
        return start_server(env).server

    return start


@pytest.fixture
def authed(serve: Serve, tmp_path: Path) -> CacheServer:
    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"{ADMIN_TOKEN} ops admin\n{ALICE_TOKEN} alice client\n{BOB_TOKEN} bob client\n"
    )
    return serve({"CACHEGATE_TOKENS_FILE": str(tokens)})


def client(server: CacheServer, token: str | None) -> CacheClient:
    return CacheClient(f"127.0.0.1:{server.port}", token=token, retries=False)


def info_calls(redis_server: RedisProcess) -> int:
    """How many INFO commands Redis has run (this reading is counted by the next one)."""
    stats = redis_server.client().info("commandstats")
    calls: int = stats.get("cmdstat_info", {}).get("calls", 0)
    return calls


def test_one_tenants_misses_never_reach_another_tenants_stats(authed: CacheServer) -> None:
    alice, bob, admin = (client(authed, t) for t in (ALICE_TOKEN, BOB_TOKEN, ADMIN_TOKEN))
    bob.set_ex("mine", b"v", 60)
    assert bob.get("mine") == b"v"
    before = bob.stats()
    misses_before = admin.stats().calls.misses_total
    for n in range(7):
        assert alice.get(f"absent-{n}") is None
    assert [r.outcome for r in alice.pipeline([Get(f"gone-{n}") for n in range(5)])] == [
        "not_found"
    ] * 5
    after = bob.stats()
    print("bob before:", before, "bob after:", after, sep="\n")
    # Nothing in bob's Stats moved with alice's 12 misses: it is the very same message.
    assert after == before
    assert (after.tenant.name, after.tenant.calls_total, after.tenant.hits_total) == ("bob", 2, 1)
    assert after.tenant.misses_total == 0
    mine = alice.stats().tenant
    assert (mine.name, mine.calls_total, mine.hits_total, mine.misses_total) == ("alice", 12, 0, 12)
    # The admin still sees every tenant's misses in the shared call figures.
    assert admin.stats().calls.misses_total - misses_before == 12


def test_client_token_stats_carry_no_pool_call_or_redis_figures(
    authed: CacheServer, redis_server: RedisProcess
) -> None:
    alice, admin = client(authed, ALICE_TOKEN), client(authed, ADMIN_TOKEN)
    alice.set_ex("k", b"v", 60)
    assert alice.get("k") == b"v"
    version = str(redis_server.client().info("server")["redis_version"])

    info_before = info_calls(redis_server)
    mine = alice.stats()
    info_after = info_calls(redis_server)
    print("client token's Stats:", mine, sep="\n")
    assert info_after == info_before + 1  # only our own reading: alice's Stats asked Redis nothing
    for section in ("pool", "calls", "redis"):
        assert not mine.HasField(section), section
    assert version not in str(mine)
    assert mine.breaker == pb.BreakerStats(state=pb.CIRCUIT_STATE_CLOSED)
    assert (mine.backend, mine.worker_id, mine.workers) == ("redis", 0, 1)
    assert (mine.tenant.name, mine.tenant.calls_total, mine.tenant.hits_total) == ("alice", 2, 1)

    everything = admin.stats()
    print("admin token's Stats:", everything, sep="\n")
    # The admin's Stats shows the health prober's latest figures and their age; it
    # asked Redis nothing itself (at most the prober refreshed them once meanwhile).
    assert info_calls(redis_server) <= info_after + 2
    assert everything.redis.age_seconds >= 0.0
    assert everything.redis.healthy is True
    assert everything.redis.version == version
    assert everything.redis.connected_clients >= 1
    assert everything.redis.used_memory_human != ""
    assert everything.pool.max_connections > 0
    assert everything.pool.created_connections >= 1
    assert everything.calls.calls_total >= 2
    assert everything.calls.hits_total >= 1
    assert everything.tenant.name == "ops"

    # The migration guide's health_check still works with a client token.
    health = RedisCache(f"127.0.0.1:{authed.port}", token=ALICE_TOKEN).health_check()
    assert health["healthy"] is True
    assert health["version"] is None  # not visible to a client token: unknown
    assert health["circuit_state"] == "closed"


def test_without_tokens_stats_carry_everything(serve: Serve, redis_server: RedisProcess) -> None:
    server = serve({})
    anyone = client(server, None)
    anyone.set_ex("k", b"v", 60)
    assert anyone.get("k") == b"v"
    stats = anyone.stats()
    for section in ("pool", "calls", "redis"):
        assert stats.HasField(section), section
    assert not stats.HasField("tenant")
    assert stats.redis.version == str(redis_server.client().info("server")["redis_version"])
    assert stats.calls.hits_total == 1
