"""`cachegate-server`: the entry point. The only module that reads the environment.

Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for a bad setting
(one line naming the variable), 1 when the server cannot start (port taken) or,
in worker mode, when a worker failed or kept dying.

One process serves when one worker is planned (CACHEGATE_WORKERS=1, one CPU, or the
embedded memory backend); otherwise a supervisor forks the workers (`_workers.py`)
before any gRPC object exists, and each worker runs `run()` below.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from cachegate.core import SETTINGS, Config, ConfigError, load_config
from cachegate.service._malloc import bound_allocator
from cachegate.service._server import ServerStartError, load_security

if TYPE_CHECKING:
    from cachegate.service._http import HttpSidePort
    from cachegate.service._metrics import ServerMetrics
    from cachegate.service._server import CacheServer

__all__ = ["Service", "build_service", "main", "run"]

log = logging.getLogger("cachegate")

# LogRecord attributes that are not "extra" fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _help_epilog() -> str:
    width = max(len(s.name) for s in SETTINGS)
    lines = ["environment variables (default in brackets):"]
    for setting in SETTINGS:
        default = setting.default if setting.default != "" else "unset"
        lines.append(f"  {setting.name:<{width}}  {setting.help} [{default}]")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="cachegate-server",
        description="Serve the cachegate.v1 cache API over gRPC, in front of Redis. "
        "Configured by environment variables only.",
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@dataclass
class Service:
    """One process's servers: gRPC, its metrics, and the HTTP side port (if any)."""

    server: CacheServer
    port: int
    metrics: ServerMetrics
    http: HttpSidePort | None

    def start(self) -> None:
        self.server.start()
        if self.http is not None:
            self.http.start()

    def stop(self, grace: float | None = None) -> None:
        """gRPC first (NOT_SERVING, grace, pool closed), then the side port."""
        self.server.stop(grace)
        if self.http is not None:
            self.http.stop()


def build_service(config: Config, *, worker_id: int = 0, workers: int = 1) -> Service:
    """Build (not start) the gRPC server with metrics and the side port.

    Raises AddressInUseError or HttpListenError (both OSError) when an address is
    taken; nothing is left open then.
    """
    from cachegate.pool import RedisConnectionPool
    from cachegate.service._http import HttpSidePort
    from cachegate.service._metrics import ServerMetrics
    from cachegate.service._server import create_server

    pool = RedisConnectionPool(config)
    metrics = ServerMetrics(pool, worker_id=worker_id, workers=workers)
    try:
        server, port = create_server(
            config,
            pool=pool,
            reuse_port=workers > 1,
            worker_id=worker_id,
            workers=workers,
            observer=metrics.observer,
        )
    except BaseException:
        pool.close()
        raise
    http = None
    if config.server.http_listen is not None:
        try:
            http = HttpSidePort(
                config.server.http_listen, registry=metrics.registry, health=pool.health_check
            )
        except OSError:
            server.stop(grace=0)
            raise
    return Service(server, port, metrics, http)


def install_stop_handlers() -> threading.Event:
    """SIGTERM and SIGINT set the returned event (main thread only)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def run(
    config: Config,
    *,
    worker_id: int = 0,
    workers: int = 1,
    stop: threading.Event | None = None,
) -> int:
    """Run one server process until `stop` is set (by default: SIGTERM/SIGINT)."""
    if stop is None:
        stop = install_stop_handlers()
    try:
        service = build_service(config, worker_id=worker_id, workers=workers)
    except OSError as exc:  # AddressInUseError, HttpListenError
        log.error("cannot start", extra={"reason": str(exc)})
        return 1
    except ServerStartError as exc:  # an unusable tokens or certificate file
        log.error("cannot start", extra={"reason": str(exc)})
        return 2
    service.start()
    log.info(
        "serving",
        extra={
            "listen": config.server.listen,
            "port": service.port,
            "http_port": service.http.port if service.http is not None else None,
            "backend": config.backend,
            "redis": config.redis.redacted_url if config.backend != "memory" else "embedded",
            "max_connections": config.pool.max_connections,
        },
    )
    stop.wait()
    log.info("shutting down", extra={"grace_seconds": config.server.grace_seconds})
    service.stop()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    from prometheus_client import disable_created_metrics

    from cachegate.service._workers import (
        Supervisor,
        available_cpus,
        check_worker_mode,
        plan_workers,
    )

    _parser().parse_args(argv)
    try:
        config = load_config(os.environ if env is None else env)
    except ConfigError as exc:
        print(f"cachegate-server: configuration error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config.server.log_level)
    bound_allocator()  # before any worker is forked (see _malloc.py)
    try:
        load_security(config, credentials=False)  # once, before any worker exists
    except ServerStartError as exc:
        print(f"cachegate-server: cannot start: {exc}", file=sys.stderr)
        return 2
    # Counters' *_created series double /metrics for no use on a Prometheus server.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    cpus = available_cpus()
    plan = plan_workers(config, cpus)
    plan.log()
    if plan.workers == 1:
        # One process: keep its threads on one CPU. A Python process whose threads
        # hop between CPUs pays for every GIL hand-off (measured here: ~2x the CPU
        # per call); Redis and the kernel have the other CPUs.
        if len(cpus) > 1 and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, {cpus[0]})
                log.info("pinned to one CPU", extra={"cpu": cpus[0]})
            except OSError as exc:
                log.warning("cannot pin to a CPU", extra={"reason": str(exc)})
        return run(config)
    # Import (never build) what the workers run before forking: they share the
    # modules and start at once. Importing grpc creates no thread and no gRPC object.
    import cachegate.service._http
    import cachegate.service._metrics
    import cachegate.service._server  # noqa: F401

    try:
        check_worker_mode(config, plan)
    except ConfigError as exc:
        print(f"cachegate-server: configuration error: {exc}", file=sys.stderr)
        return 2
    return Supervisor(config, plan, run).run()


if __name__ == "__main__":
    sys.exit(main())
