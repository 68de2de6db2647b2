"""TLS, mTLS, tokens, tenants and admin RPCs, with real certificates and real channels."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from cachegate.client import CacheClient, CacheUnavailableError, Get, RedisCache, SetEx
from cachegate.core import Outcome, load_config
from cachegate.pool import CommandError, RedisConnectionPool
from cachegate.rpc import CacheServer, ServerStartError
from cachegate.rpc._auth import Identity, TokenTable
from cachegate.runtime import build_service
from cachegate.v1 import admin_pb2, admin_pb2_grpc, cache_pb2_grpc
from cachegate.v1 import cache_pb2 as pb
from certs import Authority, Pair
from redisprocs import RedisProcess, start_standalone

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ALICE_TOKEN = "alice-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef00"


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "pki", "main")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], CacheServer]]:
    started: list[CacheServer] = []

    def start(env: dict[str, str]) -> CacheServer:
        config = {"CACHEGATE_LISTEN": "127.0.0.1:0", "CACHEGATE_HTTP_LISTEN": "off", **env}
        server = build_service(load_config(config)).server
        server.start()
        assert server.health.wait_ready(10)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace=0)


def tokens_file(folder: Path) -> Path:
    path = folder / "tokens"
    path.write_text(
        "# token                          tenant  role\n"
        f"{ADMIN_TOKEN}  ops     admin\n"
        f"{ALICE_TOKEN}  alice   client\n"
        f"{BOB_TOKEN}  bob     client  # a comment\n"
    )
    return path


def tls_channel(port: int, root: bytes, client: Pair | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def can_call(channel: grpc.Channel) -> grpc.StatusCode:
    stub = cache_pb2_grpc.CacheServiceStub(channel)
    try:
        stub.Get(pb.GetRequest(key="k"), timeout=3)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    finally:
        channel.close()
    return grpc.StatusCode.OK


# --- TLS and mTLS -----------------------------------------------------------------------


def test_tls_serves_trusting_clients_only(
    serve: Callable[[dict[str, str]], CacheServer], authority: Authority, tmp_path: Path
) -> None:
    cert = authority.issue("server", server=True)
    server = serve({"CACHEGATE_TLS_CERT": str(cert.cert), "CACHEGATE_TLS_KEY": str(cert.key)})
    assert can_call(tls_channel(server.port, authority.ca_pem)) is grpc.StatusCode.OK
    stranger = Authority(tmp_path / "other", "other")
    assert can_call(tls_channel(server.port, stranger.ca_pem)) is grpc.StatusCode.UNAVAILABLE
    plain = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    assert can_call(plain) is grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_from_the_ca(
    serve: Callable[[dict[str, str]], CacheServer], authority: Authority, tmp_path: Path
) -> None:
    cert = authority.issue("server", server=True)
    server = serve(
        {
            "CACHEGATE_TLS_CERT": str(cert.cert),
            "CACHEGATE_TLS_KEY": str(cert.key),
            "CACHEGATE_TLS_CLIENT_CA": str(authority.ca),
        }
    )
    good = authority.issue("client", server=False)
    assert can_call(tls_channel(server.port, authority.ca_pem, good)) is grpc.StatusCode.OK
    assert can_call(tls_channel(server.port, authority.ca_pem)) is grpc.StatusCode.UNAVAILABLE
    forged = Authority(tmp_path / "forger", "forger").issue("client", server=False)
    refused = can_call(tls_channel(server.port, authority.ca_pem, forged))
    assert refused is grpc.StatusCode.UNAVAILABLE


def test_certificate_files_reload_without_restart(
    serve: Callable[[dict[str, str]], CacheServer], authority: Authority, tmp_path: Path
) -> None:
    live = Pair(tmp_path / "live.crt", tmp_path / "live.key")
    first = authority.issue("first", server=True)
    shutil.copyfile(first.cert, live.cert)
    shutil.copyfile(first.key, live.key)
    server = serve({"CACHEGATE_TLS_CERT": str(live.cert), "CACHEGATE_TLS_KEY": str(live.key)})
    renewed_by = Authority(tmp_path / "next", "next")
    assert can_call(tls_channel(server.port, renewed_by.ca_pem)) is grpc.StatusCode.UNAVAILABLE
    second = renewed_by.issue("second", server=True)
    time.sleep(0.01)  # a new mtime
    shutil.copyfile(second.key, live.key)
    shutil.copyfile(second.cert, live.cert)
    # New connections get the new certificate; the old CA is no longer enough.
    assert can_call(tls_channel(server.port, renewed_by.ca_pem)) is grpc.StatusCode.OK
    assert can_call(tls_channel(server.port, authority.ca_pem)) is grpc.StatusCode.UNAVAILABLE


def test_tls_needs_cert_and_key_together() -> None:
    from cachegate.core import ConfigError

    with pytest.raises(ConfigError, match="set both or neither"):
        load_config({"CACHEGATE_TLS_CERT": "/x.crt"})
    with pytest.raises(ConfigError, match="mTLS is TLS"):
        load_config({"CACHEGATE_TLS_CLIENT_CA": "/ca.pem"})


def test_unreadable_certificate_stops_startup(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="No such file"):
        build_service(
            load_config(
                {
                    "CACHEGATE_LISTEN": "127.0.0.1:0",
                    "CACHEGATE_TLS_CERT": str(tmp_path / "missing.crt"),
                    "CACHEGATE_TLS_KEY": str(tmp_path / "missing.key"),
                }
            )
        )


# --- tokens, roles, tenants -------------------------------------------------------------


@pytest.fixture
def authed(
    serve: Callable[[dict[str, str]], CacheServer], tmp_path: Path, redis_server: RedisProcess
) -> CacheServer:
    return serve(
        {
            "CACHEGATE_TOKENS_FILE": str(tokens_file(tmp_path)),
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
        }
    )


def client(server: CacheServer, token: str | None) -> CacheClient:
    return CacheClient(f"127.0.0.1:{server.port}", token=token, retries=False)


def test_tokens_gate_the_cache_but_not_health(authed: CacheServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{authed.port}")
    stub = cache_pb2_grpc.CacheServiceStub(channel)
    with pytest.raises(grpc.RpcError) as none:
        stub.Get(pb.GetRequest(key="k"))
    assert none.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as wrong:
        stub.Get(pb.GetRequest(key="k"), metadata=(("authorization", "Bearer not-a-token-at-all"),))
    assert wrong.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as streaming:
        list(stub.Pipeline(iter([pb.PipelineRequest()])))
    assert streaming.value.code() is grpc.StatusCode.UNAUTHENTICATED
    anonymous = client(authed, None)
    assert anonymous.health() == "SERVING"  # probes cannot send tokens
    assert anonymous.health("cachegate.v1.CacheService") == "SERVING"
    assert client(authed, ALICE_TOKEN).get("k") is None
    channel.close()


def test_admin_rpcs_need_the_admin_role(authed: CacheServer) -> None:
    def admin(token: str) -> tuple[admin_pb2_grpc.AdminServiceStub, tuple[tuple[str, str], ...]]:
        channel = grpc.insecure_channel(f"127.0.0.1:{authed.port}")
        return admin_pb2_grpc.AdminServiceStub(channel), (("authorization", f"Bearer {token}"),)

    stub, alice = admin(ALICE_TOKEN)
    with pytest.raises(grpc.RpcError) as denied:
        stub.ResetBreaker(admin_pb2.ResetBreakerRequest(), metadata=alice)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED

    stub, ops = admin(ADMIN_TOKEN)
    opened = stub.ForceOpenBreaker(admin_pb2.ForceOpenBreakerRequest(), metadata=ops)
    assert opened.breaker.state == pb.CIRCUIT_STATE_OPEN
    assert opened.breaker.forced is True
    with pytest.raises(CacheUnavailableError):
        client(authed, ALICE_TOKEN).get("k")
    assert client(authed, None).health("cachegate.v1.CacheService") == "NOT_SERVING"
    reset = stub.ResetBreaker(admin_pb2.ResetBreakerRequest(), metadata=ops)
    assert reset.breaker.state == pb.CIRCUIT_STATE_CLOSED
    assert reset.breaker.forced is False
    assert client(authed, ALICE_TOKEN).get("k") is None
    closed = stub.ForceCloseBreaker(admin_pb2.ForceCloseBreakerRequest(), metadata=ops)
    assert closed.breaker.forced is True


def test_forced_open_replies_say_so_and_promise_no_retry(authed: CacheServer) -> None:
    """After ForceOpenBreaker a call is told an operator opened the breaker, with no
    RetryInfo (no wait ends a forced opening) and a pushback that forbids retries;
    an ordinary opening still carries its RetryInfo."""
    from google.rpc import error_details_pb2, status_pb2

    channel = grpc.insecure_channel(f"127.0.0.1:{authed.port}")
    ops = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    alice = (("authorization", f"Bearer {ALICE_TOKEN}"),)
    cache = cache_pb2_grpc.CacheServiceStub(channel)
    admin_pb2_grpc.AdminServiceStub(channel).ForceOpenBreaker(
        admin_pb2.ForceOpenBreakerRequest(), metadata=ops
    )

    def rejection() -> tuple[grpc.StatusCode, str, list[str], dict[str, str]]:
        with pytest.raises(grpc.RpcError) as caught:
            cache.Get(pb.GetRequest(key="k"), metadata=alice, timeout=5)
        call = caught.value
        assert isinstance(call, grpc.Call)
        trailers = {str(k): v for k, v in (call.trailing_metadata() or ())}
        details = trailers["grpc-status-details-bin"]
        assert isinstance(details, bytes)
        status = status_pb2.Status.FromString(details)
        kinds = [detail.type_url.rsplit("/", 1)[-1] for detail in status.details]
        text = {k: v for k, v in trailers.items() if isinstance(v, str)}
        return call.code(), call.details() or "", kinds, text

    code, message, kinds, trailers = rejection()
    print(f"forced open: {code.name} {message!r} details={kinds} {trailers}")
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "forced open by an operator" in message
    assert "retry after" not in message
    assert error_details_pb2.RetryInfo.DESCRIPTOR.full_name not in kinds
    assert trailers.get("grpc-retry-pushback-ms") == "-1"
    with pytest.raises(CacheUnavailableError) as typed:
        client(authed, ALICE_TOKEN).get("k")
    assert typed.value.retry_after is None

    # Released, then opened by failures: the ordinary reply keeps its RetryInfo.
    admin_pb2_grpc.AdminServiceStub(channel).ResetBreaker(
        admin_pb2.ResetBreakerRequest(), metadata=ops
    )
    breaker = authed.pool.breaker
    for _ in range(breaker.config.failure_threshold):
        breaker.record(breaker.acquire(), Outcome.FAILURE)
    _, message, kinds, _ = rejection()
    assert "retry after" in message
    assert error_details_pb2.RetryInfo.DESCRIPTOR.full_name in kinds
    channel.close()


def test_client_token_health_check_says_none_for_what_it_cannot_see(authed: CacheServer) -> None:
    """A client-role token's Stats has no Redis, pool or call figures: the guide's
    health dict says None for them (unknown), not 0.0 or ''."""
    cache = RedisCache(f"127.0.0.1:{authed.port}", token=ALICE_TOKEN)
    try:
        health = cache.health_check()
    finally:
        cache.close()
    print(f"client token: {health}")
    assert health["healthy"] is True
    assert health["circuit_state"] == "closed"
    assert health["backend"] == "redis"
    assert health["error"] is None
    hidden = ("ping_ms", "version", "connected_clients", "used_memory_human", "hit_rate")
    assert {name: health[name] for name in hidden} == dict.fromkeys(hidden)
    assert health["age_seconds"] is None
    assert set(health["pool"].values()) == {None}


def test_force_closed_keeps_calling_redis(authed: CacheServer, redis_server: RedisProcess) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{authed.port}")
    ops = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    admin_pb2_grpc.AdminServiceStub(channel).ForceCloseBreaker(
        admin_pb2.ForceCloseBreakerRequest(), metadata=ops
    )
    redis_server.kill()
    alice = client(authed, ALICE_TOKEN)
    for _ in range(10):  # twice the threshold: real errors, never "breaker open"
        with pytest.raises(CacheUnavailableError) as caught:
            alice.get("k")
        assert "breaker" not in str(caught.value)
    assert authed.pool.breaker.state.value == "closed"
    channel.close()


def test_tenants_cannot_see_each_others_keys(
    authed: CacheServer, redis_server: RedisProcess
) -> None:
    alice, bob = client(authed, ALICE_TOKEN), client(authed, BOB_TOKEN)
    alice.set_ex("shared-name", b"alice's", 60)
    assert bob.get("shared-name") is None
    bob.set_ex("shared-name", b"bob's", 60)
    assert alice.get("shared-name") == b"alice's"
    assert bob.delete("shared-name") is True
    assert alice.get("shared-name") == b"alice's"  # bob deleted only his own
    # ... and through Pipeline, including a key that looks like another namespace.
    results = bob.pipeline([Get("shared-name"), Get("alice:shared-name"), SetEx("x", b"b", 60)])
    assert [r.outcome for r in results] == ["not_found", "not_found", "ok"]
    assert [r.outcome for r in alice.pipeline([Get("x"), Get("shared-name")])] == [
        "not_found",
        "value",
    ]
    raw = redis_server.client()
    assert sorted(raw.keys("*")) == [b"alice:shared-name", b"bob:x"]
    # Stats per tenant: each caller sees its own figures.
    assert alice.stats().tenant.name == "alice"
    assert bob.stats().tenant.hits_total == 0
    assert alice.stats().tenant.hits_total == 3


def test_the_token_is_looked_up_once_per_call(
    serve: Callable[[dict[str, str]], CacheServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The interceptor resolves the identity and hands it on with the call: the servicer
    # never looks the token up again (each lookup hashes it and compares every entry).
    looked_up: list[str | None] = []
    real_lookup = TokenTable.lookup

    def counting_lookup(table: TokenTable, token: str | None) -> Identity | None:
        looked_up.append(token)
        return real_lookup(table, token)

    monkeypatch.setattr(TokenTable, "lookup", counting_lookup)
    server = serve({"CACHEGATE_TOKENS_FILE": str(tokens_file(tmp_path))})
    alice = client(server, ALICE_TOKEN)
    alice.set_ex("k", b"v", 60)
    assert alice.get("k") == b"v"
    assert alice.delete("k") is True
    assert [r.outcome for r in alice.pipeline([Get("k"), SetEx("k", b"w", 60)])] == [
        "not_found",
        "ok",
    ]
    assert alice.stats().tenant.name == "alice"
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    admin_pb2_grpc.AdminServiceStub(channel).ResetBreaker(
        admin_pb2.ResetBreakerRequest(), metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),)
    )
    assert looked_up == [ALICE_TOKEN] * 5 + [ADMIN_TOKEN]  # one per call, streams included
    assert client(server, None).health() == "SERVING"  # open: no lookup at all
    with pytest.raises(grpc.RpcError) as refused:
        cache_pb2_grpc.CacheServiceStub(channel).Get(pb.GetRequest(key="k"))
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert looked_up == [ALICE_TOKEN] * 5 + [ADMIN_TOKEN, None]
    channel.close()


def test_bad_tokens_file_stops_startup(tmp_path: Path) -> None:
    bad = tmp_path / "bad-tokens"
    bad.write_text("tiny-Xq7 alice client\n")
    with pytest.raises(ServerStartError, match="line 1: token shorter than 16") as caught:
        build_service(
            load_config({"CACHEGATE_LISTEN": "127.0.0.1:0", "CACHEGATE_TOKENS_FILE": str(bad)})
        )
    assert "tiny-Xq7" not in str(caught.value)  # the token itself is never echoed
    bad.write_text(f"{ALICE_TOKEN} a:b client\n")
    with pytest.raises(ServerStartError, match="tenant must match"):
        build_service(
            load_config({"CACHEGATE_LISTEN": "127.0.0.1:0", "CACHEGATE_TOKENS_FILE": str(bad)})
        )


# --- Redis side: ACL user and TLS -------------------------------------------------------

# The ACL we recommend for cachegate's Redis user (README, "Security"): only what it runs.
CACHEGATE_ACL = [
    "cachegate", "on", ">redis-acl-secret", "~*", "resetchannels",
    "-@all", "+get", "+mget", "+setex", "+del", "+ping", "+info", "+select",
    "+strlen", "+evalsha", "+eval",
]  # fmt: skip


def test_pool_over_redis_tls_with_acl_user(tmp_path: Path, authority: Authority) -> None:
    server_pair = authority.issue("redis", server=True)
    client_pair = authority.issue("cachegate", server=False)
    proc = start_standalone(
        tmp_path / "tls-redis",
        extra_args=[
            "--tls-port", "0",
            "--tls-cert-file", str(server_pair.cert),
            "--tls-key-file", str(server_pair.key),
            "--tls-ca-cert-file", str(authority.ca),
            "--tls-auth-clients", "yes",
            "--user", *CACHEGATE_ACL,
        ],
    )  # fmt: skip
    try:
        # The plain port stays for the fixture's own probes; open a TLS port next to it.
        tls_port = _free_port()
        proc.client().config_set("tls-port", tls_port)
        config = load_config(
            {
                "CACHEGATE_BACKEND": "redis",
                "REDIS_URL": f"rediss://cachegate:redis-acl-secret@127.0.0.1:{tls_port}/0",
                "REDIS_TLS_CA_FILE": str(authority.ca),
                "REDIS_TLS_CERT_FILE": str(client_pair.cert),
                "REDIS_TLS_KEY_FILE": str(client_pair.key),
            }
        )
        pool = RedisConnectionPool(config)
        assert pool.execute("setex", "k", 60, b"over tls") is True
        assert pool.execute("get", "k") == b"over tls"
        assert pool.get_many(["k", "missing"]) == [b"over tls", None]
        # A bounded read (the EVALSHA/EVAL/STRLEN path of "Limits and abuse") runs under
        # the recommended ACL too: the values come back, not a permission error.
        assert pool.get_many(["k", "missing"] * 20, max_bytes=1 << 20) == [b"over tls", None] * 20
        with pytest.raises(CommandError, match=r"(?i)permission|NOPERM"):
            pool.execute("flushall")
        with pytest.raises(CommandError, match=r"(?i)permission|NOPERM"):
            pool.execute("config", "get", "maxmemory")
        health = pool.health_check()
        assert health["healthy"] is True, health
        assert "redis-acl-secret" not in repr(health) + repr(pool) + repr(pool.get_stats())
        pool.close()
        # Without a client certificate, Redis refuses the handshake.
        no_cert = RedisConnectionPool(
            load_config(
                {
                    "CACHEGATE_BACKEND": "redis",
                    "REDIS_URL": f"rediss://cachegate:redis-acl-secret@127.0.0.1:{tls_port}/0",
                    "REDIS_TLS_CA_FILE": str(authority.ca),
                    "REDIS_RETRY_ATTEMPTS": "0",
                }
            )
        )
        with pytest.raises(ConnectionError):
            no_cert.execute("ping")
        no_cert.close()
    finally:
        proc.stop()


def _free_port() -> int:
    from redisprocs import free_port

    return free_port()


# --- secret hygiene ---------------------------------------------------------------------


def test_no_password_or_token_in_logs_stats_metrics_health_or_errors(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import urllib.request
    import uuid

    from redisprocs import free_port

    password = f"redis-pw-{uuid.uuid4().hex}"
    wrong_token = f"wrong-token-{uuid.uuid4().hex}"
    secrets = [password, ADMIN_TOKEN, ALICE_TOKEN, BOB_TOKEN, wrong_token]
    redis = start_standalone(tmp_path / "redis", password=password)
    port, http_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    env = {
        **os.environ,
        "CACHEGATE_BACKEND": "redis",
        "REDIS_URL": redis.url,
        "CACHEGATE_LISTEN": f"127.0.0.1:{port}",
        "CACHEGATE_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "CACHEGATE_WORKERS": "1",
        "CACHEGATE_LOG_LEVEL": "DEBUG",
        "CACHEGATE_TOKENS_FILE": str(tokens_file(tmp_path)),
        "REDIS_FAILURE_THRESHOLD": "2",
        "REDIS_SOCKET_TIMEOUT": "0.5",
    }
    server = Path(sys.executable).parent / "cachegate-server"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(server)], env=env, stderr=log, stdout=log)
    seen: list[str] = []
    try:
        target = f"127.0.0.1:{port}"
        probe = CacheClient(target, retries=False, timeout=1)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(CacheUnavailableError):
                if probe.health("cachegate.v1.CacheService") == "SERVING":
                    break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        probe.close()
        alice, admin = (
            CacheClient(target, token=ALICE_TOKEN),
            CacheClient(target, token=ADMIN_TOKEN),
        )
        alice.set_ex("k", b"v", 60)
        alice.pipeline([Get("k"), SetEx("k2", b"x", 0)])  # an invalid op's error message
        seen.append(str(admin.stats()))
        for token in (wrong_token, None):
            with pytest.raises(Exception) as refused:  # noqa: PT011 - any error; we read its text
                CacheClient(target, token=token, retries=False).get("k")
            seen.append(str(refused.value))
        channel = grpc.insecure_channel(target)
        with pytest.raises(grpc.RpcError) as denied:
            admin_pb2_grpc.AdminServiceStub(channel).ResetBreaker(
                admin_pb2.ResetBreakerRequest(),
                metadata=(("authorization", f"Bearer {BOB_TOKEN}"),),
            )
        seen.append(str(denied.value.details()))
        channel.close()
        redis.kill()  # error paths: refused connections, the breaker opening
        for _ in range(3):
            with pytest.raises(CacheUnavailableError) as down:
                alice.get("k")
            seen.append(str(down.value))
        seen.append(str(admin.stats()))
        for path in ("/metrics", "/health/redis"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=5) as r:
                    seen.append(r.read().decode())
            except urllib.error.HTTPError as exc:  # /health/redis answers 503 now
                seen.append(exc.read().decode())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        redis.stop()
    seen.append(log_path.read_text())
    assert "breaker transition" in seen[-1]  # the logs did cover the error paths
    leaks = [(secret[:8], text[:80]) for text in seen for secret in secrets if secret in text]
    assert leaks == []
