"""The gRPC service: servicer, the status mapping, health, limits, and the server builder."""

from cachegate.service._health import SERVICE_NAME, HealthReporter
from cachegate.service._http import HttpListenError, HttpSidePort
from cachegate.service._metrics import PoolCollector, PrometheusObserver, ServerMetrics
from cachegate.service._observe import NullObserver, RpcObserver
from cachegate.service._server import (
    AddressInUseError,
    CacheServer,
    ServerStartError,
    create_server,
)
from cachegate.service._servicer import CacheServicer

__all__ = [
    "SERVICE_NAME",
    "AddressInUseError",
    "CacheServer",
    "CacheServicer",
    "HealthReporter",
    "HttpListenError",
    "HttpSidePort",
    "NullObserver",
    "PoolCollector",
    "PrometheusObserver",
    "RpcObserver",
    "ServerMetrics",
    "ServerStartError",
    "create_server",
]
