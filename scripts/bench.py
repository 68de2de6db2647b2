"""`make bench`: cachegate side by side with Redis itself, on this machine, in one run.

Prints a table and writes JSON: "records", one per measurement (name, concurrency,
batch, ops_per_s, p50_ms, p99_ms, server_cpu_us_per_op, redis_round_trips_per_op,
redis_commands_per_op, redis_cpu_us_per_op), and
"ratios", issue 15's targets as ratios of figures of this same run (scripts/bench_ratios.py;
scripts/bench_compare.py sets two runs' ratios side by side). Server CPU comes from
/proc/<pid>/stat of every server process (supervisor and workers): on a noisy
2-core machine it is the figure that holds, where throughput moves with whatever
else runs. Redis round trips and commands per operation, and the CPU its command
thread spent per operation, come from Redis's INFO (see RedisCounts).

The `pool` part (scripts/bench_pool.py) is the in-process pool of the guide's API under
32 threads on 10 connections, beside redis-py's BlockingConnectionPool.

Everything listens on 127.0.0.1; every load is bounded by count and time.
This is a benchmark, not a test: it prints figures and checks results are
correct, and fails only when a result is wrong or a tool is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import multiprocessing
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # redisprocs: real redis-server processes

import grpc  # noqa: E402
import redis  # noqa: E402

from bench_pool import pool_fairness  # noqa: E402
from bench_ratios import compute_ratios, ratio_table  # noqa: E402
from cachegate.v1 import cache_pb2 as pb  # noqa: E402
from redisprocs import RedisProcess, free_port, free_port_block, start_standalone  # noqa: E402

# CACHEGATE_BENCH_SERVER: another server command to measure with this same bench (an
# older build, to compare two commits in one session: docs/performance.md).
SERVER = os.environ.get("CACHEGATE_BENCH_SERVER") or str(
    Path(sys.executable).parent / "cachegate-server"
)
KEYS = 1000
VALUE = b"v" * 32


@dataclass
class Record:
    name: str
    concurrency: int
    batch: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_op: float | None
    note: str = ""
    redis_round_trips_per_op: float | None = None
    redis_commands_per_op: float | None = None
    redis_cpu_us_per_op: float | None = None


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass(frozen=True, slots=True)
class RedisCounts:
    """Redis's own counters (INFO stats and cpu), read before and after a load run.

    Round trips are `total_reads_processed`: one per read of a client's socket, so a
    pipeline or an MGET of many keys is one, and a new connection's handshake counts.
    Commands are `total_commands_processed`, which also counts each command a Lua script
    runs (the bounded read's length-first script). `main_thread_cpu` is the CPU time, in
    seconds, of the one thread that runs every command: 1 / its time per operation is
    the most operations per second Redis could serve that load, however fast its
    client (Redis's ceiling). Each is None on a Redis older than its counter.
    """

    round_trips: int | None
    commands: int
    main_thread_cpu: float | None = None

    @classmethod
    def read(cls, client: redis.Redis) -> RedisCounts:
        info: dict[str, Any] = client.info("stats", "cpu")
        reads = info.get("total_reads_processed")
        user, system = info.get("used_cpu_user_main_thread"), info.get("used_cpu_sys_main_thread")
        return cls(
            None if reads is None else int(reads),
            int(info["total_commands_processed"]),
            None if user is None or system is None else float(user) + float(system),
        )

    def per_op(self, later: RedisCounts, ops: int) -> tuple[float | None, float]:
        """(round trips, commands) per operation from here to `later`.

        Each difference holds exactly one of the two readings' own INFO (Redis counts a
        read as it reads and a command once it has run), so one is taken off each.
        """
        commands = (later.commands - self.commands - 1) / ops
        if self.round_trips is None or later.round_trips is None:
            return None, commands
        return (later.round_trips - self.round_trips - 1) / ops, commands

    def cpu_us_per_op(self, later: RedisCounts, ops: int) -> float | None:
        """Redis's main-thread CPU per operation from here to `later`, in microseconds
        (the INFO calls' own share is a few microseconds over a run of seconds)."""
        if self.main_thread_cpu is None or later.main_thread_cpu is None:
            return None
        return (later.main_thread_cpu - self.main_thread_cpu) / ops * 1e6

    def fill(self, record: Record, later: RedisCounts, ops: int) -> None:
        """`record`'s Redis columns (round trips, commands and CPU per operation) for
        the `ops` operations from here to `later`."""
        record.redis_round_trips_per_op, record.redis_commands_per_op = self.per_op(later, ops)
        record.redis_cpu_us_per_op = self.cpu_us_per_op(later, ops)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


# --- Redis itself -----------------------------------------------------------------------


def redis_benchmark(port: int, test: str, pipeline: int, requests: int) -> Record:
    out = subprocess.run(
        [
            "redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", test.lower(),
            "-n", str(requests), "-c", "50", "-P", str(pipeline), "-d", str(len(VALUE)),
            "-r", str(KEYS), "--csv", "--precision", "3",
        ],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    row = next(r for r in csv.DictReader(io.StringIO(out)) if r["test"].startswith(test))
    return Record(
        "redis-benchmark", 50, pipeline, float(row["rps"]),
        float(row["p50_latency_ms"]), float(row["p99_latency_ms"]), None, f"{test}",
    )  # fmt: skip


def redis_py_threads(url: str, threads: int, seconds: float) -> Record:
    client = redis.Redis.from_url(url, max_connections=threads)
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def work(n: int) -> None:
        mine = []
        i = n
        while time.monotonic() < stop:
            start = time.perf_counter()
            value = client.get(f"k{i % KEYS}")
            mine.append(time.perf_counter() - start)
            if value != VALUE:
                raise AssertionError(f"wrong value for k{i % KEYS}: {value!r}")
            i += threads
        with lock:
            latencies.extend(mine)

    began = time.monotonic()
    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - began
    return Record(
        "redis-py", threads, 1, len(latencies) / elapsed,
        percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000, None,
        "GET, threads sharing one pool",
    )  # fmt: skip


def redis_py_pipelines(url: str, batch: int, seconds: float) -> Record:
    client = redis.Redis.from_url(url)
    keys = [f"k{i % KEYS}" for i in range(batch)]
    latencies = []
    redis_before = RedisCounts.read(client)
    stop = time.monotonic() + seconds
    began = time.monotonic()
    while time.monotonic() < stop:
        start = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        values = pipe.execute()
        latencies.append(time.perf_counter() - start)
        if values != [VALUE] * batch:
            raise AssertionError("wrong values from a redis-py pipeline")
    elapsed = time.monotonic() - began
    ops = len(latencies) * batch
    return Record(
        "redis-py", 1, batch, ops / elapsed,
        percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000, None,
        "GET pipeline",
        redis_cpu_us_per_op=redis_before.cpu_us_per_op(RedisCounts.read(client), ops),
    )  # fmt: skip


# --- cachegate ----------------------------------------------------------------------------


@dataclass
class Cachegate:
    process: subprocess.Popen[bytes]
    port: int
    http_port: int
    workers: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.process.pid, *children(self.process.pid)]

    def handled(self) -> dict[tuple[str, str], float]:
        """grpc_server_handled_total by (method, code), summed over the workers."""
        totals: dict[tuple[str, str], float] = {}
        pattern = re.compile(
            r'^grpc_server_handled_total\{[^}]*grpc_code="(\w+)"[^}]*grpc_method="(\w+)"[^}]*\}'
            r" ([0-9.e+]+)$"
        )
        for worker in range(self.workers):
            url = f"http://127.0.0.1:{self.http_port + worker}/metrics"
            with urllib.request.urlopen(url, timeout=5) as reply:
                for line in reply.read().decode().splitlines():
                    if m := pattern.match(line):
                        key = (m.group(2), m.group(1))
                        totals[key] = totals.get(key, 0.0) + float(m.group(3))
        return totals

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def server_env(redis_url: str, port: int, **settings: str) -> dict[str, str]:
    """cachegate-server's environment for a load run: this Redis, this port, quiet logs.

    `settings` add or override variables (CACHEGATE_WORKERS="2", ...); by default one
    worker and no HTTP side port. Pinned (CACHEGATE_PIN_CPUS=1, off by default in the
    server): the figures in docs/performance.md were measured pinned, one process per
    CPU, as grpc_floor.py runs; so they stay comparable.
    """
    return {
        **os.environ,
        "CACHEGATE_BACKEND": "redis",
        "REDIS_URL": redis_url,
        "CACHEGATE_LISTEN": f"127.0.0.1:{port}",
        "CACHEGATE_HTTP_LISTEN": "off",
        "CACHEGATE_WORKERS": "1",
        "CACHEGATE_PIN_CPUS": "1",
        "CACHEGATE_LOG_LEVEL": "WARNING",
        **settings,
    }


def start_cachegate(redis_url: str, workers: int, **settings: str) -> Cachegate:
    """cachegate-server on `redis_url` with `workers` workers; `settings` as server_env's."""
    port, http_port = free_port(), free_port_block(workers)
    env = server_env(
        redis_url,
        port,
        CACHEGATE_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        CACHEGATE_WORKERS=str(workers),
        **settings,
    )
    process = subprocess.Popen([SERVER], env=env, stderr=subprocess.DEVNULL)
    server = Cachegate(process, port, http_port, workers)
    try:
        wait_answering(
            server.target,
            "Stats",
            pb.StatsRequest().SerializeToString(),
            alive=lambda: process.poll() is None,
            ready=lambda: len(server.pids()) >= workers,  # the supervisor forked them all
        )
    except RuntimeError:
        server.stop()
        raise RuntimeError("cachegate-server did not start") from None
    return server


def wait_answering(
    target: str,
    method: str,
    request: bytes,
    *,
    alive: Callable[[], bool],
    ready: Callable[[], bool] = lambda: True,
) -> None:
    """Until `target` answers `method` and `ready()` holds; RuntimeError after 30 s or
    once `alive()` is false. Then half a second more, for the other workers to bind."""
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(target) as channel:
        stub = channel.unary_unary(
            f"/cachegate.v1.CacheService/{method}",
            request_serializer=None,
            response_deserializer=None,
        )
        while True:
            try:
                stub(request, timeout=1)
                if ready():
                    time.sleep(0.5)
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline or not alive():
                raise RuntimeError(f"{target} did not answer {method}")
            time.sleep(0.2)


@dataclass
class FloorServer:
    """scripts/grpc_floor.py, one pinned process per worker sharing one port."""

    processes: list[subprocess.Popen[bytes]]
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_floor(workers: int) -> FloorServer:
    return start_script("grpc_floor.py", workers, pin=True)


def start_script(script: str, workers: int, *extra: str, pin: bool) -> FloorServer:
    """`workers` processes of scripts/`script` (with `extra` arguments) sharing one port,
    pinned one per CPU when `pin`; once they answer a Get."""
    port = free_port()
    cpus = sorted(os.sched_getaffinity(0))
    server = FloorServer([], port)
    for worker in range(workers):
        command = [sys.executable, str(ROOT / "scripts" / script), "--port", str(port), *extra]
        if pin:
            command += ["--cpu", str(cpus[worker % len(cpus)])]
        server.processes.append(subprocess.Popen(command, stderr=subprocess.DEVNULL))
    try:
        wait_answering(
            server.target,
            "Get",
            pb.GetRequest(key="k7").SerializeToString(),
            alive=lambda: all(process.poll() is None for process in server.processes),
        )
    except RuntimeError:
        server.stop()
        raise RuntimeError(f"{script} did not start") from None
    return server


def grpc_body(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def h2load(
    server: Cachegate | FloorServer,
    method: str,
    body: bytes,
    concurrency: int,
    requests: int,
    folder: Path,
) -> tuple[float, list[float], float]:
    """ops/s, latencies (s) and server CPU seconds of one h2load run."""
    data, log = folder / f"{method}.bin", folder / f"{method}-{concurrency}.log"
    data.write_bytes(body)
    log.unlink(missing_ok=True)  # h2load appends to an existing log
    connections = max(1, concurrency)
    cpu_before = cpu_seconds(server.pids())
    started = time.monotonic()
    subprocess.run(
        [
            "h2load", "-n", str(requests), "-c", str(connections), "-m", "1", "-t", "1",
            "-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"--log-file={log}", f"http://{server.target}/cachegate.v1.CacheService/{method}",
        ],
        capture_output=True, timeout=300, check=True,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(server.pids()) - cpu_before
    latencies = [int(line.split("\t")[2]) / 1e6 for line in log.read_text().splitlines() if line]
    return len(latencies) / elapsed, latencies, cpu


def unary(
    server: Cachegate,
    redis_client: redis.Redis,
    folder: Path,
    concurrency: int,
    requests: int,
    repeat: int,
) -> list[Record]:
    """One record per method: the run with the median ops/s of `repeat` h2load runs.

    This machine's neighbours move a single run by +-10%; the note gives the spread.
    Redis round trips and commands per call are counted over the same run.
    """
    records = []
    for method, body in (
        ("Get", grpc_body(pb.GetRequest(key="k7"))),
        ("SetEx", grpc_body(pb.SetExRequest(key="k7", value=VALUE, ttl_seconds=3600))),
    ):
        runs = []
        for _ in range(repeat):
            before, redis_before = server.handled(), RedisCounts.read(redis_client)
            rate, latencies, cpu = h2load(server, method, body, concurrency, requests, folder)
            after, redis_after = server.handled(), RedisCounts.read(redis_client)
            ok = after.get((method, "OK"), 0) - before.get((method, "OK"), 0)
            if ok != len(latencies):  # h2load sees HTTP 200 for any gRPC status: ask the server
                raise AssertionError(f"{method}: {len(latencies)} requests but {ok} answered OK")
            name, note = f"cachegate-unary-{method.lower()}", f"h2load, {server.workers} worker(s)"
            run = h2load_record(name, concurrency, rate, latencies, cpu, note)
            redis_before.fill(run, redis_after, len(latencies))
            runs.append(run)
        records.append(median_run(runs))
    return records


def h2load_record(
    name: str, concurrency: int, rate: float, latencies: list[float], cpu: float, note: str
) -> Record:
    """The record of one h2load run of single calls (batch 1)."""
    return Record(
        name,
        concurrency,
        1,
        rate,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
        cpu / len(latencies) * 1e6,
        note,
    )


def median_run(runs: list[Record]) -> Record:
    """The run with the median ops/s; its note gives the spread of all of them."""
    runs.sort(key=lambda r: r.ops_per_s)
    median = runs[len(runs) // 2]
    if len(runs) > 1:
        median.note += (
            f", median of {len(runs)} runs ({runs[0].ops_per_s:,.0f}-{runs[-1].ops_per_s:,.0f}"
            " ops/s)"
        )
    return median


def floor(
    folder: Path,
    workers: int,
    concurrency: int,
    requests: int,
    repeat: int,
    redis_client: redis.Redis | None = None,
) -> Record:
    """grpcio's own floor on this machine: scripts/grpc_floor.py under the same load.

    Read cachegate's unary records against it: the distance between the two is
    cachegate's own cost; the floor itself is the framework's and the machine's.
    With `redis_client`, the floor reads each key from that Redis on a connection of
    each handler thread's own: the leanest thread-pool Get on Redis, with none of
    cachegate's guarantees (what a unary Get can reach here without sharing round trips).
    """
    if redis_client is None:
        name, note = "grpcio-floor-get", "bare grpcio, a constant reply (scripts/grpc_floor.py)"
        server = start_floor(workers)
    else:
        port = redis_client.connection_pool.connection_kwargs["port"]
        name, note = "grpcio-floor-redis-get", "bare grpcio + a GET on each thread's connection"
        server = start_script("grpc_floor.py", workers, "--redis-port", str(port), pin=True)
    try:
        body = grpc_body(pb.GetRequest(key="k7"))
        runs = []
        for _ in range(repeat):
            redis_before = RedisCounts.read(redis_client) if redis_client is not None else None
            rate, latencies, cpu = h2load(server, "Get", body, concurrency, requests, folder)
            run = h2load_record(
                name, concurrency, rate, latencies, cpu, f"{note}, {workers} worker(s)"
            )
            if redis_client is not None and redis_before is not None:
                redis_before.fill(run, RedisCounts.read(redis_client), len(latencies))
            runs.append(run)
        if redis_client is not None:
            check_value(server.target)
        return median_run(runs)
    finally:
        server.stop()


def check_value(target: str) -> None:
    """Get of the loaded key returns its value (h2load counts any gRPC status as a success)."""
    with grpc.insecure_channel(target) as channel:
        get = channel.unary_unary(
            "/cachegate.v1.CacheService/Get",
            request_serializer=pb.GetRequest.SerializeToString,
            response_deserializer=pb.GetResponse.FromString,
        )
        reply = get(pb.GetRequest(key="k7"), timeout=10)
    if not reply.found or reply.value != VALUE:
        raise AssertionError(f"{target}: Get answered {reply!r}")


def _pipeline_client(
    target: str, batch: int, streams: int, seconds: float, window: int, results: Any
) -> None:
    """One load process: `streams` streams, each with up to `window` batches in flight.

    Every reply is checked (values and no errors). Latency is per batch, from the
    moment it is handed to gRPC to its reply (replies come back in order).
    """
    request = pb.PipelineRequest(
        operations=[pb.Operation(get=pb.GetOperation(key=f"k{i % KEYS}")) for i in range(batch)]
    ).SerializeToString()
    expected_values = [VALUE] * batch
    latencies: list[float] = []
    ops = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def stream() -> None:
        nonlocal ops
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        call = channel.stream_stream(
            "/cachegate.v1.CacheService/Pipeline",
            request_serializer=None,
            response_deserializer=pb.PipelineResponse.FromString,
        )
        slots = threading.Semaphore(window)
        sent: queue.Queue[float] = queue.Queue()

        def requests() -> Iterator[bytes]:
            while time.monotonic() < stop_at:
                slots.acquire()
                sent.put(time.perf_counter())
                yield request

        mine = []
        for reply in call(requests(), timeout=seconds + 30):
            mine.append(time.perf_counter() - sent.get())
            slots.release()
            if list(reply.values) != expected_values or len(reply.errors):
                raise AssertionError("a Pipeline batch came back wrong")
        channel.close()
        with lock:
            latencies.extend(mine)
            ops += len(mine) * batch

    threads = [threading.Thread(target=stream) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put((ops, latencies))


def pipeline(
    server: Cachegate | FloorServer,
    redis_client: redis.Redis,
    batch: int,
    seconds: float,
    processes: int,
    streams: int,
    window: int = 4,
    name: str = "cachegate-pipeline",
) -> Record:
    context = multiprocessing.get_context("spawn")  # no gRPC state crosses a fork
    results = context.Queue()
    redis_before = RedisCounts.read(redis_client)
    cpu_before = cpu_seconds(server.pids())
    started = time.monotonic()
    workers = [
        context.Process(
            target=_pipeline_client,
            args=(server.target, batch, streams, seconds, window, results),
        )
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    collected = [results.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        if w.exitcode != 0:
            raise AssertionError("a Pipeline load process failed (wrong results?)")
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(server.pids()) - cpu_before
    ops = sum(n for n, _ in collected)
    latencies = [x for _, lat in collected for x in lat]
    count = server.workers if isinstance(server, Cachegate) else len(server.processes)
    record = Record(
        name, processes * streams, batch, ops / elapsed,
        percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000,
        cpu / ops * 1e6, f"{count} worker(s), {window} batches in flight per stream",
    )  # fmt: skip
    redis_before.fill(record, RedisCounts.read(redis_client), ops)
    return record


def pipeline_floors(redis_client: redis.Redis, args: argparse.Namespace) -> list[Record]:
    """scripts/grpc_floor.py's Pipeline under the same load as cachegate's, one process
    as cachegate's Pipeline runs: a constant reply (grpcio's cost per stream message),
    then the bounded read of each batch on Redis (the leanest Pipeline of gets there is).
    """
    port = redis_client.connection_pool.connection_kwargs["port"]
    records = []
    for name, extra in (
        ("grpcio-floor-pipeline", ()),
        ("grpcio-floor-redis-pipeline", ("--redis-port", str(port))),
    ):
        floor_server = start_script("grpc_floor.py", args.pipeline_workers, *extra, pin=True)
        try:
            for batch in (100, 1000):
                records.append(
                    pipeline(
                        floor_server,
                        redis_client,
                        batch,
                        args.seconds,
                        args.clients,
                        args.streams,
                        args.window,
                        name,
                    )
                )
        finally:
            floor_server.stop()
    return records


# --- pool fairness (scripts/bench_pool.py): the in-process pool, many threads --------


def pool_records(url: str, seconds: float) -> list[Record]:
    """32 threads on 10 connections: cachegate's pool beside redis-py's blocking pool."""
    records = []
    for load in pool_fairness(url, seconds=min(seconds, 2.0)):
        note = f"10 conns; p99.9 {load.ms(0.999):.2f} ms, max {load.max_ms:.2f} ms"
        record = Record(
            load.name, load.threads, 1, load.ops_per_s, load.ms(0.5), load.ms(0.99), None,
            f"{note}, errors {load.error_count}",
        )  # fmt: skip
        records.append(record)
    return records


# --- the run --------------------------------------------------------------------------


def table(records: Sequence[Record]) -> str:
    head = f"{'name':24} {'conc':>5} {'batch':>5} {'ops/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
    head += f"{'cpu us/op':>9} {'rt/op':>6} {'cmd/op':>6} {'redis us/op':>11}  note"
    lines = [head, "-" * len(head)]
    for r in records:
        cpu = f"{r.server_cpu_us_per_op:9.2f}" if r.server_cpu_us_per_op is not None else " " * 9
        round_trips, commands = r.redis_round_trips_per_op, r.redis_commands_per_op
        rt = f"{round_trips:6.3f}" if round_trips is not None else " " * 6
        cmd = f"{commands:6.3f}" if commands is not None else " " * 6
        at_redis = r.redis_cpu_us_per_op
        redis_cpu = f"{at_redis:11.3f}" if at_redis is not None else " " * 11
        lines.append(
            f"{r.name:24} {r.concurrency:5} {r.batch:5} {r.ops_per_s:11,.0f} {r.p50_ms:8.3f} "
            f"{r.p99_ms:8.3f} {cpu} {rt} {cmd} {redis_cpu}  {r.note}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(ROOT / "docs" / "bench.json"))
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--requests", type=int, default=40_000, help="per h2load run")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="h2load runs per unary record (the median is kept)"
    )
    parser.add_argument(
        "--only",
        choices=("redis", "unary", "pipeline", "pool"),
        action="append",
        help="some parts only",
    )
    parser.add_argument(
        "--pipeline-workers",
        type=int,
        default=1,
        help="server workers for the Pipeline runs (default 1: the Python load tool needs "
        "the other core of a 2-core machine to keep one worker busy)",
    )
    parser.add_argument("--clients", type=int, default=1, help="Pipeline load processes")
    parser.add_argument("--streams", type=int, default=4, help="streams per load process")
    parser.add_argument("--window", type=int, default=4, help="batches in flight per stream")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.requests, args.repeat = 1.0, 2000, 1
    parts = set(args.only or ("redis", "unary", "pipeline", "pool"))
    tools = {"redis-server"} | ({"h2load"} if "unary" in parts else set())
    tools |= {"redis-benchmark"} if "redis" in parts else set()
    for tool in sorted(tools):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (make bench installs it)", file=sys.stderr)
            return 1
    records: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="cachegate-bench-") as scratch:
        folder = Path(scratch)
        redis_proc: RedisProcess = start_standalone(folder / "redis")
        try:
            seed = redis_proc.client()
            seed.mset({f"k{i}": VALUE for i in range(KEYS)})
            if "redis" in parts:
                for test in ("GET", "SET"):
                    for depth in (1, 16):
                        records.append(
                            redis_benchmark(redis_proc.port, test, depth, args.requests * 5)
                        )
                records.append(redis_py_threads(redis_proc.url, 8, args.seconds))
                records.append(redis_py_pipelines(redis_proc.url, 100, args.seconds))
                print(table(records), flush=True)
            if "unary" in parts:
                server = start_cachegate(redis_proc.url, args.workers)
                try:
                    for concurrency in (1, 16, 64):
                        requests = args.requests if concurrency > 1 else args.requests // 4
                        records += unary(server, seed, folder, concurrency, requests, args.repeat)
                finally:
                    server.stop()
                records.append(floor(folder, args.workers, 64, args.requests, args.repeat))
                records.append(floor(folder, args.workers, 64, args.requests, args.repeat, seed))
            if "pipeline" in parts:
                server = start_cachegate(redis_proc.url, args.pipeline_workers)
                try:
                    for batch in (10, 100, 1000):
                        records.append(
                            pipeline(
                                server,
                                seed,
                                batch,
                                args.seconds,
                                args.clients,
                                args.streams,
                                args.window,
                            )
                        )
                finally:
                    server.stop()
                records += pipeline_floors(seed, args)
            if "pool" in parts:
                records += pool_records(redis_proc.url, args.seconds)
        finally:
            redis_proc.stop()
    print()
    print(table(records))
    ratios = compute_ratios(records)
    print()
    print(ratio_table(ratios))
    result = {"records": [asdict(r) for r in records], "ratios": [asdict(r) for r in ratios]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    medians = [
        r.server_cpu_us_per_op
        for r in records
        if r.server_cpu_us_per_op is not None and r.name.startswith("cachegate")
    ]
    if medians:
        print(f"median server cpu us/op over cachegate runs: {statistics.median(medians):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
