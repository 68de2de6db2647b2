"""The gRPC service: servicer, the status mapping, health, limits, and the server builder."""

from cachegate.service._health import SERVICE_NAME, HealthReporter
from cachegate.service._observe import NullObserver, RpcObserver
from cachegate.service._server import AddressInUseError, CacheServer, create_server
from cachegate.service._servicer import CacheServicer

__all__ = [
    "SERVICE_NAME",
    "AddressInUseError",
    "CacheServer",
    "CacheServicer",
    "HealthReporter",
    "NullObserver",
    "RpcObserver",
    "create_server",
]
