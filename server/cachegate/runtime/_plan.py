"""The worker plan: how many processes serve the port, and what each one gets.

A CPython process serves gRPC on about one core (the GIL); to use every core,
`cachegate-server` runs workers that each bind the same port with SO_REUSEPORT
(the supervisor, `_supervisor.py`, forks and watches them). Before any of them
exists, the plan decides:

- how many workers (CACHEGATE_WORKERS, 0 = one per CPU the process may use:
  the smaller of the affinity set and the cgroup CPU quota, `_cpus.py`, and no more
  than the memory the process may use holds, `_memory.py`), and how
  many Redis connections each (REDIS_MAX_CONNECTIONS // workers, so the total
  never exceeds it; never more workers than connections; ONE worker for the
  embedded memory backend, whose data lives in one process);
- each worker's memory budget and stale copy, unless set: its part of the memory
  the process may use, at most the defaults (`_memory.py`);
- each worker's config: its share of connections, of the CPU and of the memory, and
  its own HTTP side port (when on, each serves its own /metrics and /health/redis on
  `http port + worker id`);
- which settings make sense for one process but not for several (port 0);
- that no OTHER server holds an address (`ensure_free`: a plain bind without
  SO_REUSEPORT), since SO_REUSEPORT would otherwise let a second cachegate share it
  silently.

With CACHEGATE_PIN_CPUS=1 each worker pins itself to one CPU (round robin over the
allowed CPUs, `pin_to`); by default none does: on a shared machine every cachegate
would pin itself to the same lowest-numbered CPUs.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from dataclasses import dataclass, replace

from cachegate.core import REPLY_COPIES, Config, ConfigError, parse_address
from cachegate.runtime._cpus import CpuQuota, process_cpu_share, worker_count
from cachegate.runtime._memory import (
    WORKER_BASE_BYTES,
    MemoryLimit,
    MemoryShares,
    memory_shares,
    workers_that_fit,
)

__all__ = [
    "ListenError",
    "WorkerPlan",
    "check_worker_mode",
    "ensure_free",
    "pin_to",
    "plan_workers",
    "worker_config",
    "worker_http_listen",
]

# The supervisor logs under the same name: one logger for the workers' story.
log = logging.getLogger("cachegate.workers")


class ListenError(OSError):
    """An address the workers need is taken by another process."""


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """How many workers run, and how many Redis connections each may open."""

    workers: int
    max_connections_each: int
    requested: int
    explicit: bool  # CACHEGATE_WORKERS was set (not 0 = one per CPU)
    cpus: tuple[int, ...]
    reason: str
    memory: MemoryShares  # each worker's memory budget and stale copy, and the limit
    quota_cpus: float | None = None  # the cgroup CPU quota, in CPUs (None: no quota)
    cpu_share: float = 1.0  # the CPU each worker may use (process_cpu_share)
    cpu_period: float = 0.0  # the quota's period in seconds (0: no quota)
    pin: bool = False  # CACHEGATE_PIN_CPUS: each worker pinned to one CPU

    def cpu_of(self, worker_id: int) -> int | None:
        """The CPU worker `worker_id` pins itself to, or None (pinning is off)."""
        return self.cpus[worker_id % len(self.cpus)] if self.pin else None

    def log(self) -> None:
        # A warning only when the operator asked for more workers than they get.
        level = logging.WARNING if self.explicit and self.workers < self.requested else logging.INFO
        memory = self.memory
        limit = memory.limit
        log.log(
            level,
            self.reason,
            extra={
                "workers": self.workers,
                "requested_workers": self.requested,
                "cpus": len(self.cpus),
                "cpu_quota": self.quota_cpus,
                "cpu_share_each": round(self.cpu_share, 3),
                "pinned": self.pin,
                "max_connections_each": self.max_connections_each,
                "max_connections_total": self.max_connections_each * self.workers,
                "memory_limit_mib": limit.mib if limit is not None else None,
                "memory_limit_from": limit.source if limit is not None else None,
                "memory_budget_bytes_each": memory.budget,
                "memory_budget_from": "set" if memory.budget_set else "default",
                "stale_copy_bytes_each": memory.stale_copy,
                "stale_copy_from": "set" if memory.stale_copy_set else "default",
            },
        )
        if not memory.fits and limit is not None:
            log.warning(
                f"{self.workers} workers of up to {_mib(memory.per_worker)} MiB each (base "
                f"{_mib(WORKER_BASE_BYTES)}, memory budget {_mib(memory.budget)}, stale copy "
                f"{_mib(memory.stale_copy)}) pass the memory limit of {limit.mib} MiB "
                f"({limit.source}): under heavy load the kernel may kill workers; give the "
                "process more memory, or set fewer CACHEGATE_WORKERS, a smaller "
                "CACHEGATE_MEMORY_BUDGET_BYTES or CACHEGATE_STALE_COPY_BYTES where set, or a "
                "smaller CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES (the budget holds at least "
                f"{REPLY_COPIES} copies of a reply of that size)",
                extra={
                    "workers": self.workers,
                    "memory_limit_mib": limit.mib,
                    "memory_each_mib": _mib(memory.per_worker),
                },
            )


def plan_workers(
    config: Config,
    cpus: list[int],
    quota: CpuQuota | None = None,
    memory: MemoryLimit | None = None,
) -> WorkerPlan:
    """Decide the worker count and each worker's share of REDIS_MAX_CONNECTIONS and
    of the memory.

    `cpus`: the affinity set (`available_cpus()`); `quota`: the cgroup CPU quota
    (`read_cpu_quota()`); `memory`: what the process may use (`memory_ceiling()`; None:
    unknown, the memory defaults apply as they are). By default one worker per CPU the
    process may use, as many as the memory holds.
    """
    by_cpu = worker_count(len(cpus), quota)
    by_memory = workers_that_fit(memory, config.limits)
    requested = config.server.workers or min(by_cpu, by_memory or by_cpu)
    max_connections = config.pool.max_connections
    if config.backend == "memory":
        workers = 1
        reason = (
            "one worker: the embedded memory backend lives in one process, "
            "so every client sees the same data"
        )
    elif requested > max_connections:
        workers = max_connections
        reason = (
            f"{workers} workers instead of {requested}: REDIS_MAX_CONNECTIONS={max_connections} "
            "gives each worker at least one connection"
        )
    else:
        workers = requested
        reason = (
            "one process, no supervisor"
            if workers == 1
            else f"{workers} worker processes share the port, "
            f"{max_connections // workers} Redis connections each"
        )
        if memory is not None and workers < by_cpu and not config.server.workers:
            reason += (
                f": {workers} instead of one per CPU ({by_cpu}), as many as the memory "
                f"limit of {memory.mib} MiB ({memory.source}) holds"
            )
    return WorkerPlan(
        workers=workers,
        max_connections_each=max_connections // workers,
        requested=requested,
        explicit=config.server.workers > 0,
        cpus=tuple(cpus) or (0,),
        reason=reason,
        memory=memory_shares(config.limits, memory, workers),
        quota_cpus=quota.cpus if quota is not None else None,
        cpu_share=process_cpu_share(len(cpus), quota, workers),
        cpu_period=quota.period if quota is not None else 0.0,
        pin=config.server.pin_cpus,
    )


def worker_http_listen(config: Config, worker_id: int) -> str | None:
    """Worker `worker_id`'s side port: CACHEGATE_HTTP_LISTEN + its id (None: off)."""
    if config.server.http_listen is None:
        return None
    side = parse_address(config.server.http_listen, listen=True)
    return str(replace(side, port=side.port + worker_id))


