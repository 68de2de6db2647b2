"""A real `cachegate-server` process for the drills, and the rows of the drill report.

The gateway is started the way an operator starts it: the installed entry point, as a
subprocess, configured by environment variables only (CACHEGATE_WORKERS=1, listening on
127.0.0.1). Its JSON log goes to a file in the drill's tmp_path, so a failing drill can
show the server's side of the story. It is signalled only through its own PID.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from drills.load import Load, Request, Summary, make_channel, read_back, summarize
from redisprocs import RedisProcess, free_port, free_port_block

__all__ = [
    "FAILURE_THRESHOLD",
    "RECOVERY_TIMEOUT",
    "ROWS",
    "SERVER",
    "DrillRow",
    "FaultEnd",
    "Gateway",
    "Report",
    "Sampler",
    "StartGateway",
    "StartRedis",
    "Stutter",
    "breaker_delta",
    "first_success_after",
    "format_table",
    "missing_in_redis",
]

SERVER = Path(sys.executable).parent / "cachegate-server"

# The breaker settings every drill runs with, unless it says otherwise: three outage
# failures in a row open it, and it probes again after two seconds.
FAILURE_THRESHOLD = 3
RECOVERY_TIMEOUT = 2.0


StartGateway = Callable[..., "Gateway"]
"""The start_gateway fixture: start_gateway(env, *, http=False, wait=True, cgroup_procs=None)."""
StartRedis = Callable[..., RedisProcess]
"""The start_redis fixture: start_redis(extra_args=())."""
Report = Callable[["DrillRow"], None]
"""The report fixture: record this drill's row."""


