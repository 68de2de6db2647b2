"""The services this layer serves, by their generated descriptors: named once.

Everything that needs a service's name or methods (registration, health, auth's
path prefixes, the metrics' zero series) takes it from here, never from a string.
"""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2

from cachegate.v1 import admin_pb2, cache_pb2, invalidation_pb2

__all__ = ["ADMIN", "CACHE", "HEALTH", "INVALIDATION"]

CACHE: ServiceDescriptor = cache_pb2.DESCRIPTOR.services_by_name["CacheService"]
INVALIDATION: ServiceDescriptor = invalidation_pb2.DESCRIPTOR.services_by_name[
    "InvalidationService"
]
HEALTH: ServiceDescriptor = health_pb2.DESCRIPTOR.services_by_name["Health"]
ADMIN: ServiceDescriptor = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