def check_worker_mode(config: Config, plan: WorkerPlan) -> None:
    """Settings that make sense for one process but not for several: ConfigError."""
    n = plan.workers
    port = parse_address(config.server.listen, listen=True).port
    if port == 0:
        raise ConfigError(
            f"CACHEGATE_LISTEN={config.server.listen!r}: port 0 cannot be shared by {n} "
            "workers (each would get its own port); choose a port or set CACHEGATE_WORKERS=1"
        )
    if config.server.http_listen is not None:
        http_port = parse_address(config.server.http_listen, listen=True).port
        if http_port == 0:
            raise ConfigError(
                f"CACHEGATE_HTTP_LISTEN={config.server.http_listen!r}: port 0 with {n} workers "
                "(each serves port + worker id); choose a port, 'off', or CACHEGATE_WORKERS=1"
            )
        if http_port + n - 1 > 65535:
            raise ConfigError(
                f"CACHEGATE_HTTP_LISTEN={config.server.http_listen!r}: workers use ports "
                f"{http_port}..{http_port + n - 1}, beyond 65535"
            )


def worker_config(config: Config, plan: WorkerPlan, worker_id: int) -> Config:
    """Worker `worker_id`'s config: its share of connections, of the CPU and of the
    memory, its own side port. (The single process of a one-worker plan runs worker
    0's config.)"""
    return replace(
        config,
        pool=replace(config.pool, max_connections=plan.max_connections_each),
        limits=replace(
            config.limits,
            memory_budget_bytes=plan.memory.budget,
            stale_copy_bytes=plan.memory.stale_copy,
        ),
        server=replace(
            config.server,
            workers=plan.workers,
            http_listen=worker_http_listen(config, worker_id),
            cpu_share=plan.cpu_share,
            cpu_period=plan.cpu_period,
        ),
    )


def ensure_free(listen: str, what: str) -> None:
    """Raise ListenError if another socket listens on `listen`.

    A plain bind without SO_REUSEPORT fails against any listener, ours or not,
    with or without SO_REUSEPORT. SO_REUSEADDR is set so that connections of a
    previous run lingering in TIME_WAIT do not count (gRPC sets it as well).
    """
    where = parse_address(listen, listen=True)
    try:
        infos = socket.getaddrinfo(
            where.host, where.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {listen} ({what}): {exc}") from exc
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                probe.listen(1)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ListenError(
                        f"cannot listen on {listen} ({what}): address already in use"
                    ) from exc
                errors.append(exc)
    if errors and len(errors) == len(infos):
        raise ListenError(f"cannot listen on {listen} ({what}): {errors[0]}") from errors[0]


def pin_to(cpu: int) -> None:
    """Pin this process to `cpu` (CACHEGATE_PIN_CPUS=1); a refusal is logged, not fatal."""
    if not hasattr(os, "sched_setaffinity"):
        return
    try:
        os.sched_setaffinity(0, {cpu})
        log.info("pinned to one CPU", extra={"cpu": cpu})
    except OSError as exc:
        log.warning("cannot pin to a CPU", extra={"cpu": cpu, "reason": str(exc)})


def _mib(size: int) -> float:
    return round(size / (1024 * 1024), 1)
