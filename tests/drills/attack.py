"""What the hostile-caller drills share: a gateway's processes, their memory, a bystander.

Each attack drill starts a real `cachegate-server` (usually 2 workers on a Redis
backend), attacks it from this process over loopback with a bounded loop, and watches:

- `MemoryWatch`: the peak VmRSS of every process of the gateway (the supervisor and
  each worker, found through /proc), sampled in a thread; a process that passes
  `kill_above_kb` is SIGKILLed the way a container's memory limit would, so a drill
  that fails never takes the machine down with it.
- `Bystander`: another caller's unary SetEx/Get loop on its own connections while the
  attack runs; its p50/p99 and status codes say whether the attack cost it service.
- `attack_row`: the drill's row of the report, with those figures in its notes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cachegate.core import LimitSettings
from drills.attackers import run_attacker
from drills.harness import DrillRow, Gateway
from drills.load import Load, Summary, percentile, read_back, summarize

__all__ = [
    "BASE_MB",
    "BUDGET_MB",
    "BYSTANDER_P99_MS",
    "CONTAINER_LIMIT_KB",
    "RECEIVE_LIMIT",
    "Bystander",
    "MemoryWatch",
    "assert_withstood",
    "attack_in_phases",
    "attack_row",
    "cpu_seconds",
    "gateway_pids",
    "lost_writes",
    "rss_kb",
    "thread_count",
    "tokens_file",
    "workers_env",
]

CONTAINER_LIMIT_KB = 3 * 1024 * 1024
"""The drills' stand-in for a container memory limit: a process past 3 GB is killed."""

BUDGET_MB = 128  # CACHEGATE_MEMORY_BUDGET_BYTES's default
# A worker's own memory before any request: the interpreter, grpc, protobuf, redis-py
# (and fakeredis with its data on the memory backend), measured at 60-75 MB; allowing
# for allocator slack.
BASE_MB = 110

RECEIVE_LIMIT = LimitSettings().max_receive_message_bytes
"""CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES's default: the largest message grpc takes in
whole (a larger one is refused as it arrives), so the largest an attack can make a
worker receive and copy."""

BYSTANDER_P99_MS = 50.0
"""Issue 12's bound on another caller's unary p99 while an attack runs."""


