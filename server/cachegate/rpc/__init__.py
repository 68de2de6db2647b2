"""The gRPC layer: cachegate.v1 served over a pool.

What a call meets, in order: the observing interceptor (`_observe`: every call of
every service reported to the metrics once), the auth interceptor (`_auth`: the
caller's identity, resolved once and handed on with the call), the request limits
counted on the wire before parsing (`_wire`, `_decode`, `_limits`), the servicer
(`_servicer`: Get, SetEx, Delete, Pipeline, Stats, with per-tenant counters
`_tenants`, fair streams `_streams`, the memory budget `_budget` and `_sendwatch`),
each Pipeline batch run by `_batches` (with its fast path `_fastpath` and bounded
replies `_replies`), and the one mapping of errors to gRPC status codes (`_status`).
Beside it: health (`_health`), reflection (`_reflection`), admin RPCs (`_admin`,
`_commands`), TLS (`_tls`), metrics (`_metrics`, the RPCs' own counts in
`_rpcmetrics`) and InvalidationService (`_invalidations`, its fan-out `_fanout`).
`create_server` assembles it from parts it is given; the process runtime
(`cachegate.runtime`) makes those parts and hosts it.
"""

from cachegate.rpc._auth import tenant_of_key
from cachegate.rpc._commands import BreakerCommands, Forced, LocalBreakerCommands, Reach
from cachegate.rpc._health import SERVICE_NAME, HealthReporter
from cachegate.rpc._metrics import PoolCollector, ServerMetrics
from cachegate.rpc._observe import ObservingInterceptor, RpcObserver
from cachegate.rpc._rpcmetrics import PrometheusObserver
from cachegate.rpc._server import (
    AddressInUseError,
    CacheServer,
    RpcExecutor,
    ServerStartError,
    create_server,
    load_security,
    served_services,
)
from cachegate.rpc._servicer import CacheServicer

__all__ = [
    "SERVICE_NAME",
    "AddressInUseError",
    "BreakerCommands",
    "CacheServer",
    "CacheServicer",
    "Forced",
    "HealthReporter",
    "LocalBreakerCommands",
    "ObservingInterceptor",
    "PoolCollector",
    "PrometheusObserver",
    "Reach",
    "RpcExecutor",
    "RpcObserver",
    "ServerMetrics",
    "ServerStartError",
    "create_server",
    "load_security",
    "served_services",
    "tenant_of_key",
]
