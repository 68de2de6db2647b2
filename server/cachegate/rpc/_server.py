"""Building the gRPC server (`create_server`) apart from running it.

`create_server` assembles the gRPC layer from parts it is given (the pool, the
executor, the observer): it builds none of them. The process runtime's one
composition root (`cachegate.runtime.build_service`) makes those parts, for
production and for the tests alike; tests listen on `127.0.0.1:0` and dial the port
they got.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from cachegate.core import CircuitState, Config, LimitSettings, StaleCopy
from cachegate.pool import RedisConnectionPool
from cachegate.rpc._admin import AdminServicer
from cachegate.rpc._auth import AuthInterceptor, TokenTable, TokenTableError
from cachegate.rpc._bulkreply import wire
from cachegate.rpc._commands import BreakerCommands
from cachegate.rpc._decode import add_service
from cachegate.rpc._health import HealthReporter
from cachegate.rpc._invalidations import SUBSCRIBE_ENTRIES, InvalidationServicer
from cachegate.rpc._observe import ObservingInterceptor, RpcObserver
from cachegate.rpc._reflection import REFLECTION_SERVICES, enable_reflection, reflection_descriptors
from cachegate.rpc._servicer import CacheServicer
from cachegate.rpc._services import ADMIN, CACHE, HEALTH, INVALIDATION
from cachegate.rpc._tls import ReloadListener, TlsFileError, read_tls_files, server_credentials
from cachegate.rpc._wire import request_limits

__all__ = [
    "AddressInUseError",
    "CacheServer",
    "RpcExecutor",
    "ServerStartError",
    "create_server",
    "load_security",
    "served_services",
]

log = logging.getLogger("cachegate.server")


# Seconds past the grace period that a stop may take before we give up waiting.
STOP_MARGIN = 5.0
# How often a graceful stop looks whether the calls it waits for have ended.
DRAIN_POLL = 0.01
# After the last call has ended, grpc still writes its reply on its own threads: a
# process that exits at once could cut that write (the caller would see UNAVAILABLE
# for a call that succeeded). This is the time given to that write.
REPLY_SETTLE = 0.2

# gRPC servers a stop with `exiting` left to the process's exit. Collecting a gRPC
# server that was never stopped blocks (its C core waits for a shutdown that never
# comes), so they are kept here until the process ends.
_LEFT_TO_EXIT: list[grpc.Server] = []


class ServerStartError(Exception):
    """The server cannot start as configured; the message says what to fix."""


class AddressInUseError(ServerStartError, OSError):
    """The listen address is taken (we never share a port by accident)."""


class RpcExecutor(Protocol):
    """The executor grpc runs calls on, and what a graceful stop asks of it.

    The process runtime's `RpcThreadPool` is the one in use (runtime/_threads.py).
    """

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> futures.Future[Any]: ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...

    def now(self) -> float:
        """A mark in time that `running_before` understands."""
        ...

    def running_before(self, when: float) -> int:
        """How many calls started before `when` are still running."""
        ...


@dataclass(slots=True)
class CacheServer:
    """A built server: the gRPC server, its pool and its health reporter.

    A graceful stop (SIGTERM) never calls grpc's own graceful stop while callers may
    still send: grpc ends every call that has arrived but not yet reached a thread
    with CANCELLED (grpc/grpc#41785), a code clients do not retry. Instead it drains:
    health goes NOT_SERVING, the servicer refuses every new call with UNAVAILABLE
    ("shutting down", retryable), a Pipeline stream is ended with UNAVAILABLE at its
    next batch, and the calls that were running finish, up to the grace period. A
    process that exits next (`exiting=True`) then just ends: the kernel closes every
    connection, and a caller whose call the server never answered sees UNAVAILABLE.
    """

    grpc_server: grpc.Server
    port: int
    pool: RedisConnectionPool
    health: HealthReporter
    config: Config
    threads: RpcExecutor
    servicer: CacheServicer
    _stopped: threading.Event = field(default_factory=threading.Event)
    invalidations: InvalidationServicer | None = None

    def start(self) -> None:
        self.grpc_server.start()
        self.health.start()

    def drain(self, grace: float) -> int:
        """NOT_SERVING, refuse new calls (UNAVAILABLE), and wait up to `grace` seconds for
        the calls running now to end. Returns how many are still running then."""
        self.health.shutdown()
        self.servicer.drain()
        if self.invalidations is not None:  # subscribers would hold the grace to its end
            self.invalidations.drain()
        since = self.threads.now()
        end = time.monotonic() + grace
        while (running := self.threads.running_before(since)) and time.monotonic() < end:
            time.sleep(DRAIN_POLL)
        return running

    def stop(self, grace: float | None = None, *, exiting: bool = False) -> None:
        """Graceful stop: drain (see the class), then close.

        With `exiting` (the process ends right after) the gRPC server is left to the
        process's exit; otherwise (tests, embedding) grpc's stop releases the port and
        cuts what is still open (a stream that sent nothing during the grace).
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.server.grace_seconds if grace is None else grace
        running = self.drain(grace)
        if running:
            log.warning(
                "calls were still open after the grace period; stopping anyway",
                extra={"calls": running},
            )
        if exiting:
            # The threads stay: a call arriving until the exit is still refused cleanly.
            _LEFT_TO_EXIT.append(self.grpc_server)
            time.sleep(min(REPLY_SETTLE, grace))
        else:
            # Bounded: a call grpc never finishes must not keep a stop from ending.
            if not self.grpc_server.stop(0).wait(STOP_MARGIN):
                log.warning("the gRPC server did not stop in time")
            self.threads.shutdown(wait=False)
        if self.invalidations is not None:
            self.invalidations.close()  # its tracker's connections before the pool's
        self.pool.close()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def load_security(
    config: Config, *, credentials: bool = True, tls_listener: ReloadListener | None = None
) -> tuple[TokenTable | None, grpc.ServerCredentials | None]:
    """Read the tokens file and TLS files; ServerStartError names what is wrong.

    The entry point calls it before forking workers too (with credentials=False:
    the files are read and checked, but no gRPC object is made before a fork), so a
    bad file stops start-up once, with one message, instead of failing in every worker.
    `tls_listener` hears the outcome of each certificate reload (see _tls).
    """
    security = config.security
    try:
        tokens = TokenTable.from_file(security.tokens_file) if security.tokens_file else None
        made = None
        if security.tls and credentials:
            made = server_credentials(security, tls_listener)
        elif security.tls:
            read_tls_files(security)
    except (TokenTableError, TlsFileError, OSError) as exc:
        raise ServerStartError(str(exc)) from exc
    return tokens, made


def http2_abuse_options(limits: LimitSettings) -> list[tuple[str, int]]:
    """grpc core's own bounds against HTTP/2 stream floods and rapid reset (CVE-2023-44487).

    - `grpc.max_concurrent_streams` is advertised as SETTINGS_MAX_CONCURRENT_STREAMS;
      grpcio leaves it unset (no limit), so one connection could open a call per HEADERS
      frame until the RPC limit: every server thread of the process held by one socket.
      Past it, core answers RST_STREAM REFUSED_STREAM without creating a call.
    - `grpc.http.overload_protection` (on by default; set so that it stays on) counts a
      stream against that limit until its call is freed, not only while it is open: a
      stream the client resets at once still counts until the server has finished with
      it, so rapid reset cannot queue more than the limit of calls per connection.
    - `grpc.http2.ping_on_rst_stream_percent` (default 1) and
      `grpc.http2.max_requests_per_read` (default 32) stay at their defaults: the first
      makes a resetting client answer PINGs, the second bounds the new streams taken
      from one read before other connections get a turn.
    """
    return [
        ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
        ("grpc.http.overload_protection", 1),
    ]


def served_services(config: Config) -> list[ServiceDescriptor]:
    """The services a server built for `config` serves (its metrics start from these).

    Admin RPCs exist only where callers are authenticated (a tokens file), reflection
    only when CACHEGATE_REFLECTION is on.
    """
    services = [CACHE, INVALIDATION, HEALTH]
    if config.security.tokens_file:
        services.append(ADMIN)
    if config.server.reflection:
        services.extend(reflection_descriptors())
    return services


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
    pool: RedisConnectionPool,
    executor: RpcExecutor,
    listen: str | None = None,
    reuse_port: bool = False,
    worker_id: int = 0,
    workers: int = 1,
    observer: RpcObserver | None = None,
    interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
    tls_listener: ReloadListener | None = None,
    breaker_commands: BreakerCommands | None = None,
    stale_copy: StaleCopy | None = None,
) -> tuple[CacheServer, int]:
    """Build (not start) a server for `config`; returns it and the port it bound.

    `reuse_port` is only for our own worker processes: otherwise a second server
    on the same port must fail instead of silently taking half the traffic.
    `breaker_commands` carries admin RPCs to every worker (worker mode, see
    rpc/_commands.py). `stale_copy`: the worker's copy of values for stale-if-error
    answers (none: such answers are off). The pool and the executor stay the caller's until this
    returns: on failure the caller closes them (the composition root does).

    Interceptors, outermost first: the observer's (every call of every service,
    refusals included, see _observe.py), then auth (with a tokens file), then
    `interceptors`.
    """
    limits = config.limits
    security = config.security
    threads = executor
    # Before anything is built: nothing half-starts.
    tokens, credentials = load_security(config, tls_listener=tls_listener)
    if tokens is not None:
        interceptors = (AuthInterceptor(tokens), *interceptors)
    if observer is not None:  # outermost: it counts what auth refuses too
        interceptors = (ObservingInterceptor(observer), *interceptors)
    options = [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", limits.max_receive_message_bytes),
        ("grpc.max_send_message_length", limits.max_receive_message_bytes),
        # Accept client keepalive pings every 10 s (the default, 5 min, makes gRPC
        # close the connection of a client that keeps a quiet stream alive).
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        *http2_abuse_options(limits),
    ]
    server = grpc.server(
        threads,  # type: ignore[arg-type]  # grpc only calls submit(); its stubs name one class
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        options=options,
        interceptors=list(interceptors) or None,
    )
    health = HealthReporter(pool)
    servicer = CacheServicer(
        pool,
        limits,
        worker_id=worker_id,
        workers=workers,
        tokens=tokens,
        health=health.latest,
        stale_copy=stale_copy,
    )
    behaviors = _behaviors(servicer, CACHE)
    add_service(  # the servicer answers undecodable requests itself, with its error mapping
        server,
        CACHE,
        behaviors,
        guarded=False,
        raw=frozenset({"Pipeline"}),
        limits=request_limits(limits),
        serializers={"Pipeline": wire},
    )
    invalidations = InvalidationServicer(pool, limits, servicer.streams, tokens)
    add_service(  # the servicer answers undecodable requests itself
        server,
        INVALIDATION,
        _behaviors(invalidations, INVALIDATION),
        guarded=False,
        entries={"Subscribe": SUBSCRIBE_ENTRIES},
    )
    services = served_services(config)
    if ADMIN in services:
        admin = AdminServicer(pool, breaker_commands)
        add_service(server, ADMIN, _behaviors(admin, ADMIN))
    pool.add_state_listener(_log_transition)
    add_service(server, HEALTH, _behaviors(health.servicer, HEALTH))
    if config.server.reflection:  # v1 and v1alpha, with the .proto's comments
        listed = [s.full_name for s in services if s.full_name not in REFLECTION_SERVICES]
        enable_reflection(listed, server)
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
    built = CacheServer(
        server, port, pool, health, config, threads, servicer, invalidations=invalidations
    )
    return built, port
