"""Worker processes: N servers sharing one gRPC port with SO_REUSEPORT, one per CPU.

A CPython process serves gRPC on about one core (the GIL); to use every core,
`cachegate-server` forks workers that each bind the same port with SO_REUSEPORT,
so the kernel spreads incoming connections over them. The supervisor:

- plans: how many workers (CACHEGATE_WORKERS, 0 = one per CPU the process may use:
  the smaller of the affinity set and the cgroup CPU quota, `_cpus.py`), and how
  many Redis connections each (REDIS_MAX_CONNECTIONS // workers, so the total
  never exceeds it; never more workers than connections; ONE worker for the
  embedded memory backend, whose data lives in one process);
- checks that no OTHER server holds the port (a plain bind without SO_REUSEPORT),
  since SO_REUSEPORT would otherwise let a second cachegate share it silently;
- forks every worker BEFORE any gRPC object exists (grpc is not fork-safe; the
  supervisor imports grpc's module, which starts no thread, but never creates a
  server or channel), with SIGTERM/SIGINT blocked around fork() so a signal can
  never reach a child before it has its own handlers;
- forwards SIGTERM/SIGINT to the workers, each of which stops gracefully
  (health NOT_SERVING, new calls refused, running ones drained within the grace,
  pool.close(), exit 0), and exits 0
  when every worker exited 0;
- restarts a worker that dies unexpectedly, with backoff (`_restarts.py`:
  exponential with jitter, from 0.125..0.25 s up to 15..30 s, forgotten after a
  minute up) while the others keep serving, and logs each death with its cause
  (signal or exit code) and the worker's peak RSS (wait4's ru_maxrss). Deaths
  never make it give up the port: it exits only for a start-up error, i.e. an
  address taken (checked before forking) or a worker whose FIRST start failed
  before it served with exit code 2 (an unusable tokens or certificate file:
  the supervisor exits 2) or 1 (an address taken, a crash while building: exits
  1). A restarted worker that fails to start is restarted again with backoff;
- owns the board (`_board.py`, shared memory made before the first fork) through
  which an admin RPC served by one worker reaches every worker, and on which each
  worker says when it serves.

A worker whose supervisor is gone (SIGKILL, OOM killer) notices within
`PARENT_CHECK_INTERVAL` and stops gracefully, so no orphan keeps the port.

With CACHEGATE_PIN_CPUS=1 each worker pins itself to one CPU (round robin over the
allowed CPUs); by default none does: on a shared machine every cachegate would pin
itself to the same lowest-numbered CPUs. When the HTTP side port is on, each serves
its own /metrics and /health/redis on `http port + worker id`.

This module creates no gRPC object; the worker body is passed in (`main.run`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from types import FrameType
from typing import Protocol

from cachegate.core import Config, ConfigError, parse_address
from cachegate.runtime._board import Board, WorkerBoard
from cachegate.runtime._cpus import CpuQuota, available_cpus, process_cpu_share, worker_count
from cachegate.runtime._restarts import RestartPolicy

__all__ = [
    "STARTUP_EXIT_CODES",
    "ListenError",
    "Supervisor",
    "WorkerPlan",
    "available_cpus",
    "check_worker_mode",
    "ensure_free",
    "pin_to",
    "plan_workers",
    "worker_config",
]

log = logging.getLogger("cachegate.workers")

STARTUP_EXIT_CODES = (1, 2)
"""A worker's exit codes that, on its first start and before it served, stop the
supervisor with the same code (2: an unusable file; 1: an address taken, a crash)."""
STOP_SLACK = 10.0
"""Seconds past the grace period a worker gets to exit before it is SIGKILLed."""
PARENT_CHECK_INTERVAL = 0.5
"""How often a worker checks that its supervisor still lives."""

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_POLL = 0.05


class ListenError(OSError):
    """An address the workers need is taken by another process."""


class WorkerBody(Protocol):
    """What a worker runs (`main.run`): serve until `stop` is set; return the exit code."""

    def __call__(
        self,
        config: Config,
        *,
        worker_id: int,
        workers: int,
        stop: threading.Event,
        board: WorkerBoard | None = None,
    ) -> int: ...


# --- planning ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """How many workers run, and how many Redis connections each may open."""

    workers: int
    max_connections_each: int
    requested: int
    explicit: bool  # CACHEGATE_WORKERS was set (not 0 = one per CPU)
    cpus: tuple[int, ...]
    reason: str
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
            },
        )


def plan_workers(config: Config, cpus: list[int], quota: CpuQuota | None = None) -> WorkerPlan:
    """Decide the worker count and each worker's share of REDIS_MAX_CONNECTIONS.

    `cpus`: the affinity set (`available_cpus()`); `quota`: the cgroup CPU quota
    (`read_cpu_quota()`). By default one worker per CPU the process may use.
    """
    requested = config.server.workers or worker_count(len(cpus), quota)
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
    return WorkerPlan(
        workers=workers,
        max_connections_each=max_connections // workers,
        requested=requested,
        explicit=config.server.workers > 0,
        cpus=tuple(cpus) or (0,),
        reason=reason,
        quota_cpus=quota.cpus if quota is not None else None,
        cpu_share=process_cpu_share(len(cpus), quota, workers),
        cpu_period=quota.period if quota is not None else 0.0,
        pin=config.server.pin_cpus,
    )


def _http_listen(config: Config, worker_id: int) -> str | None:
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
    """Worker `worker_id`'s config: its share of connections and of the CPU, its own
    side port. (The single process of a one-worker plan runs worker 0's config.)"""
    return replace(
        config,
        pool=replace(config.pool, max_connections=plan.max_connections_each),
        server=replace(
            config.server,
            workers=plan.workers,
            http_listen=_http_listen(config, worker_id),
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


# --- the supervisor ------------------------------------------------------------------


class _WorkerTag(logging.Filter):
    """Adds `worker` to every log record of a worker process."""

    def __init__(self, worker_id: int) -> None:
        super().__init__()
        self._worker_id = worker_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._worker_id
        return True


def _describe_exit(code: int) -> dict[str, object]:
    if code < 0:
        with contextlib.suppress(ValueError):
            return {"signal": signal.Signals(-code).name}
        return {"signal": -code}
    return {"exit_code": code}


class Supervisor:
    """Forks, watches, restarts and stops the workers (the parent process only)."""

    def __init__(
        self,
        config: Config,
        plan: WorkerPlan,
        body: WorkerBody,
        *,
        policy: RestartPolicy | None = None,
    ) -> None:
        self._config = config
        self._plan = plan
        self._body = body
        self._policy = policy or RestartPolicy()
        self._board: Board | None = None  # made in run(), before the first fork
        self._children: dict[int, int] = {}  # pid -> worker id
        self._started_at: dict[int, float] = {}  # pid -> monotonic start
        self._restarts: dict[int, float] = {}  # worker id -> when to start it again
        self._first_start: set[int] = set()  # worker ids whose first start is running
        self._signal: int | None = None
        self._stopping = False
        self._failed = False
        self._exit_code = 0
        self._pid = os.getpid()

    def run(self) -> int:
        """Start every worker and supervise them; returns the process exit code."""
        try:
            self._check_addresses()
        except ListenError as exc:
            log.error("cannot start", extra={"reason": str(exc)})
            return 1
        self._board = Board(self._plan.workers)
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        for worker_id in range(self._plan.workers):
            if not self._spawn(worker_id):
                self._start_failed(1)
                break
            self._first_start.add(worker_id)
        log.info(
            "supervising",
            extra={"workers": self._plan.workers, "pids": sorted(self._children)},
        )
        deadline: float | None = None
        while self._children or (self._restarts and not self._stopping):
            self._reap()
            if self._signal is not None and not self._stopping:
                self._begin_stop(self._signal)
            if self._stopping:
                self._restarts.clear()
            else:
                self._restart_due()
                for worker_id, forced, generation in self._board.handle_requests():
                    log.info(
                        "breaker command for every worker",
                        extra={
                            "from_worker": worker_id,
                            "forced": forced.name.lower(),
                            "generation": generation,
                        },
                    )
            if self._stopping and deadline is None:
                deadline = time.monotonic() + self._config.server.grace_seconds + STOP_SLACK
            if deadline is not None and time.monotonic() > deadline:
                log.error("workers did not stop in time", extra={"pids": sorted(self._children)})
                self._failed = True
                self._send(signal.SIGKILL)
                deadline = float("inf")  # SIGKILL once; the reaper collects them
            time.sleep(_POLL)
        log.info("all workers stopped", extra={"clean": not self._failed})
        if self._exit_code:
            return self._exit_code
        return 1 if self._failed else 0

    # --- parent side ---------------------------------------------------------------

    def _check_addresses(self) -> None:
        ensure_free(self._config.server.listen, "CACHEGATE_LISTEN")
        for worker_id in range(self._plan.workers):
            listen = _http_listen(self._config, worker_id)
            if listen is not None:
                ensure_free(listen, f"CACHEGATE_HTTP_LISTEN + {worker_id} for worker {worker_id}")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            self._send(signum)  # a second Ctrl-C reaches the workers too
        self._signal = signum

    def _begin_stop(self, signum: int) -> None:
        self._stopping = True
        log.info(
            "stopping workers",
            extra={"signal": signal.Signals(signum).name, "pids": sorted(self._children)},
        )
        self._send(signum)

    def _send(self, signum: int) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker_id = self._children.pop(pid, None)
            if worker_id is None:
                continue
            started = self._started_at.pop(pid, time.monotonic())
            served = self._board.exited(worker_id) if self._board is not None else True
            first = worker_id in self._first_start
            self._first_start.discard(worker_id)
            code = os.waitstatus_to_exitcode(status)
            fields: dict[str, object] = {
                "worker_id": worker_id,
                "pid": pid,
                **_describe_exit(code),
                # ru_maxrss is in KiB on Linux: the worker's peak resident memory.
                "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
                "uptime_seconds": round(time.monotonic() - started, 3),
                "served": served,
            }
            if self._stopping:
                log.info("worker exited", extra=fields)
                if code != 0:
                    self._failed = True
                continue
            if first and not served and code in STARTUP_EXIT_CODES:
                log.error("worker failed to start; stopping everything", extra=fields)
                self._start_failed(code)
                continue
            self._schedule_restart(worker_id, fields)

    def _schedule_restart(
        self, worker_id: int, fields: dict[str, object], why: str = "worker died unexpectedly"
    ) -> None:
        restart = self._policy.died(worker_id)
        self._restarts[worker_id] = restart.due
        log.error(
            why,
            extra={
                **fields,
                "deaths_in_a_row": restart.deaths_in_a_row,
                "restart_in_seconds": round(restart.delay, 3),
            },
        )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for worker_id, due in sorted(self._restarts.items()):
            if due > now:
                continue
            del self._restarts[worker_id]
            if not self._spawn(worker_id):  # the OS refused a process: try again later
                self._schedule_restart(
                    worker_id, {"worker_id": worker_id}, "cannot restart the worker yet"
                )

    def _start_failed(self, code: int) -> None:
        """A start-up error: stop the others and exit with `code` (1 or 2)."""
        self._failed = True
        self._exit_code = self._exit_code or code
        if not self._stopping:
            self._begin_stop(signal.SIGTERM)

    def _spawn(self, worker_id: int) -> bool:
        """Fork worker `worker_id`; False (logged) when the OS refuses a new process."""
        cpu = self._plan.cpu_of(worker_id)
        if self._board is not None:
            self._board.forking(worker_id)
        # Blocked across fork(): the child unblocks them once its own handlers are in.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                log.error(
                    "cannot fork a worker", extra={"worker_id": worker_id, "reason": str(exc)}
                )
                return False
            if pid == 0:  # the child never returns from here
                code = 1
                try:
                    code = self._worker(worker_id, cpu)
                except BaseException:
                    log.exception("worker crashed", extra={"worker_id": worker_id})
                finally:
                    with contextlib.suppress(Exception):
                        sys.stdout.flush()
                        sys.stderr.flush()
                    os._exit(code)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        self._children[pid] = worker_id
        self._started_at[pid] = time.monotonic()
        self._policy.started(worker_id)
        if self._board is not None:
            self._board.started(worker_id, pid)
        log.info("worker started", extra={"worker_id": worker_id, "pid": pid, "cpu": cpu})
        return True

    # --- child side ----------------------------------------------------------------

    def _worker(self, worker_id: int, cpu: int | None) -> int:
        supervisor = self._pid  # not getppid(): the supervisor may be gone already
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for signum in _STOP_SIGNALS:
            signal.signal(signum, on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_WorkerTag(worker_id))

        def watch_supervisor() -> None:
            # A SIGKILLed (or OOM-killed) supervisor forwards nothing: without this,
            # its workers would keep the port forever. Reparenting changes getppid().
            while not stop.wait(PARENT_CHECK_INTERVAL):
                if os.getppid() != supervisor:
                    log.error("the supervisor is gone; stopping", extra={"supervisor": supervisor})
                    stop.set()

        threading.Thread(target=watch_supervisor, name="cachegate-parent", daemon=True).start()
        if cpu is not None:
            pin_to(cpu)
        config = worker_config(self._config, self._plan, worker_id)
        board = self._board.worker(worker_id) if self._board is not None else None
        return self._body(
            config, worker_id=worker_id, workers=self._plan.workers, stop=stop, board=board
        )
