"""The settings table: every environment variable, its default, meaning and parser.

The table is the single source of truth for what can be set: `load_config()`
(_config.py) reads it into frozen records, and `cachegate-server --help` prints it.
Each parser takes the raw string and returns the value or raises ValueError, which
load_config turns into one ConfigError line naming the variable. A REDIS_URL is
split into RedisSettings fields here too (`parse_redis_url`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from cachegate.core._address import Address, parse_address, parse_port
from cachegate.core._secret import Secret

__all__ = [
    "BACKENDS",
    "SETTINGS",
    "BackendKind",
    "Setting",
    "parse_backend",
    "parse_redis_url",
]

BackendKind = Literal["memory", "redis", "sentinel", "cluster"]
BACKENDS: tuple[BackendKind, ...] = ("memory", "redis", "sentinel", "cluster")


# --- parsers: each takes the raw string and returns the value or raises ValueError ---


def _int(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return parse


def _float(*, positive: bool = False, minimum: float = 0.0) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("must be a number of seconds") from None
        if not math.isfinite(value):
            raise ValueError("must be finite")
        if positive and value <= 0:
            raise ValueError("must be > 0")
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return parse


def _optional_float(raw: str) -> float | None:
    if raw.strip() == "":
        return None
    return _float(positive=True)(raw)


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be one of 1/0, true/false, yes/no, on/off")


def _text(raw: str) -> str:
    return raw.strip()


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def parse_backend(raw: str) -> BackendKind | None:
    if raw.strip() == "":
        return None  # chosen by select_backend()
    by_name: dict[str, BackendKind] = {kind: kind for kind in BACKENDS}
    try:
        return by_name[raw.strip().lower()]
    except KeyError:
        raise ValueError(f"must be one of {', '.join(BACKENDS)}") from None


def _addresses(raw: str) -> tuple[Address, ...]:
    return tuple(parse_address(part) for part in raw.split(",") if part.strip())


def _listen(raw: str) -> str:
    parse_address(raw, listen=True)  # validates host:port; the runtime parses it again
    return raw.strip()


def _optional_listen(raw: str) -> str | None:
    if raw.strip().lower() in {"", "0", "off", "none"}:
        return None
    return _listen(raw)


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _fraction(raw: str) -> float | None:
    if raw.strip() == "":
        return None
    value = _float(positive=True)(raw)
    if value > 1:
        raise ValueError("must be a fraction in (0, 1]")
    return value


def _share(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("must be a fraction in (0, 1]") from None
    if not 0 < value <= 1:  # also refuses nan
        raise ValueError("must be a fraction in (0, 1]")
    return value


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: where its value goes, its default and what it means."""

    name: str
    section: str  # the Config field it belongs to
    attr: str  # the attribute inside that section ("" for top-level fields)
    default: str
    help: str
    parse: Callable[[str], Any]
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("CACHEGATE_BACKEND", "", "backend", "",
            "memory (embedded, no Redis needed), redis, sentinel or cluster; unset: "
            "REDIS_SENTINELS -> sentinel, else REDIS_CLUSTER_NODES -> cluster, else "
            "REDIS_URL or REDIS_HOST -> redis, else memory (the server) or redis "
            "(get_redis_pool(), as the guide's pool)", parse_backend),
    Setting("CACHEGATE_LISTEN", "server", "listen", "127.0.0.1:50051",
            "gRPC listen address host:port", _listen),
    Setting("CACHEGATE_HTTP_LISTEN", "server", "http_listen", "127.0.0.1:9464",
            "HTTP side port for /metrics and /health/redis; 'off' disables it", _optional_listen),
    Setting("CACHEGATE_HTTP_MAX_CONNECTIONS", "server", "http_max_connections", "64",
            "side-port connections held open at once (they cost no thread); one more closes "
            "the one that has waited longest for its request, or gets 503", _int(1)),
    Setting("CACHEGATE_HTTP_READ_TIMEOUT", "server", "http_read_timeout", "5",
            "seconds a side-port connection has to send its request (in all, not per "
            "byte) and again to take its reply; then it is closed", _float(positive=True)),
    Setting("CACHEGATE_GRACE_SECONDS", "server", "grace_seconds", "10",
            "on SIGTERM, how long in-flight RPCs may run before the server stops", _float()),
    Setting("CACHEGATE_REFLECTION", "server", "reflection", "1",
            "serve gRPC server reflection (for grpcurl)", _bool),
    Setting("CACHEGATE_WORKERS", "server", "workers", "0",
            "worker processes sharing the port; 0 = one per CPU the process may use: the "
            "smaller of its CPU affinity and its cgroup CPU quota rounded up, and no more than "
            "its memory limit holds (memory backend: always 1)", _int(0)),
    Setting("CACHEGATE_PIN_CPUS", "server", "pin_cpus", "0",
            "1 pins each worker (or the single process) to one CPU of its affinity set, round "
            "robin; only for CPUs this server has to itself (exclusive cores)", _bool),
    Setting("CACHEGATE_RPC_THREADS", "server", "rpc_threads", "8",
            "threads kept serving RPCs per process; long calls (streams, a hung Redis) "
            "get more, up to CACHEGATE_MAX_CONCURRENT_RPCS", _int(1)),
    Setting("CACHEGATE_AUTO_BATCH", "server", "auto_batch", "0",
            "1: unary Get, SetEx and Delete calls that meet in a worker go to Redis together, "
            "one round trip for the calls that arrived while the one before was in flight "
            "(a call alone goes at once); identical Gets in one round trip share one read; "
            "0: every call has a round trip of its own (opt-in for now: see README)", _bool),
    Setting("CACHEGATE_LOG_LEVEL", "server", "log_level", "INFO", "log level", _log_level),
    Setting("CACHEGATE_MAX_KEY_BYTES", "limits", "max_key_bytes", "1024",
            "longest key accepted, in UTF-8 bytes", _int(1)),
    Setting("CACHEGATE_MAX_VALUE_BYTES", "limits", "max_value_bytes", "1048576",
            "largest value accepted, in bytes", _int(0)),
    Setting("CACHEGATE_MAX_BATCH_OPS", "limits", "max_batch_ops", "10000",
            "most operations in one Pipeline batch", _int(1)),
    Setting("CACHEGATE_MAX_CONCURRENT_RPCS", "limits", "max_concurrent_rpcs", "1000",
            "RPCs (streams included) in flight at once; more get RESOURCE_EXHAUSTED", _int(1)),
    Setting("CACHEGATE_MAX_STREAMS", "limits", "max_streams", "100",
            "Pipeline streams open at once; more get RESOURCE_EXHAUSTED", _int(1)),
    Setting("CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES", "limits", "max_receive_message_bytes",
            "4194304", "largest Pipeline batch and largest reply, in bytes (a unary request "
            "may hold a key, a value and a little more); grpc's own default, so a stub left "
            "at its defaults reads every reply", _int(1024)),
    Setting("CACHEGATE_MEMORY_BUDGET_BYTES", "limits", "memory_budget_bytes", "134217728",
            "request and reply bytes one worker holds at once; past it, calls and operations "
            "get RESOURCE_EXHAUSTED; unset: at most this, less where the memory the process "
            "may use (cgroup limit, else physical), shared by the workers, is smaller (a "
            "512 MiB container with 2 workers keeps all of it), never below 4 x "
            "CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES (set: it must be at least that)",
            _int(1024 * 1024)),
    Setting("CACHEGATE_SEND_TIMEOUT", "limits", "send_timeout", "10",
            "seconds a Pipeline reply may wait for a caller that does not read it; then the "
            "stream ends with RESOURCE_EXHAUSTED", _float(positive=True)),
    Setting("CACHEGATE_STALE_COPY_BYTES", "limits", "stale_copy_bytes", "16777216",
            "bytes of values each worker keeps to answer reads that allow staleness "
            "(stale_if_error_seconds) while Redis cannot; extra memory per worker, counted "
            "against no other limit; 0 disables stale answers; unset: at most this, less "
            "with less memory per worker, as CACHEGATE_MEMORY_BUDGET_BYTES", _int(0)),
    Setting("CACHEGATE_STREAM_SHARE", "limits", "stream_share", "0.25",
            "share of CACHEGATE_MAX_STREAMS one caller may hold in each process (a tenant "
            "with tokens, else a client IP address; at least 1 stream); 1 = no share",
            _share),
    Setting("CACHEGATE_MAX_STREAMS_PER_CONNECTION", "limits", "max_streams_per_connection",
            "100", "HTTP/2 streams (calls) one connection may have open at once; more are "
            "refused (REFUSED_STREAM; gRPC clients wait for a free one)", _int(1)),
    Setting("CACHEGATE_STREAM_IDLE_SECONDS", "limits", "stream_idle_seconds", "30",
            "a Pipeline stream with no batch for this long is closed (RESOURCE_EXHAUSTED) "
            "and its slot freed; 0 = never", _float()),
    Setting("CACHEGATE_INVALIDATION_QUEUE", "limits", "invalidation_queue", "10000",
            "distinct changed keys queued for one invalidation subscriber; past it the "
            "subscriber gets one RESET instead, and a second overflow before it reads that "
            "ends its stream (RESOURCE_EXHAUSTED)", _int(1)),
    Setting("CACHEGATE_TLS_CERT", "security", "tls_cert", "",
            "PEM certificate (chain) to serve gRPC over TLS; reloaded when the file changes",
            _optional_text),
    Setting("CACHEGATE_TLS_KEY", "security", "tls_key", "",
            "PEM private key of CACHEGATE_TLS_CERT", _optional_text),
    Setting("CACHEGATE_TLS_CLIENT_CA", "security", "tls_client_ca", "",
            "PEM CA bundle: when set, clients must present a certificate it signed (mTLS)",
            _optional_text),
    Setting("CACHEGATE_TOKENS_FILE", "security", "tokens_file", "",
            "file of 'TOKEN TENANT ROLE' lines (role client or admin): bearer-token auth "
            "and per-tenant key namespaces", _optional_text),
    Setting("REDIS_URL", "redis", "", "",
            "redis://[user[:password]@]host[:port][/db] or rediss://...; overrides "
            "REDIS_HOST/PORT/DB/USERNAME/PASSWORD", _optional_text, secret=True),
    Setting("REDIS_HOST", "redis", "host", "localhost", "Redis host", _text),
    Setting("REDIS_PORT", "redis", "port", "6379", "Redis port", parse_port),
    Setting("REDIS_DB", "redis", "db", "0", "Redis database number", _int(0)),
    Setting("REDIS_USERNAME", "redis", "username", "", "ACL user name (optional)",
            _optional_text),
    Setting("REDIS_PASSWORD", "redis", "password", "", "password (optional; never logged)",
            _optional_text, secret=True),
    Setting("REDIS_TLS_CA_FILE", "redis", "tls_ca_file", "",
            "CA bundle to verify a rediss:// server (default: system CAs)", _optional_text),
    Setting("REDIS_TLS_CERT_FILE", "redis", "tls_cert_file", "",
            "client certificate for rediss:// (optional)", _optional_text),
    Setting("REDIS_TLS_KEY_FILE", "redis", "tls_key_file", "",
            "client key for rediss:// (optional)", _optional_text),
    Setting("REDIS_SENTINELS", "redis", "sentinels", "",
            "sentinel addresses host:port,host:port (backend sentinel)", _addresses),
    Setting("REDIS_SENTINEL_MASTER", "redis", "sentinel_master", "mymaster",
            "master name the sentinels monitor", _text),
    Setting("REDIS_CLUSTER_NODES", "redis", "cluster_nodes", "",
            "cluster startup nodes host:port,host:port (backend cluster; default the "
            "REDIS_HOST:REDIS_PORT node)", _addresses),
    Setting("REDIS_MAX_CONNECTIONS", "pool", "max_connections", "50",
            "most Redis connections this process opens", _int(1)),
    Setting("REDIS_SOCKET_TIMEOUT", "pool", "socket_timeout", "5",
            "seconds to wait for a Redis reply", _float(positive=True)),
    Setting("REDIS_CONNECT_TIMEOUT", "pool", "connect_timeout", "",
            "seconds to wait for a TCP connect (default REDIS_SOCKET_TIMEOUT)", _optional_float),
    Setting("REDIS_HEALTH_CHECK_INTERVAL", "pool", "health_check_interval", "30",
            "seconds idle before a pooled connection is PINGed on checkout; 0 disables",
            _float()),
    Setting("REDIS_POOL_TIMEOUT", "pool", "wait_timeout", "1",
            "seconds a call waits for a free connection before RESOURCE_EXHAUSTED", _float()),
    Setting("REDIS_IDLE_TIMEOUT", "pool", "idle_timeout", "300",
            "seconds before an idle connection is closed; 0 keeps them forever", _float()),
    Setting("REDIS_WAIT_REPLICAS", "pool", "wait_replicas", "0",
            "durable writes: acknowledge only after this many replicas confirm (WAIT); "
            "0 = as soon as the master has it", _int(0)),
    Setting("REDIS_WAIT_TIMEOUT", "pool", "wait_replicas_timeout", "1",
            "seconds a durable write waits for its replicas before it fails UNAVAILABLE",
            _float(positive=True)),
    Setting("REDIS_RETRY_ATTEMPTS", "retry", "attempts", "3",
            "retries of an idempotent command after an outage-class error", _int(0)),
    Setting("REDIS_RETRY_BACKOFF_BASE", "retry", "backoff_base", "0.05",
            "first backoff in seconds (exponential, full jitter)", _float()),
    Setting("REDIS_RETRY_BACKOFF_CAP", "retry", "backoff_cap", "1",
            "longest backoff in seconds", _float()),
    Setting("REDIS_FAILURE_THRESHOLD", "breaker", "failure_threshold", "5",
            "consecutive outage failures that open the breaker", _int(1)),
    Setting("REDIS_RECOVERY_TIMEOUT", "breaker", "recovery_timeout", "60",
            "seconds the breaker stays open before a probe", _float(positive=True)),
    Setting("REDIS_PROBE_DELAY", "breaker", "probe_delay", "1",
            "seconds from the breaker opening to its first background PING of Redis; the "
            "interval doubles up to REDIS_RECOVERY_TIMEOUT; a PING that answers half-opens "
            "the breaker; 0 = no probes", _float()),
    Setting("REDIS_HALF_OPEN_MAX_CALLS", "breaker", "half_open_max_calls", "1",
            "probe calls let through at once while half-open", _int(1)),
    Setting("REDIS_FAILURE_RATE_THRESHOLD", "breaker", "failure_rate_threshold", "",
            "optional: also open when this fraction of the last calls failed", _fraction),
    Setting("REDIS_SLOW_CALL_SECONDS", "breaker", "slow_call_duration", "",
            "optional: count calls slower than this as failures", _optional_float),
)  # fmt: skip


def parse_redis_url(raw: str) -> dict[str, Any]:
    """Split a redis:// or rediss:// URL into RedisSettings fields."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in {"redis", "rediss"}:
        raise ValueError("scheme must be redis:// or rediss://")
    if parts.query or parts.fragment:
        raise ValueError("query parameters are not supported; use the REDIS_* variables")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("port must be a number from 1 to 65535") from None
    fields: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "tls": parts.scheme == "rediss",
    }
    if port is not None:
        fields["port"] = port
    path = parts.path.strip("/")
    if path:
        fields["db"] = _int(0)(path)
    if parts.username:
        fields["username"] = unquote(parts.username)
    if parts.password:
        fields["password"] = Secret(unquote(parts.password))
    return fields
