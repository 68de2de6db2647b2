"""Configuration: frozen records, built from a mapping by `load_config()`.

What can be set, with defaults, meanings and parsers, is the table in _settings.py;
`load_config()` reads it, checks the combinations no single setting can, and fills
the records below. The core never touches `os.environ`; the entry points pass the
environment in, so tests pass a plain dict.

A bad value raises `ConfigError` with one line that names the variable; nothing
is half-built. Secret values (passwords) are never echoed, not even in errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cachegate.core._address import Address
from cachegate.core._breaker_config import BreakerConfig
from cachegate.core._errors import ConfigError
from cachegate.core._secret import Secret
from cachegate.core._settings import SETTINGS, BackendKind, parse_backend, parse_redis_url

__all__ = [
    "BACKEND_HINTS",
    "REPLY_COPIES",
    "REQUEST_COPIES",
    "Config",
    "LimitSettings",
    "PoolSettings",
    "RedisSettings",
    "RetrySettings",
    "SecuritySettings",
    "ServerSettings",
    "load_config",
    "select_backend",
]

# With CACHEGATE_BACKEND unset, the first of these variables that is set (not blank)
# picks the backend: the most specific topology wins, so REDIS_SENTINELS plus a
# REDIS_URL (say, for the password) means Sentinel, never a fixed master.
BACKEND_HINTS: tuple[tuple[str, BackendKind], ...] = (
    ("REDIS_SENTINELS", "sentinel"),
    ("REDIS_CLUSTER_NODES", "cluster"),
    ("REDIS_URL", "redis"),
    ("REDIS_HOST", "redis"),
)


# How many times over a worker holds a message's bytes, for the memory budget
# (CACHEGATE_MEMORY_BUDGET_BYTES): a request as grpc's bytes and as the parsed message
# (or the commands built from it) while it runs; a reply as the values read from Redis
# (and the reader's buffer they were parsed from), the reply message, its serialized
# bytes, and grpc's own copy while it is sent (grpc keeps the message until the send
# completes). Drill 13 (replies nobody reads) showed three reply copies undercounted RSS.
REQUEST_COPIES = 2
REPLY_COPIES = 4


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where Redis is and how to authenticate. `password` is a `Secret`."""

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: Secret | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    sentinels: tuple[Address, ...] = ()
    sentinel_master: str = "mymaster"
    cluster_nodes: tuple[Address, ...] = ()

    @property
    def redacted_url(self) -> str:
        """The address as a URL with the password masked, for logs and health output."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}{':***' if self.password else ''}@"
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    max_connections: int = 50
    socket_timeout: float = 5.0
    connect_timeout: float = 5.0
    health_check_interval: float = 30.0
    # How long a caller waits for a free connection before RESOURCE_EXHAUSTED.
    wait_timeout: float = 1.0
    # Connections idle longer than this are closed, so Redis's count falls after a burst.
    idle_timeout: float = 300.0
    # Durable writes: acknowledge a write only once this many replicas have it (WAIT).
    wait_replicas: int = 0
    wait_replicas_timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Our one retry layer (redis-py's own is switched off so they never stack)."""

    attempts: int = 3  # retries after the first try; 0 disables retrying
    backoff_base: float = 0.05
    backoff_cap: float = 1.0


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_key_bytes: int = 1024
    max_value_bytes: int = 1024 * 1024
    max_batch_ops: int = 10_000
    max_concurrent_rpcs: int = 1000
    max_streams: int = 100
    # grpc's own default receive limit, so a reply fits every stub left at its defaults,
    # and the largest message an attacker can make a worker copy whole is 4 MiB.
    max_receive_message_bytes: int = 4 * 1024 * 1024
    # Fair streams (rpc/_streams.py): the share of max_streams one caller may hold,
    # and how long a stream may go without a batch before it is closed (0: never).
    stream_share: float = 0.25
    stream_idle_seconds: float = 30.0
    # HTTP/2 streams one connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS).
    max_streams_per_connection: int = 100
    # Request and reply bytes one worker may hold at once (see rpc/_budget.py).
    memory_budget_bytes: int = 128 * 1024 * 1024
    # How long one Pipeline reply may wait for a caller that does not read it.
    send_timeout: float = 10.0
    # Distinct keys queued for one invalidation subscriber (rpc/_fanout.py).
    invalidation_queue: int = 10_000
    # The worker's copy of values for stale-if-error answers (core/_stalecopy.py);
    # extra memory per worker, counted against nothing else. 0 disables it.
    stale_copy_bytes: int = 16 * 1024 * 1024
    # Whether the two figures above were set (CACHEGATE_MEMORY_BUDGET_BYTES,
    # CACHEGATE_STALE_COPY_BYTES). Unset, they hold the defaults, which are caps: the
    # server's worker plan (runtime/_memory.py) lowers them to each worker's part of
    # the memory the process may use. A set figure is the operator's and stays.
    memory_budget_set: bool = False
    stale_copy_set: bool = False


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """Paths only: the service reads the files (the core does no I/O)."""

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # set: clients must present a certificate it signed
    tokens_file: str | None = None  # set: every cache and admin RPC needs a bearer token

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: str = "127.0.0.1:50051"
    http_listen: str | None = "127.0.0.1:9464"
    http_max_connections: int = 64
    http_read_timeout: float = 5.0
    grace_seconds: float = 10.0
    reflection: bool = True
    workers: int = 0  # 0 means one per CPU the process may use (affinity and quota)
    pin_cpus: bool = False
    rpc_threads: int = 8
    # Unary GET, SETEX and DEL calls that meet in a worker share Redis round trips
    # (pool/_autobatch.py), when switched on; the in-process pool of the guide's API
    # never batches. Off by default: see the README's "Auto-batching".
    auto_batch: bool = False
    # Not settings: what the supervisor found (runtime/_cpus.py), for the thread pool.
    cpu_share: float = 1.0  # the CPU one process may use, in CPUs
    cpu_period: float = 0.0  # the CPU quota's period in seconds; 0 without a quota
    log_level: str = "INFO"


