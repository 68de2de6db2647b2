"""The composition root: the one place that makes a process's parts and wires them.

Production (`main.run`, one process or each worker) and the test fixtures build
servers here and nowhere else, so the tests run the wiring that ships: the pool,
the RPC executor, the stale copy, metrics, breaker commands across workers, the gRPC layer
(`cachegate.rpc.create_server`) and the HTTP side port.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from cachegate.core import Config, StaleCopy
from cachegate.pool import RedisConnectionPool
from cachegate.rpc import (
    CacheServer,
    RpcObserver,
    ServerMetrics,
    create_server,
    served_services,
    tenant_of_key,
)
from cachegate.runtime._board import SharedBreakerCommands, WorkerBoard
from cachegate.runtime._http import HttpSidePort
from cachegate.runtime._threads import RpcThreadPool

__all__ = ["Service", "build_service"]


@dataclass
class Service:
    """One process's servers: gRPC, its metrics, and the HTTP side port (if any)."""

    server: CacheServer
    port: int
    metrics: ServerMetrics
    http: HttpSidePort | None
    commands: SharedBreakerCommands | None = None  # worker mode: admin RPCs reach all

    def start(self) -> None:
        if self.commands is not None:  # a breaker command in force applies before serving
            self.commands.start()
        self.server.start()
        if self.http is not None:
            self.http.start()

    def stop(self, grace: float | None = None, *, exiting: bool = False) -> None:
        """gRPC first (NOT_SERVING, drain within the grace, pool closed), then the side
        port. `exiting`: the process ends right after (see CacheServer)."""
        if self.commands is not None:
            self.commands.stop()
        self.server.stop(grace, exiting=exiting)
        if self.http is not None:
            self.http.stop()


def rpc_threads(config: Config) -> RpcThreadPool:
    """A few hot threads, and one more for each call that holds a thread for long (a
    stream, a hung Redis), up to the RPC limit: see _threads.py."""
    limit = config.limits.max_concurrent_rpcs
    return RpcThreadPool(
        min(config.server.rpc_threads, limit),
        limit,
        cpu_share=config.server.cpu_share,  # the CPU this process may use (_cpus.py)
        cpu_period=config.server.cpu_period,
    )


def build_service(
    config: Config,
    *,
    worker_id: int = 0,
    workers: int = 1,
    board: WorkerBoard | None = None,
    observer: RpcObserver | None = None,
    interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
) -> Service:
    """Build (not start) the gRPC server with metrics and the side port.

    `board`: the supervisor's shared board (worker mode), through which admin RPCs
    reach every worker. `observer` replaces the metrics' own RPC observer and
    `interceptors` run after authentication (embedders, and tests that watch every
    call). Raises AddressInUseError or HttpListenError (both OSError) when an address
    is taken, ServerStartError for an unusable tokens or certificate file; nothing is
    left open then.
    """
    pool = RedisConnectionPool(config, auto_batch=config.server.auto_batch)
    threads = rpc_threads(config)
    # Per worker: each process answers stale only from what it learned itself.
    stale_copy = StaleCopy(
        config.limits.stale_copy_bytes,
        # With tokens every key lives in its tenant's namespace: the copy is shared
        # fairly among tenants (see core/_stalecopy.py).
        owner_of=tenant_of_key if config.security.tokens_file else None,
    )
    metrics = ServerMetrics(
        pool,
        worker_id=worker_id,
        workers=workers,
        services=served_services(config),
        stale_copy=stale_copy,
    )
    commands = SharedBreakerCommands(board, pool.breaker) if board is not None else None
    try:
        server, port = create_server(
            config,
            pool=pool,
            executor=threads,
            reuse_port=workers > 1,
            worker_id=worker_id,
            workers=workers,
            observer=metrics.observer if observer is None else observer,
            tls_listener=metrics.tls_reloaded,
            breaker_commands=commands,
            interceptors=interceptors,
            stale_copy=stale_copy,
        )
    except BaseException:
        threads.shutdown(wait=False)
        pool.close()
        raise
    http = None
    if config.server.http_listen is not None:
        try:
            http = HttpSidePort(
                config.server.http_listen,
                registry=metrics.registry,
                health=pool.health_check,
                max_connections=config.server.http_max_connections,
                read_timeout=config.server.http_read_timeout,
            )
        except OSError:
            server.stop(grace=0)
            raise
    return Service(server, port, metrics, http, commands)
