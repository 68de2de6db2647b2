"""The pure core: configuration (the settings table `_settings`, the records and
`load_config` in `_config`) and its host:port parser, the key rule, the circuit
breaker, deadlines, counters, the exception root and the stale copy.

No I/O here, and no knowledge of gRPC or redis: the pool and the service build
on these pieces, and tests drive them with a fake clock.
"""

from cachegate.core._address import Address, parse_address, parse_port
from cachegate.core._breaker import CircuitBreaker
from cachegate.core._breaker_config import BreakerConfig
from cachegate.core._breaker_listeners import StateListener
from cachegate.core._breaker_snapshot import BreakerSnapshot
from cachegate.core._breaker_states import CircuitState, Outcome, Permit
from cachegate.core._config import (
    BACKEND_HINTS,
    REPLY_COPIES,
    REQUEST_COPIES,
    Config,
    LimitSettings,
    PoolSettings,
    RedisSettings,
    RetrySettings,
    SecuritySettings,
    ServerSettings,
    load_config,
    select_backend,
)
from cachegate.core._deadline import Deadline
from cachegate.core._errors import CacheError, CircuitOpenError, ConfigError
from cachegate.core._keys import InvalidKeyError, ascii_keys, encode_key, short_key_chars
from cachegate.core._probe import ProbePolicy, ProbeSchedule
from cachegate.core._repeat import RepeatedMessage, RepeatPolicy
from cachegate.core._secret import Secret
from cachegate.core._settings import SETTINGS, BackendKind, Setting
from cachegate.core._stalecopy import StaleCopy, StaleCopyStats, StaleValue
from cachegate.core._stats import CallCounters, CallStats

__all__ = [
    "BACKEND_HINTS",
    "REPLY_COPIES",
    "REQUEST_COPIES",
    "SETTINGS",
    "Address",
    "BackendKind",
    "BreakerConfig",
    "BreakerSnapshot",
    "CacheError",
    "CallCounters",
    "CallStats",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Config",
    "ConfigError",
    "Deadline",
    "InvalidKeyError",
    "LimitSettings",
    "Outcome",
    "Permit",
    "PoolSettings",
    "ProbePolicy",
    "ProbeSchedule",
    "RedisSettings",
    "RepeatPolicy",
    "RepeatedMessage",
    "RetrySettings",
    "Secret",
    "SecuritySettings",
    "ServerSettings",
    "Setting",
    "StaleCopy",
    "StaleCopyStats",
    "StaleValue",
    "StateListener",
    "ascii_keys",
    "encode_key",
    "load_config",
    "parse_address",
    "parse_port",
    "select_backend",
    "short_key_chars",
]