@dataclass(frozen=True, slots=True)
class Config:
    backend: BackendKind = "memory"
    # What chose the backend: "CACHEGATE_BACKEND", one of BACKEND_HINTS, or "default".
    backend_chosen_by: str = "default"
    redis: RedisSettings = field(default_factory=RedisSettings)
    pool: PoolSettings = field(default_factory=PoolSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    limits: LimitSettings = field(default_factory=LimitSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)

    @property
    def backend_target(self) -> str:
        """Where the backend is, as one URL-like string with the password masked (for logs)."""
        redis = self.redis
        if self.backend == "memory":
            return "embedded"
        if self.backend == "redis":
            return redis.redacted_url
        tls = "s" if redis.tls else ""
        auth = ""
        if redis.username or redis.password:
            auth = f"{redis.username or ''}{':***' if redis.password else ''}@"
        if self.backend == "sentinel":
            nodes = ",".join(map(str, redis.sentinels))
            return f"redis{tls}+sentinel://{auth}{nodes}/{redis.sentinel_master}/{redis.db}"
        nodes = ",".join(map(str, redis.cluster_nodes)) or f"{redis.host}:{redis.port}"
        return f"redis{tls}+cluster://{auth}{nodes}"


def select_backend(
    env: Mapping[str, str], *, default: BackendKind = "memory"
) -> tuple[BackendKind, str]:
    """The backend `env` asks for, and the variable that asked (or "default").

    CACHEGATE_BACKEND wins when set; else the first of BACKEND_HINTS that is set; else
    `default`. A bad CACHEGATE_BACKEND raises ConfigError.
    """
    raw = env.get("CACHEGATE_BACKEND", "")
    try:
        named = parse_backend(raw)
    except ValueError as exc:
        raise ConfigError(f"CACHEGATE_BACKEND={raw!r}: {exc}") from None
    if named is not None:
        return named, "CACHEGATE_BACKEND"
    for name, kind in BACKEND_HINTS:
        if env.get(name, "").strip():
            return kind, name
    return default, "default"


def load_config(env: Mapping[str, str], *, default_backend: BackendKind = "memory") -> Config:
    """Build a Config from environment-like variables; unknown variables are ignored.

    `default_backend` is the backend when nothing in `env` names one (see
    select_backend): the server keeps the embedded "memory" so it runs without Redis;
    the guide's in-process pool passes "redis", whose defaults are localhost:6379.
    """
    sections: dict[str, dict[str, Any]] = {
        "": {}, "redis": {}, "pool": {}, "retry": {}, "breaker": {}, "limits": {}, "server": {},
        "security": {},
    }  # fmt: skip
    url_fields: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.name)
        if raw is None or (raw.strip() == "" and setting.default == ""):
            raw = setting.default
        try:
            if setting.name == "REDIS_URL":
                url_fields = parse_redis_url(raw) if raw.strip() else {}
                continue
            value = setting.parse(raw)
        except ValueError as exc:
            shown = "<hidden>" if setting.secret else repr(raw)
            raise ConfigError(f"{setting.name}={shown}: {exc}") from None
        if setting.attr == "password":
            value = Secret(value) if value else None
        if value is None and setting.attr == "connect_timeout":
            continue  # filled from socket_timeout below
        sections[setting.section][setting.attr] = value
    sections["redis"].update(url_fields)
    limits = sections["limits"]
    limits["memory_budget_set"] = "CACHEGATE_MEMORY_BUDGET_BYTES" in env
    limits["stale_copy_set"] = "CACHEGATE_STALE_COPY_BYTES" in env
    backend, chosen_by = select_backend(env, default=default_backend)
    if backend == "sentinel" and not sections["redis"]["sentinels"]:
        raise ConfigError("REDIS_SENTINELS='': required when CACHEGATE_BACKEND=sentinel")
    if backend in ("cluster", "memory") and sections["pool"]["wait_replicas"]:
        raise ConfigError(
            f"REDIS_WAIT_REPLICAS: not supported with CACHEGATE_BACKEND={backend} "
            "(the memory backend has no replicas; on a cluster WAIT is per node)"
        )
    security = sections["security"]
    if bool(security["tls_cert"]) != bool(security["tls_key"]):
        raise ConfigError("CACHEGATE_TLS_CERT and CACHEGATE_TLS_KEY: set both or neither")
    if security["tls_client_ca"] and not security["tls_cert"]:
        raise ConfigError(
            "CACHEGATE_TLS_CLIENT_CA: needs CACHEGATE_TLS_CERT and _KEY (mTLS is TLS)"
        )
    if limits["max_streams"] >= limits["max_concurrent_rpcs"]:
        raise ConfigError(
            f"CACHEGATE_MAX_STREAMS={limits['max_streams']!r}: must be below "
            f"CACHEGATE_MAX_CONCURRENT_RPCS ({limits['max_concurrent_rpcs']}), or streams "
            "could hold every server thread"
        )
    floor = REPLY_COPIES * limits["max_receive_message_bytes"]
    if not limits["memory_budget_set"]:
        # The default follows a larger message limit up: asked for larger messages,
        # a budget left unset must hold one reply of that size.
        limits["memory_budget_bytes"] = max(limits["memory_budget_bytes"], floor)
    if limits["memory_budget_bytes"] < floor:
        raise ConfigError(
            f"CACHEGATE_MEMORY_BUDGET_BYTES={limits['memory_budget_bytes']!r}: must be at least "
            f"{REPLY_COPIES} times CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES "
            f"({limits['max_receive_message_bytes']}): a reply at that size is held "
            f"{REPLY_COPIES} times over, and could never be held otherwise"
        )
    retry = sections["retry"]
    if retry["backoff_cap"] < retry["backoff_base"]:
        raise ConfigError(
            f"REDIS_RETRY_BACKOFF_CAP={retry['backoff_cap']!r}: must be >= REDIS_RETRY_BACKOFF_BASE"
        )
    pool = sections["pool"]
    pool.setdefault("connect_timeout", pool["socket_timeout"])
    try:
        breaker = BreakerConfig(**sections["breaker"])
    except ValueError as exc:  # BreakerConfig validates combinations too
        raise ConfigError(f"breaker settings: {exc}") from None
    return Config(
        backend=backend,
        backend_chosen_by=chosen_by,
        redis=RedisSettings(**sections["redis"]),
        pool=PoolSettings(**pool),
        retry=RetrySettings(**sections["retry"]),
        breaker=breaker,
        limits=LimitSettings(**sections["limits"]),
        server=ServerSettings(**sections["server"]),
        security=SecuritySettings(**security),
    )
