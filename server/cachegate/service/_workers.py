"""Worker processes: N servers sharing one gRPC port with SO_REUSEPORT, one per CPU.

A CPython process serves gRPC on about one core (the GIL); to use every core,
`cachegate-server` forks workers that each bind the same port with SO_REUSEPORT,
so the kernel spreads incoming connections over them. The supervisor:

- plans: how many workers (CACHEGATE_WORKERS, 0 = one per allowed CPU), and how
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
  (health NOT_SERVING, server.stop(grace), pool.close(), exit 0), and exits 0
  when every worker exited 0;
- restarts a worker that dies unexpectedly, at most `RESTART_LIMIT` times per
  `RESTART_WINDOW` seconds; beyond that it stops everything and exits 1.

A worker whose supervisor is gone (SIGKILL, OOM killer) notices within
`PARENT_CHECK_INTERVAL` and stops gracefully, so no orphan keeps the port.

Each worker pins itself to one CPU (round robin over the allowed CPUs) and, when
the HTTP side port is on, serves its own /metrics and /health/redis on
`http port + worker id`.

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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType
from typing import Protocol

from cachegate.core import Config, ConfigError

__all__ = [
    "RESTART_LIMIT",
    "RESTART_WINDOW",
    "ListenError",
    "RestartBudget",
    "Supervisor",
    "WorkerPlan",
    "available_cpus",
    "check_worker_mode",
    "ensure_free",
    "plan_workers",
    "worker_config",
]

log = logging.getLogger("cachegate.workers")

RESTART_LIMIT = 5
"""Unexpected worker deaths tolerated (each followed by a restart) per window."""
RESTART_WINDOW = 60.0
"""Seconds of that window."""
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
        self, config: Config, *, worker_id: int, workers: int, stop: threading.Event
    ) -> int: ...


# --- planning ------------------------------------------------------------------------


def available_cpus() -> list[int]:
    """The CPUs this process may run on (taskset/cpuset aware; CPU quotas are not CPUs)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """How many workers run, and how many Redis connections each may open."""

    workers: int
    max_connections_each: int
    requested: int
    explicit: bool  # CACHEGATE_WORKERS was set (not 0 = one per CPU)
    cpus: tuple[int, ...]
    reason: str

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
                "max_connections_each": self.max_connections_each,
                "max_connections_total": self.max_connections_each * self.workers,
            },
        )


def plan_workers(config: Config, cpus: list[int]) -> WorkerPlan:
    """Decide the worker count and each worker's share of REDIS_MAX_CONNECTIONS."""
    requested = config.server.workers or max(1, len(cpus))
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
    )


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.strip().rpartition(":")
    return host.strip("[]"), int(port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _http_listen(config: Config, worker_id: int) -> str | None:
    if config.server.http_listen is None:
        return None
    host, port = _split(config.server.http_listen)
    return _join(host, port + worker_id)


def check_worker_mode(config: Config, plan: WorkerPlan) -> None:
    """Settings that make sense for one process but not for several: ConfigError."""
    n = plan.workers
    _, port = _split(config.server.listen)
    if port == 0:
        raise ConfigError(
            f"CACHEGATE_LISTEN={config.server.listen!r}: port 0 cannot be shared by {n} "
            "workers (each would get its own port); choose a port or set CACHEGATE_WORKERS=1"
        )
    if config.server.http_listen is not None:
        _, http_port = _split(config.server.http_listen)
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
    """Worker `worker_id`'s config: its share of connections, its own side port."""
    return replace(
        config,
        pool=replace(config.pool, max_connections=plan.max_connections_each),
        server=replace(
            config.server, workers=plan.workers, http_listen=_http_listen(config, worker_id)
        ),
    )


def ensure_free(listen: str, what: str) -> None:
    """Raise ListenError if another socket listens on `listen`.

    A plain bind without SO_REUSEPORT fails against any listener, ours or not,
    with or without SO_REUSEPORT. SO_REUSEADDR is set so that connections of a
    previous run lingering in TIME_WAIT do not count (gRPC sets it as well).
    """
    host, port = _split(listen)
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
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


# --- restarts ------------------------------------------------------------------------


class RestartBudget:
    """At most `limit` restarts in any `window` seconds."""

    def __init__(
        self,
        limit: int = RESTART_LIMIT,
        window: float = RESTART_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._times: deque[float] = deque()

    def allow(self) -> bool:
        """True (and the restart is counted) when one more restart fits the budget."""
        now = self._clock()
        while self._times and now - self._times[0] >= self._window:
            self._times.popleft()
        if len(self._times) >= self._limit:
            return False
        self._times.append(now)
        return True


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
        budget: RestartBudget | None = None,
    ) -> None:
        self._config = config
        self._plan = plan
        self._body = body
        self._budget = budget or RestartBudget()
        self._children: dict[int, int] = {}  # pid -> worker id
        self._signal: int | None = None
        self._stopping = False
        self._failed = False
        self._pid = os.getpid()

    def run(self) -> int:
        """Start every worker and supervise them; returns the process exit code."""
        try:
            self._check_addresses()
        except ListenError as exc:
            log.error("cannot start", extra={"reason": str(exc)})
            return 1
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        for worker_id in range(self._plan.workers):
            if not self._spawn(worker_id):
                self._give_up()
                break
        log.info(
            "supervising",
            extra={"workers": self._plan.workers, "pids": sorted(self._children)},
        )
        deadline: float | None = None
        while self._children:
            self._reap()
            if self._signal is not None and not self._stopping:
                self._begin_stop(self._signal)
            if self._stopping and deadline is None:
                deadline = time.monotonic() + self._config.server.grace_seconds + STOP_SLACK
            if deadline is not None and time.monotonic() > deadline:
                log.error("workers did not stop in time", extra={"pids": sorted(self._children)})
                self._failed = True
                self._send(signal.SIGKILL)
                deadline = float("inf")  # SIGKILL once; the reaper collects them
            time.sleep(_POLL)
        log.info("all workers stopped", extra={"clean": not self._failed})
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
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker_id = self._children.pop(pid, None)
            if worker_id is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            fields = {"worker_id": worker_id, "pid": pid, **_describe_exit(code)}
            if self._stopping:
                log.info("worker exited", extra=fields)
                if code != 0:
                    self._failed = True
                continue
            log.error("worker died unexpectedly", extra=fields)
            if not self._budget.allow():
                log.error(
                    "workers keep dying; stopping everything",
                    extra={"restart_limit": RESTART_LIMIT, "window_seconds": RESTART_WINDOW},
                )
                self._give_up()
            elif not self._spawn(worker_id):
                self._give_up()

    def _give_up(self) -> None:
        self._failed = True
        if not self._stopping:
            self._begin_stop(signal.SIGTERM)

    def _spawn(self, worker_id: int) -> bool:
        """Fork worker `worker_id`; False (logged) when the OS refuses a new process."""
        cpu = self._plan.cpus[worker_id % len(self._plan.cpus)]
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
        log.info("worker started", extra={"worker_id": worker_id, "pid": pid, "cpu": cpu})
        return True

    # --- child side ----------------------------------------------------------------

    def _worker(self, worker_id: int, cpu: int) -> int:
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
        if hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError as exc:
                log.warning("cannot pin to a CPU", extra={"cpu": cpu, "reason": str(exc)})
        config = worker_config(self._config, self._plan, worker_id)
        return self._body(config, worker_id=worker_id, workers=self._plan.workers, stop=stop)
