from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_VALUE: _ClassVar[Outcome]
    OUTCOME_OK: _ClassVar[Outcome]
    OUTCOME_NOT_FOUND: _ClassVar[Outcome]
    OUTCOME_ERROR: _ClassVar[Outcome]

class CircuitState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CIRCUIT_STATE_UNSPECIFIED: _ClassVar[CircuitState]
    CIRCUIT_STATE_CLOSED: _ClassVar[CircuitState]
    CIRCUIT_STATE_OPEN: _ClassVar[CircuitState]
    CIRCUIT_STATE_HALF_OPEN: _ClassVar[CircuitState]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_VALUE: Outcome
OUTCOME_OK: Outcome
OUTCOME_NOT_FOUND: Outcome
OUTCOME_ERROR: Outcome
CIRCUIT_STATE_UNSPECIFIED: CircuitState
CIRCUIT_STATE_CLOSED: CircuitState
CIRCUIT_STATE_OPEN: CircuitState
CIRCUIT_STATE_HALF_OPEN: CircuitState

class GetRequest(_message.Message):
    __slots__ = ("key", "stale_if_error_seconds")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STALE_IF_ERROR_SECONDS_FIELD_NUMBER: _ClassVar[int]
    key: str
    stale_if_error_seconds: int
    def __init__(self, key: _Optional[str] = ..., stale_if_error_seconds: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("found", "value", "stale", "age_seconds")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    stale: bool
    age_seconds: float
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ..., stale: _Optional[bool] = ..., age_seconds: _Optional[float] = ...) -> None: ...

class SetExRequest(_message.Message):
    __slots__ = ("key", "value", "ttl_seconds")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    ttl_seconds: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class SetExResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class GetOperation(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class SetExOperation(_message.Message):
    __slots__ = ("key", "value", "ttl_seconds")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    ttl_seconds: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class DeleteOperation(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("get", "set_ex", "delete")
    GET_FIELD_NUMBER: _ClassVar[int]
    SET_EX_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    get: GetOperation
    set_ex: SetExOperation
    delete: DeleteOperation
    def __init__(self, get: _Optional[_Union[GetOperation, _Mapping]] = ..., set_ex: _Optional[_Union[SetExOperation, _Mapping]] = ..., delete: _Optional[_Union[DeleteOperation, _Mapping]] = ...) -> None: ...

class PipelineRequest(_message.Message):
    __slots__ = ("operations", "stale_if_error_seconds")
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    STALE_IF_ERROR_SECONDS_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    stale_if_error_seconds: int
    def __init__(self, operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., stale_if_error_seconds: _Optional[int] = ...) -> None: ...

class StaleAnswer(_message.Message):
    __slots__ = ("index", "age_seconds")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    index: int
    age_seconds: float
    def __init__(self, index: _Optional[int] = ..., age_seconds: _Optional[float] = ...) -> None: ...

class OperationError(_message.Message):
    __slots__ = ("index", "code", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    code: int
    message: str
    def __init__(self, index: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class PipelineResponse(_message.Message):
    __slots__ = ("outcomes", "values", "errors", "stale")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedScalarFieldContainer[Outcome]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    errors: _containers.RepeatedCompositeFieldContainer[OperationError]
    stale: _containers.RepeatedCompositeFieldContainer[StaleAnswer]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[Outcome, str]]] = ..., values: _Optional[_Iterable[bytes]] = ..., errors: _Optional[_Iterable[_Union[OperationError, _Mapping]]] = ..., stale: _Optional[_Iterable[_Union[StaleAnswer, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolStats(_message.Message):
    __slots__ = ("max_connections", "created_connections", "available_connections", "in_use_connections", "pending_requests", "wait_timeouts_total")
    MAX_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    IN_USE_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    max_connections: int
    created_connections: int
    available_connections: int
    in_use_connections: int
    pending_requests: int
    wait_timeouts_total: int
    def __init__(self, max_connections: _Optional[int] = ..., created_connections: _Optional[int] = ..., available_connections: _Optional[int] = ..., in_use_connections: _Optional[int] = ..., pending_requests: _Optional[int] = ..., wait_timeouts_total: _Optional[int] = ...) -> None: ...

class BreakerStats(_message.Message):
    __slots__ = ("state", "consecutive_failures", "retry_after_seconds", "opened_total", "transitions_total", "rejected_total", "forced")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OPENED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    state: CircuitState
    consecutive_failures: int
    retry_after_seconds: float
    opened_total: int
    transitions_total: int
    rejected_total: int
    forced: bool
    def __init__(self, state: _Optional[_Union[CircuitState, str]] = ..., consecutive_failures: _Optional[int] = ..., retry_after_seconds: _Optional[float] = ..., opened_total: _Optional[int] = ..., transitions_total: _Optional[int] = ..., rejected_total: _Optional[int] = ..., forced: _Optional[bool] = ...) -> None: ...

class CallStats(_message.Message):
    __slots__ = ("calls_total", "failures_total", "retries_total", "hits_total", "misses_total", "hit_rate")
    CALLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FAILURES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RETRIES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    HITS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MISSES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    calls_total: int
    failures_total: int
    retries_total: int
    hits_total: int
    misses_total: int
    hit_rate: float
    def __init__(self, calls_total: _Optional[int] = ..., failures_total: _Optional[int] = ..., retries_total: _Optional[int] = ..., hits_total: _Optional[int] = ..., misses_total: _Optional[int] = ..., hit_rate: _Optional[float] = ...) -> None: ...

class RedisInfo(_message.Message):
    __slots__ = ("healthy", "ping_ms", "version", "connected_clients", "used_memory_human", "hit_rate", "error", "age_seconds")
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    PING_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    USED_MEMORY_HUMAN_FIELD_NUMBER: _ClassVar[int]
    HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    healthy: bool
    ping_ms: float
    version: str
    connected_clients: int
    used_memory_human: str
    hit_rate: float
    error: str
    age_seconds: float
    def __init__(self, healthy: _Optional[bool] = ..., ping_ms: _Optional[float] = ..., version: _Optional[str] = ..., connected_clients: _Optional[int] = ..., used_memory_human: _Optional[str] = ..., hit_rate: _Optional[float] = ..., error: _Optional[str] = ..., age_seconds: _Optional[float] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("backend", "pool", "breaker", "calls", "redis", "worker_id", "workers", "tenant")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    REDIS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    backend: str
    pool: PoolStats
    breaker: BreakerStats
    calls: CallStats
    redis: RedisInfo
    worker_id: int
    workers: int
    tenant: TenantStats
    def __init__(self, backend: _Optional[str] = ..., pool: _Optional[_Union[PoolStats, _Mapping]] = ..., breaker: _Optional[_Union[BreakerStats, _Mapping]] = ..., calls: _Optional[_Union[CallStats, _Mapping]] = ..., redis: _Optional[_Union[RedisInfo, _Mapping]] = ..., worker_id: _Optional[int] = ..., workers: _Optional[int] = ..., tenant: _Optional[_Union[TenantStats, _Mapping]] = ...) -> None: ...

class TenantStats(_message.Message):
    __slots__ = ("name", "calls_total", "hits_total", "misses_total")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CALLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    HITS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MISSES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    calls_total: int
    hits_total: int
    misses_total: int
    def __init__(self, name: _Optional[str] = ..., calls_total: _Optional[int] = ..., hits_total: _Optional[int] = ..., misses_total: _Optional[int] = ...) -> None: ...
