"""`cachegate-server`: the entry point. The only module that reads the environment.

Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for a bad setting
(one line naming the variable, or an unusable tokens/certificate file), 1 when the
server cannot start (port taken) or, in worker mode, when a worker failed its first
start in another way or did not stop in time. Workers that die later are restarted
(`_supervisor.py`): deaths never end the supervisor.

One process serves when one worker is planned (CACHEGATE_WORKERS=1, one CPU or a CPU
quota of one CPU or less, or the embedded memory backend: `_plan.py`); otherwise a supervisor
forks the workers (`_supervisor.py`) before any gRPC object exists, and each worker runs
`run()` below.
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
from types import FrameType
from typing import TYPE_CHECKING

from cachegate.core import SETTINGS, Config, ConfigError, load_config
from cachegate.rpc._server import ServerStartError, load_security
from cachegate.runtime._malloc import bound_allocator

if TYPE_CHECKING:
    from cachegate.runtime._board import WorkerBoard

__all__ = ["main", "run"]

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
    board: WorkerBoard | None = None,
) -> int:
    """Run one server process until `stop` is set (by default: SIGTERM/SIGINT).

    Returns the exit code: 0 after a clean stop, 1 when an address is taken, 2 for an
    unusable tokens or certificate file. In worker mode the supervisor treats 1 and 2
    from a worker's first start, before it served, as a start-up error (it stops).
    """
    from cachegate.runtime._compose import build_service

    if stop is None:
        stop = install_stop_handlers()
    try:
        service = build_service(config, worker_id=worker_id, workers=workers, board=board)
    except OSError as exc:  # AddressInUseError, HttpListenError
        log.error("cannot start", extra={"reason": str(exc)})
        return 1
    except ServerStartError as exc:  # an unusable tokens or certificate file
        log.error("cannot start", extra={"reason": str(exc)})
        return 2
    service.start()
    if board is not None:
        board.serving()
    log.info(
        "serving",
        extra={
            "listen": config.server.listen,
            "port": service.port,
            "http_port": service.http.port if service.http is not None else None,
            "backend": config.backend,
            "redis": config.backend_target,  # password masked
            "backend_chosen_by": config.backend_chosen_by,
            "max_connections": config.pool.max_connections,
            # This process's own figures (the plan's, or the operator's where set).
            "memory_budget_bytes": config.limits.memory_budget_bytes,
            "stale_copy_bytes": config.limits.stale_copy_bytes,
        },
    )
    stop.wait()
    log.info("shutting down", extra={"grace_seconds": config.server.grace_seconds})
    # The process ends right after us (a worker calls os._exit, the single process
    # exits through main()): grpc's own stop is left out, see CacheServer.
    service.stop(exiting=True)
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    from prometheus_client import disable_created_metrics

    from cachegate.runtime._cpus import available_cpus, read_cpu_quota
    from cachegate.runtime._memory import memory_ceiling, physical_memory, read_memory_limit
    from cachegate.runtime._plan import check_worker_mode, pin_to, plan_workers, worker_config
    from cachegate.runtime._supervisor import Supervisor

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
    memory = memory_ceiling(read_memory_limit(), physical_memory())
    plan = plan_workers(config, cpus, read_cpu_quota(), memory)
    plan.log()
    if plan.workers == 1:
        # CACHEGATE_PIN_CPUS=1: keep the process's threads on one CPU. A Python process
        # whose threads hop between CPUs pays for GIL hand-offs (docs/performance.md);
        # off by default: on a shared machine every process would pick the same CPU.
        cpu = plan.cpu_of(0)
        if cpu is not None and len(cpus) > 1:
            pin_to(cpu)
        code = run(worker_config(config, plan, 0))
        # Straight out, like a worker: the interpreter's teardown would collect the
        # gRPC server, whose collection starts grpc's own stop, and that ends calls
        # that arrive meanwhile with CANCELLED (see CacheServer).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    # Import (never build) what the workers run before forking: they share the
    # modules and start at once. Importing grpc creates no thread and no gRPC object.
    import cachegate.runtime._compose  # noqa: F401

    try:
        check_worker_mode(config, plan)
    except ConfigError as exc:
        print(f"cachegate-server: configuration error: {exc}", file=sys.stderr)
        return 2
    return Supervisor(config, plan, run).run()


if __name__ == "__main__":
    sys.exit(main())
