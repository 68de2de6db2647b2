"""Configuration: the seed's variables and defaults, clear one-line errors, no leaked secrets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cachegate.core import (
    REPLY_COPIES,
    SETTINGS,
    Address,
    ConfigError,
    Secret,
    load_config,
    select_backend,
)


def test_defaults_are_the_seeds() -> None:
    config = load_config({})
    assert config.backend == "memory"
    assert (config.redis.host, config.redis.port, config.redis.db) == ("localhost", 6379, 0)
    assert config.redis.password is None
    assert config.pool.max_connections == 50
    assert config.pool.socket_timeout == 5.0
    assert config.pool.connect_timeout == 5.0  # follows the socket timeout when unset
    assert config.pool.health_check_interval == 30.0
    assert config.breaker.failure_threshold == 5
    assert config.breaker.recovery_timeout == 60.0
    assert config.server.listen == "127.0.0.1:50051"


def test_seed_variables_are_read() -> None:
    config = load_config(
        {
            "REDIS_HOST": "cache.internal",
            "REDIS_PORT": "6380",
            "REDIS_DB": "3",
            "REDIS_PASSWORD": "s3cret",
            "REDIS_MAX_CONNECTIONS": "7",
            "REDIS_SOCKET_TIMEOUT": "0.25",
            "REDIS_HEALTH_CHECK_INTERVAL": "0",
            "REDIS_FAILURE_THRESHOLD": "2",
            "REDIS_RECOVERY_TIMEOUT": "1.5",
            "CACHEGATE_BACKEND": "redis",
        }
    )
    assert config.backend == "redis"
    assert (config.redis.host, config.redis.port, config.redis.db) == ("cache.internal", 6380, 3)
    assert config.redis.password == Secret("s3cret")
    assert config.pool.max_connections == 7
    assert config.pool.socket_timeout == 0.25
    assert config.pool.connect_timeout == 0.25
    assert config.pool.health_check_interval == 0.0
    assert config.breaker.failure_threshold == 2
    assert config.breaker.recovery_timeout == 1.5


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("REDIS_PORT", "abc", "REDIS_PORT='abc': must be a whole number"),
        ("REDIS_PORT", "70000", "REDIS_PORT='70000': must be <= 65535"),
        ("REDIS_FAILURE_THRESHOLD", "-1", "REDIS_FAILURE_THRESHOLD='-1': must be >= 1"),
        ("REDIS_RECOVERY_TIMEOUT", "0", "REDIS_RECOVERY_TIMEOUT='0': must be > 0"),
        ("REDIS_SOCKET_TIMEOUT", "nan", "REDIS_SOCKET_TIMEOUT='nan': must be finite"),
        ("CACHEGATE_BACKEND", "mongo", "CACHEGATE_BACKEND='mongo': must be one of"),
        ("CACHEGATE_LISTEN", "nowhere", "CACHEGATE_LISTEN='nowhere': 'nowhere' is not host:port"),
        ("CACHEGATE_REFLECTION", "maybe", "CACHEGATE_REFLECTION='maybe': must be one of"),
    ],
)
def test_a_bad_value_names_the_variable_in_one_line(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({name: value})
    message = str(caught.value)
    assert message.startswith(says)
    assert "\n" not in message


def test_secrets_are_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"REDIS_URL": "redis://user:hunter2@host:notaport/0"})
    assert "hunter2" not in str(caught.value)
    assert "REDIS_URL=<hidden>" in str(caught.value)

    config = load_config({"REDIS_URL": "rediss://app:hunter2@redis.example:6390/2"})
    assert "hunter2" not in repr(config)
    assert "hunter2" not in config.redis.redacted_url
    assert config.redis.redacted_url == "rediss://app:***@redis.example:6390/2"
    assert str(config.redis.password) == "***"


def test_url_carries_acl_user_tls_and_db() -> None:
    config = load_config({"REDIS_URL": "rediss://app:p%40ss@redis.example:6390/2"})
    redis = config.redis
    assert (redis.host, redis.port, redis.db, redis.username) == ("redis.example", 6390, 2, "app")
    assert redis.tls is True
    assert redis.password is not None
    assert redis.password.value == "p@ss"  # percent-decoded


def test_url_overrides_host_and_port() -> None:
    config = load_config({"REDIS_URL": "redis://10.1.2.3", "REDIS_HOST": "ignored"})
    assert (config.redis.host, config.redis.port, config.redis.tls) == ("10.1.2.3", 6379, False)


def test_url_rejects_other_schemes_and_query_parameters() -> None:
    with pytest.raises(ConfigError, match="scheme must be"):
        load_config({"REDIS_URL": "http://localhost"})
    with pytest.raises(ConfigError, match="query parameters"):
        load_config({"REDIS_URL": "redis://localhost/0?ssl_cert_reqs=none"})


def test_sentinel_backend_needs_sentinels() -> None:
    with pytest.raises(ConfigError, match="REDIS_SENTINELS"):
        load_config({"CACHEGATE_BACKEND": "sentinel"})
    config = load_config(
        {"CACHEGATE_BACKEND": "sentinel", "REDIS_SENTINELS": "127.0.0.1:26379, [::1]:26380"}
    )
    assert config.redis.sentinels == (Address("127.0.0.1", 26379), Address("::1", 26380))


def test_backoff_cap_below_base_is_refused() -> None:
    with pytest.raises(ConfigError, match="REDIS_RETRY_BACKOFF_CAP"):
        load_config({"REDIS_RETRY_BACKOFF_BASE": "2", "REDIS_RETRY_BACKOFF_CAP": "1"})


def test_http_side_port_can_be_switched_off() -> None:
    assert load_config({"CACHEGATE_HTTP_LISTEN": "off"}).server.http_listen is None


def test_every_setting_default_parses() -> None:
    # The --help table shows these defaults: each must be a value load_config accepts.
    env = {s.name: s.default for s in SETTINGS if s.default}
    written_out = load_config(env)
    # Writing REDIS_HOST out, even as its default, asks for Redis (the guide's rule).
    assert (written_out.backend, written_out.backend_chosen_by) == ("redis", "REDIS_HOST")
    # Writing a memory figure out, even as its default, makes it the operator's: the
    # worker plan no longer lowers it to the memory the process may use.
    assert written_out.limits.memory_budget_set
    assert written_out.limits.stale_copy_set
    limits = replace(written_out.limits, memory_budget_set=False, stale_copy_set=False)
    unset = replace(written_out, backend="memory", backend_chosen_by="default", limits=limits)
    assert unset == load_config({})


# --- which backend: CACHEGATE_BACKEND, else the Redis variables, else the caller's default ---


@pytest.mark.parametrize(
    ("env", "backend", "chosen_by"),
    [
        ({}, "memory", "default"),
        ({"REDIS_HOST": "cache.internal"}, "redis", "REDIS_HOST"),
        ({"REDIS_URL": "redis://cache.internal:6380/1"}, "redis", "REDIS_URL"),
        ({"REDIS_SENTINELS": "10.0.0.1:26379"}, "sentinel", "REDIS_SENTINELS"),
        ({"REDIS_CLUSTER_NODES": "10.0.0.1:7000"}, "cluster", "REDIS_CLUSTER_NODES"),
        # Several: the most specific topology wins.
        ({"REDIS_SENTINELS": "s:26379", "REDIS_CLUSTER_NODES": "c:7000"}, "sentinel",
         "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "s:26379", "REDIS_URL": "redis://:pw@m:6379"}, "sentinel",
         "REDIS_SENTINELS"),
        ({"REDIS_CLUSTER_NODES": "c:7000", "REDIS_HOST": "h"}, "cluster", "REDIS_CLUSTER_NODES"),
        ({"REDIS_URL": "redis://u:6379", "REDIS_HOST": "h"}, "redis", "REDIS_URL"),
        # An explicit CACHEGATE_BACKEND always wins.
        ({"CACHEGATE_BACKEND": "memory", "REDIS_HOST": "h", "REDIS_SENTINELS": "s:26379"},
         "memory", "CACHEGATE_BACKEND"),
        ({"CACHEGATE_BACKEND": "redis", "REDIS_SENTINELS": "s:26379"}, "redis",
         "CACHEGATE_BACKEND"),
        ({"CACHEGATE_BACKEND": "cluster"}, "cluster", "CACHEGATE_BACKEND"),
        # Blank counts as unset; other Redis variables alone name no backend.
        ({"CACHEGATE_BACKEND": " ", "REDIS_HOST": "", "REDIS_URL": ""}, "memory", "default"),
        ({"REDIS_PORT": "6380", "REDIS_PASSWORD": "pw", "REDIS_DB": "2"}, "memory", "default"),
    ],
)  # fmt: skip
def test_backend_selection_table(env: dict[str, str], backend: str, chosen_by: str) -> None:
    config = load_config(env)
    assert (config.backend, config.backend_chosen_by) == (backend, chosen_by)
    assert select_backend(env) == (backend, chosen_by)


def test_the_in_process_default_is_redis_unless_memory_is_named() -> None:
    # The guide's pool: nothing set means the guide's localhost:6379.
    config = load_config({}, default_backend="redis")
    assert (config.backend, config.backend_chosen_by) == ("redis", "default")
    assert config.backend_target == "redis://localhost:6379/0"
    config = load_config({"REDIS_PORT": "6390"}, default_backend="redis")
    assert config.backend_target == "redis://localhost:6390/0"
    named = load_config({"CACHEGATE_BACKEND": "memory"}, default_backend="redis")
    assert (named.backend, named.backend_chosen_by) == ("memory", "CACHEGATE_BACKEND")
    assert named.backend_target == "embedded"
    # The hints still pick a topology.
    assert load_config({"REDIS_SENTINELS": "s:1"}, default_backend="redis").backend == "sentinel"


def test_a_chosen_backend_is_checked_like_a_named_one() -> None:
    with pytest.raises(ConfigError, match="REDIS_WAIT_REPLICAS"):
        load_config({"REDIS_CLUSTER_NODES": "c:7000", "REDIS_WAIT_REPLICAS": "1"})
    assert load_config({"REDIS_HOST": "h", "REDIS_WAIT_REPLICAS": "1"}).pool.wait_replicas == 1
    with pytest.raises(ConfigError, match="CACHEGATE_BACKEND='mongo'"):
        select_backend({"CACHEGATE_BACKEND": "mongo", "REDIS_HOST": "h"})


@pytest.mark.parametrize(
    ("env", "target"),
    [
        ({}, "embedded"),
        ({"REDIS_URL": "rediss://app:hunter2@r.example:6390/2"}, "rediss://app:***@r.example:6390/2"),
        ({"REDIS_HOST": "h", "REDIS_PASSWORD": "hunter2"}, "redis://:***@h:6379/0"),
        ({"REDIS_SENTINELS": "s1:26379,s2:26380", "REDIS_PASSWORD": "hunter2",
          "REDIS_SENTINEL_MASTER": "main"}, "redis+sentinel://:***@s1:26379,s2:26380/main/0"),
        ({"REDIS_CLUSTER_NODES": "c1:7000,c2:7001", "REDIS_URL": "rediss://u:hunter2@x:1"},
         "rediss+cluster://u:***@c1:7000,c2:7001"),
        ({"CACHEGATE_BACKEND": "cluster", "REDIS_HOST": "c"}, "redis+cluster://c:6379"),
    ],
)  # fmt: skip
def test_backend_target_names_where_and_masks_the_password(
    env: dict[str, str], target: str
) -> None:
    shown = load_config(env).backend_target
    assert shown == target
    assert "hunter2" not in shown


def test_the_memory_budget_must_hold_a_reply_at_the_send_limit() -> None:
    # A reply at the send limit is held REPLY_COPIES times over: a smaller budget could
    # never grant it, and a batch that needs it would be refused forever.
    limit = 1024 * 1024
    settings = {"CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES": str(limit)}
    with pytest.raises(ConfigError, match="CACHEGATE_MEMORY_BUDGET_BYTES"):
        load_config({**settings, "CACHEGATE_MEMORY_BUDGET_BYTES": str((REPLY_COPIES - 1) * limit)})
    config = load_config({**settings, "CACHEGATE_MEMORY_BUDGET_BYTES": str(REPLY_COPIES * limit)})
    assert config.limits.memory_budget_bytes == REPLY_COPIES * limit


def test_an_unset_budget_follows_a_larger_message_limit_up() -> None:
    # Only a budget that was set is refused for being too small for a reply.
    limit = 64 * 1024 * 1024
    config = load_config({"CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES": str(limit)})
    assert config.limits.memory_budget_bytes == REPLY_COPIES * limit
    assert not config.limits.memory_budget_set
    small = load_config({"CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES": str(1024 * 1024)})
    assert small.limits.memory_budget_bytes == 128 * 1024 * 1024  # the default, a cap
