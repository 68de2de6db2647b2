"""Building the gRPC server (`create_server`) apart from running it (`serve`).

Tests call `create_server(config)` with `127.0.0.1:0` and dial the port they got.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from cachegate.core import CircuitState, Config
from cachegate.pool import RedisConnectionPool
from cachegate.service._admin import AdminServicer
from cachegate.service._auth import AuthInterceptor, TokenTable, TokenTableError
from cachegate.service._decode import add_service
from cachegate.service._health import HealthReporter
from cachegate.service._observe import RpcObserver
from cachegate.service._servicer import CacheServicer
from cachegate.service._threads import RpcThreadPool
from cachegate.service._tls import server_credentials
from cachegate.service._wire import request_limits
from cachegate.v1 import admin_pb2, cache_pb2

__all__ = [
    "AddressInUseError",
    "CacheServer",
    "ServerStartError",
    "create_server",
    "load_security",
]

log = logging.getLogger("cachegate.server")


# Seconds past the grace period that a stop may take before we give up waiting.
STOP_MARGIN = 5.0


class ServerStartError(Exception):
    """The server cannot start as configured; the message says what to fix."""


class AddressInUseError(ServerStartError, OSError):
    """The listen address is taken (we never share a port by accident)."""


@dataclass(slots=True)
class CacheServer:
    """A built server: the gRPC server, its pool and its health reporter."""

    grpc_server: grpc.Server
    port: int
    pool: RedisConnectionPool
    health: HealthReporter
    config: Config
    threads: RpcThreadPool
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.grpc_server.start()
        self.health.start()

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new RPCs, let in-flight ones finish, close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.shutdown()
        grace = self.config.server.grace_seconds if grace is None else grace
        # Bounded: a call grpc never finishes must not keep SIGTERM from ending us.
        if not self.grpc_server.stop(grace).wait(grace + STOP_MARGIN):
            log.warning("calls were still open after the grace period; stopping anyway")
        self.threads.shutdown(wait=False)
        self.pool.close()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def load_security(
    config: Config, *, credentials: bool = True
) -> tuple[TokenTable | None, grpc.ServerCredentials | None]:
    """Read the tokens file and TLS files; ServerStartError names what is wrong.

    The entry point calls it before forking workers too (with credentials=False:
    the files are read, but no gRPC object is made before a fork), so a bad file
    stops start-up once, with one message, instead of failing in every worker.
    """
    security = config.security
    try:
        tokens = TokenTable.from_file(security.tokens_file) if security.tokens_file else None
        made = None
        if security.tls and credentials:
            made = server_credentials(security)
        elif security.tls:
            for path in (security.tls_cert, security.tls_key, security.tls_client_ca):
                if path:
                    Path(path).read_bytes()
    except (TokenTableError, OSError) as exc:
        raise ServerStartError(str(exc)) from exc
    return tokens, made


def _behaviors(servicer: object, service: ServiceDescriptor) -> dict[str, Callable[..., Any]]:
    """Each RPC of `service` bound to the servicer's method of the same name."""
    return {method.name: getattr(servicer, method.name) for method in service.methods}


def _log_transition(old: CircuitState, new: CircuitState) -> None:
    # The breaker calls each listener once per transition: one log line each.
    level = logging.INFO if new is CircuitState.CLOSED else logging.WARNING
    log.log(level, "breaker transition", extra={"from": old.value, "to": new.value})


def create_server(
    config: Config,
    *,
    pool: RedisConnectionPool | None = None,
    listen: str | None = None,
    reuse_port: bool = False,
    worker_id: int = 0,
    workers: int = 1,
    observer: RpcObserver | None = None,
    interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
) -> tuple[CacheServer, int]:
    """Build (not start) a server for `config`; returns it and the port it bound.

    `reuse_port` is only for our own worker processes: otherwise a second server
    on the same port must fail instead of silently taking half the traffic.
    """
    limits = config.limits
    security = config.security
    tokens, credentials = load_security(config)  # before anything exists: nothing half-starts
    if tokens is not None:
        interceptors = (AuthInterceptor(tokens), *interceptors)
    pool = pool or RedisConnectionPool(config)
    options = [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", limits.max_receive_message_bytes),
        ("grpc.max_send_message_length", limits.max_receive_message_bytes),
        # Accept client keepalive pings every 10 s (the default, 5 min, makes gRPC
        # close the connection of a client that keeps a quiet stream alive).
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    # A few hot threads, and one more for each call that holds a thread for long
    # (a stream, a hung Redis), up to the RPC limit: see _threads.py.
    threads = RpcThreadPool(
        min(config.server.rpc_threads, limits.max_concurrent_rpcs), limits.max_concurrent_rpcs
    )
    server = grpc.server(
        threads,  # type: ignore[arg-type]  # grpc only calls submit(); its stubs name one class
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        options=options,
        interceptors=list(interceptors) or None,
    )
    servicer = CacheServicer(
        pool, limits, worker_id=worker_id, workers=workers, observer=observer, tokens=tokens
    )
    cache_service = cache_pb2.DESCRIPTOR.services_by_name["CacheService"]
    add_service(  # the servicer answers undecodable requests itself (metrics see them)
        server,
        cache_service,
        _behaviors(servicer, cache_service),
        guarded=False,
        raw=frozenset({"Pipeline"}),
        limits=request_limits(limits),
    )
    services = [
        cache_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    ]
    if tokens is not None:  # admin RPCs exist only where callers are authenticated
        admin_service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
        add_service(server, admin_service, _behaviors(AdminServicer(pool), admin_service))
        services.append(admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name)
    pool.add_state_listener(_log_transition)
    health = HealthReporter(pool)
    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"]
    add_service(server, health_service, _behaviors(health.servicer, health_service))
    if config.server.reflection:
        reflection.enable_server_reflection((*services, reflection.SERVICE_NAME), server)
    address = listen or config.server.listen
    failure: RuntimeError | None = None
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        port, failure = 0, exc
    if port == 0:  # older grpcio reports a failed bind as port 0 instead of raising
        threads.shutdown(wait=False)
        pool.close()
        reason = str(failure) if failure is not None else "address in use or invalid"
        raise AddressInUseError(f"cannot listen on {address}: {reason}") from failure
    log.info(
        "built server",
        extra={
            "listen": address,
            "port": port,
            "tls": "mtls" if security.tls_client_ca else bool(credentials),
            "auth": f"{len(tokens)} tokens" if tokens else "off",
        },
    )
    return CacheServer(server, port, pool, health, config, threads), port
