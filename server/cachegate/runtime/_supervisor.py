"""The supervisor: forks the workers of a plan (`_plan.py`), watches, restarts and stops them.

The supervisor:

- checks, before forking, that no other server holds the addresses the workers
  need (`ensure_free`);
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

This module creates no gRPC object; the worker body is passed in (`main.run`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Protocol

from cachegate.core import Config
from cachegate.runtime._board import Board, WorkerBoard
from cachegate.runtime._plan import (
    ListenError,
    WorkerPlan,
    ensure_free,
    pin_to,
    worker_config,
    worker_http_listen,
)
from cachegate.runtime._restarts import RestartPolicy

__all__ = ["PARENT_CHECK_INTERVAL", "STARTUP_EXIT_CODES", "STOP_SLACK", "Supervisor", "WorkerBody"]

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
            listen = worker_http_listen(self._config, worker_id)
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