def _clean_environ() -> dict[str, str]:
    """os.environ without any CACHEGATE_* / REDIS_* setting: the drill sets its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CACHEGATE_", "REDIS_"))}


class Gateway:
    """One `cachegate-server` subprocess (single worker) on free 127.0.0.1 ports."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        http: bool = False,
        cgroup_procs: Path | None = None,
    ) -> None:
        self.port = free_port()
        # Worker i serves its side port on the base + i: the whole block must be free.
        workers = int(env.get("CACHEGATE_WORKERS", "1")) or len(os.sched_getaffinity(0))
        self.http_port = free_port_block(workers) if http else None
        self.log_path = log_path
        self.env = {
            "CACHEGATE_LISTEN": f"127.0.0.1:{self.port}",
            "CACHEGATE_HTTP_LISTEN": f"127.0.0.1:{self.http_port}" if http else "off",
            "CACHEGATE_WORKERS": "1",
            "CACHEGATE_LOG_LEVEL": "INFO",
            "REDIS_FAILURE_THRESHOLD": str(FAILURE_THRESHOLD),
            "REDIS_RECOVERY_TIMEOUT": str(RECOVERY_TIMEOUT),
            **env,
        }
        command = [str(SERVER)]
        if cgroup_procs is not None:  # join the cgroup first, then become the server
            command = [
                sys.executable,
                "-c",
                f"import os; open({str(cgroup_procs)!r}, 'w').write(str(os.getpid())); "
                f"os.execv({str(SERVER)!r}, [{str(SERVER)!r}])",
            ]
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                env={**_clean_environ(), **self.env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def __repr__(self) -> str:
        return f"<Gateway pid={self.pid} 127.0.0.1:{self.port} log={self.log_path}>"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    # --- asking it things ------------------------------------------------------------

    def health(self, service: str = "", timeout: float = 2.0) -> str:
        """The health status name, or the RPC's error code name."""
        with make_channel(self.target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout
                )
            except grpc.RpcError as exc:
                return exc.code().name
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return name

    def wait_serving(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.health("", timeout=1.0) != "SERVING":
            if not self.alive():
                raise AssertionError(
                    f"{self!r} exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self!r} not SERVING after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stats(self, timeout: float = 5.0) -> pb.StatsResponse:
        with make_channel(self.target) as channel:
            reply: pb.StatsResponse = cache_pb2_grpc.CacheServiceStub(channel).Stats(
                pb.StatsRequest(), timeout=timeout
            )
        return reply

    def scrape(self) -> str:
        """The /metrics text (needs http=True)."""
        if self.http_port is None:
            raise RuntimeError("started without the HTTP side port")
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().read().decode()
        finally:
            connection.close()

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. metric("db_client_connection_count", 'state="used"')."""
        for line in self.scrape().splitlines():
            if line.startswith(name) and labels in line and not line.startswith("#"):
                head, _, value = line.rpartition(" ")
                if head.split("{", 1)[0] == name:
                    return float(value)
        raise KeyError(f"{name}{{{labels}}} not in /metrics")

    def handled_slower_than(self, le: str) -> int:
        """RPCs (all methods) the server took longer than `le` seconds to handle, from the
        grpc_server_handling_seconds histogram; `le` is a bucket bound as written there."""
        total = over_bound = 0.0
        for family in text_string_to_metric_families(self.scrape()):
            if family.name != "grpc_server_handling_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    total += sample.value
                elif sample.name.endswith("_bucket") and sample.labels.get("le") == le:
                    over_bound -= sample.value
        return int(total + over_bound)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    # --- its log ---------------------------------------------------------------------

    def logs(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "--- cachegate-server log ---\n" + "\n".join(text[-lines:])

    def transitions(self) -> list[tuple[float, str, str]]:
        """Breaker transitions from the log: (unix time, from, to)."""
        return [
            (float(e["ts"]), str(e.get("from")), str(e.get("to")))
            for e in self.logs()
            if e.get("msg") == "breaker transition"
        ]

    # --- stopping it -----------------------------------------------------------------

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit; the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class Sampler:
    """Calls `probe` every `interval` seconds in a thread, keeping (time, value) pairs;
    bounded by `max_seconds`. A probe that raises is recorded as None."""

    def __init__(self, probe: Callable[[], float], interval: float, max_seconds: float) -> None:
        self._probe = probe
        self._interval = interval
        self._max_seconds = max_seconds
        self._stop = threading.Event()
        self.samples: list[tuple[float, float | None]] = []
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + self._max_seconds
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                value: float | None = self._probe()
            except Exception:
                value = None
            self.samples.append((time.monotonic(), value))
            self._stop.wait(self._interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(self._max_seconds + 10)

    def values(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return [v for t, v in self.samples if v is not None and since <= t <= until]


class Stutter:
    """Makes Redis slow: `DEBUG SLEEP sleep` (the whole server stops answering), then
    `gap` seconds of normal service, over and over, from its own admin connection, for at
    most `max_seconds`. Counts how many sleeps it issued."""

    def __init__(self, server: RedisProcess, sleep: float, gap: float, max_seconds: float) -> None:
        self._client = server.client(socket_timeout=sleep + 5, client_name="drill-stutter")
        self._sleep = sleep
        self._gap = gap
        self._max_seconds = max_seconds
        self._stop = threading.Event()
        self.sleeps = 0
        self._thread = threading.Thread(target=self._run, name="stutter", daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + self._max_seconds
        while not self._stop.is_set() and time.monotonic() < end:
            self._client.execute_command("DEBUG", "SLEEP", self._sleep)
            self.sleeps += 1
            self._stop.wait(self._gap)

    def __enter__(self) -> Stutter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(self._max_seconds + 10)
        self._client.close()


def breaker_delta(before: pb.StatsResponse, after: pb.StatsResponse) -> str:
    opened = after.breaker.opened_total - before.breaker.opened_total
    moved = after.breaker.transitions_total - before.breaker.transitions_total
    return f"opened={opened} transitions={moved}"


@dataclass(frozen=True, slots=True)
class FaultEnd:
    """What a fault drill reads once its fault is over: the load's records and their
    summary, the acknowledged writes the gateway no longer returns, and the breaker's
    moves from `Stats`; `row` is the drill's report row."""

    records: list[Request]
    summary: Summary
    lost: list[str]
    acked: int
    breaker: str
    stats: pb.StatsResponse  # taken before the writes were read back

    @classmethod
    def read(cls, gateway: Gateway, load: Load, before: pb.StatsResponse) -> FaultEnd:
        stats = gateway.stats()
        records = load.records
        acked = load.acked
        lost = read_back(gateway.target, acked)
        return cls(
            records, summarize(records), lost, len(acked), breaker_delta(before, stats), stats
        )

    def row(self, drill: str, *, recover_s: float | None, notes: str) -> DrillRow:
        return DrillRow.of(
            drill,
            self.summary,
            lost=len(self.lost),
            breaker=self.breaker,
            recover_s=recover_s,
            notes=f"{notes}; acked={self.acked} bad_reads={self.summary.bad_reads}",
        )


def first_success_after(records: Sequence[Any], since: float) -> float | None:
    """Seconds from `since` until the first OK answer that came after it (None: never)."""
    ends = [r.end for r in records if r.ok and r.end >= since]
    return min(ends) - since if ends else None


def missing_in_redis(client: redis.Redis, expected: Mapping[str, bytes]) -> list[str]:
    """Keys whose value Redis itself does not hold exactly (read with MGET, in chunks)."""
    keys = sorted(expected)
    lost: list[str] = []
    for first in range(0, len(keys), 500):
        chunk = keys[first : first + 500]
        values = client.mget(chunk)
        lost.extend(k for k, v in zip(chunk, values, strict=True) if v != expected[k])
    return lost


# --- the report ------------------------------------------------------------------------


@dataclass
class DrillRow:
    drill: str
    sent: int
    ok: int
    failed: dict[str, int]
    max_ms: float
    p99_ms: float
    lost: int | None  # None: not checkable in this drill
    breaker: str
    recover_s: float | None
    notes: str = ""
    nodeid: str = ""
    outcome: str = ""

    @classmethod
    def of(
        cls,
        drill: str,
        summary: Summary,
        *,
        lost: int | None,
        breaker: str,
        recover_s: float | None,
        notes: str = "",
    ) -> DrillRow:
        return cls(
            drill=drill,
            sent=summary.sent,
            ok=summary.ok,
            failed=dict(summary.failed),
            max_ms=round(summary.max_latency * 1000, 1),
            p99_ms=round(summary.p99_latency * 1000, 1),
            lost=lost,
            breaker=breaker,
            recover_s=None if recover_s is None else round(recover_s, 2),
            notes=notes,
        )

    @property
    def failed_text(self) -> str:
        return " ".join(f"{code}={n}" for code, n in sorted(self.failed.items())) or "-"

    def cells(self) -> list[str]:
        return [
            self.drill,
            self.outcome or "-",
            str(self.sent),
            str(self.ok),
            self.failed_text,
            f"{self.max_ms:.1f}",
            f"{self.p99_ms:.1f}",
            "n/a" if self.lost is None else str(self.lost),
            self.breaker,
            "-" if self.recover_s is None else f"{self.recover_s:.2f}",
            self.notes,
        ]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


HEADERS = [
    "drill",
    "result",
    "sent",
    "ok",
    "failed by code",
    "max ms",
    "p99 ms",
    "lost",
    "breaker",
    "recover s",
    "notes",
]

ROWS: list[DrillRow] = []
"""Every row of this session, in the order the drills ran (conftest prints them)."""


def format_table(rows: Sequence[DrillRow]) -> str:
    grid = [HEADERS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(HEADERS))]
    lines = [
        " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in grid
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