def rss_kb(pid: int) -> int | None:
    """VmRSS of `pid` in kB, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def thread_count(pid: int) -> int:
    """Threads of `pid` (0 when the process is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found.extend(int(child) for child in text.split())
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of `pids` so far, in seconds (all their threads; a process
    that is gone counts 0)."""
    ticks = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def gateway_pids(gateway: Gateway) -> list[int]:
    """The gateway's process and its direct children (the workers, in worker mode)."""
    return [gateway.pid, *_children(gateway.pid)]


def lost_writes(gateway: Gateway, acked: dict[str, bytes]) -> list[str]:
    """Acknowledged writes the gateway no longer returns (read_back); when it cannot
    answer at all (dead, breaker open), one entry saying why, so the drill still
    reports its figures and then fails."""
    if not gateway.alive():
        return ["(gateway dead)"]
    try:
        return read_back(gateway.target, acked)
    except AssertionError as exc:
        return [f"(unreadable: {str(exc)[:120]})"]


def workers_env(redis_url: str, workers: int = 2, **extra: str) -> dict[str, str]:
    """The environment of an attacked gateway: `workers` processes on a Redis backend."""
    return {
        "CACHEGATE_BACKEND": "redis",
        "REDIS_URL": redis_url,
        "CACHEGATE_WORKERS": str(workers),
        **extra,
    }


class MemoryWatch:
    """Samples the RSS of every process of a gateway; SIGKILLs one past `kill_above_kb`."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        interval: float = 0.05,
        max_seconds: float = 120.0,
        kill_above_kb: int = CONTAINER_LIMIT_KB,
        also: Sequence[int] = (),
    ) -> None:
        self._gateway = gateway
        # Other processes the attack can grow (a redis-server): watched and guarded alike.
        self._also = tuple(also)
        self._interval = interval
        self._max_seconds = max_seconds
        self._kill_above_kb = kill_above_kb
        self._stop = threading.Event()
        self.peak_kb: dict[int, int] = {}
        self.start_kb: dict[int, int] = {}
        self.killed: list[int] = []
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)

    def _sample(self) -> None:
        for pid in (*gateway_pids(self._gateway), *self._also):
            value = rss_kb(pid)
            if value is None:
                continue
            self.start_kb.setdefault(pid, value)
            self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), value)
            if value > self._kill_above_kb and pid not in self.killed:
                self.killed.append(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _run(self) -> None:
        end = time.monotonic() + self._max_seconds
        while not self._stop.is_set() and time.monotonic() < end:
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> MemoryWatch:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(self._max_seconds + 5)
        self._sample()

    @property
    def worker_peaks_mb(self) -> dict[int, float]:
        """Peak RSS in MB per process other than the supervisor (all of them when the
        gateway runs as one process); the `also` processes are not workers."""
        mine = {p: kb for p, kb in self.peak_kb.items() if p not in self._also}
        peaks = {pid: kb / 1024 for pid, kb in mine.items() if pid != self._gateway.pid}
        return peaks or {pid: kb / 1024 for pid, kb in mine.items()}

    def peak_mb(self, pid: int) -> float:
        """Peak RSS in MB of one watched process (e.g. one passed as `also`)."""
        return self.peak_kb.get(pid, 0) / 1024

    @property
    def max_worker_mb(self) -> float:
        return max(self.worker_peaks_mb.values(), default=0.0)

    def text(self) -> str:
        peaks = " ".join(f"{mb:.0f}" for _, mb in sorted(self.worker_peaks_mb.items()))
        killed = f" KILLED={len(self.killed)}" if self.killed else ""
        return f"peak RSS/worker MB=[{peaks}]{killed}"


class Bystander:
    """Another tenant's unary traffic during an attack: SetEx then Get of its own keys,
    `threads` connections, bounded by `max_seconds` and `max_requests`."""

    def __init__(
        self,
        target: str,
        *,
        threads: int = 2,
        max_seconds: float = 30.0,
        max_requests: int = 200_000,
        pace: float = 0.002,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.load = Load(
            target,
            "bystander",
            threads=threads,
            inflight=1,
            pace=pace,
            max_seconds=max_seconds,
            max_requests=max_requests,
            metadata=metadata,
        )

    def __enter__(self) -> Bystander:
        self.load.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.load.__exit__(exc_type, exc, tb)

    @property
    def summary(self) -> Summary:
        return summarize(self.load.records)

    def p50_ms(self) -> float:
        return percentile([r.latency for r in self.load.records], 50) * 1000

    def p99_ms(self) -> float:
        return percentile([r.latency for r in self.load.records], 99) * 1000

    def during(self, start: float, stop: float) -> tuple[float, int]:
        """(p99 in ms, count) of the calls that started within [start, stop): one
        phase of an attack, not diluted by the calls of the others."""
        latencies = [r.latency for r in self.load.records_since(start) if r.start < stop]
        return percentile(latencies, 99) * 1000, len(latencies)

    def text(self) -> str:
        summary = self.summary
        return (
            f"bystander n={summary.sent} p50={self.p50_ms():.1f}ms p99={self.p99_ms():.1f}ms "
            f"codes: OK={summary.ok} {summary.failed_text}"
        )


Phase = tuple[dict[str, Any], float, int]
"""One phase of an attack: the attacker's result, and the bystander's p99 (ms) and
calls during it alone."""


def attack_in_phases(
    bystander: Bystander, kind: str, target: str, sizes: Sequence[int], *args: str
) -> list[Phase]:
    """Attack `kind` once per size in `sizes` (its `--bytes`), each with `args`, one
    after another while `bystander` runs; each phase's result and bystander figures."""
    phases = []
    for size in sizes:
        start = time.monotonic()
        result = run_attacker(kind, target, *args, "--bytes", str(size))
        phases.append((result, *bystander.during(start, time.monotonic())))
    return phases


def assert_withstood(
    memory: MemoryWatch, gateway: Gateway, workers_before: list[int], workers_after: list[int]
) -> None:
    """What an attack drill asserts first: no process passed the 3 GB guard, the gateway
    and each of its workers lived through it, and each worker's peak RSS stayed within
    the memory budget plus the base."""
    assert not memory.killed, f"killed at the 3 GB guard: {memory.killed}"
    assert gateway.alive(), "the gateway died"
    assert workers_after == workers_before, "a worker died"
    peak = memory.max_worker_mb
    assert peak <= BUDGET_MB + BASE_MB, f"peak RSS {peak:.0f} MB > {BUDGET_MB} + {BASE_MB}"


def attack_row(
    drill: str,
    bystander: Bystander,
    memory: MemoryWatch | None,
    *,
    lost: int | None,
    notes: str = "",
) -> DrillRow:
    """The report row of an attack: the bystander's figures, peak RSS and the drill's notes."""
    parts = [notes, bystander.text()]
    if memory is not None:
        parts.append(memory.text())
    return DrillRow.of(
        drill,
        bystander.summary,
        lost=lost,
        breaker="-",
        recover_s=None,
        notes="; ".join(part for part in parts if part),
    )


def tokens_file(folder: Path, tokens: Mapping[str, str]) -> Path:
    """A CACHEGATE_TOKENS_FILE giving each tenant of `tokens` (tenant -> token) a client token."""
    path = folder / "tokens"
    path.write_text("".join(f"{token} {tenant} client\n" for tenant, token in tokens.items()))
    return path
