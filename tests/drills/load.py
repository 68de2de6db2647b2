"""The drills' load generator, written once and shared by every drill.

A few threads, each with its own gRPC channel (its own HTTP/2 connection), loop
SetEx of a unique key with a unique value and Get of a key the same thread saw
acknowledged. Every RPC has a deadline; every answer is recorded (start, latency,
status code, message), and every acknowledged write is remembered so that a drill
can check afterwards that Redis still holds it, byte for byte. A Get that answers OK
with anything but the acknowledged value is flagged as a bad read (a lost write, or a
reply that belonged to another call).

The load stops by itself: after `max_requests` RPCs or `max_seconds`, whichever
comes first (or at `stop()`). Client-side retries are off, so the records show what
the server answered, not what a retrying client would have hidden.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import grpc

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc

__all__ = [
    "CHANNEL_OPTIONS",
    "TTL_SECONDS",
    "Load",
    "Request",
    "Summary",
    "make_channel",
    "percentile",
    "read_back",
    "summarize",
]

T = TypeVar("T")

OK = grpc.StatusCode.OK
TTL_SECONDS = 3600
"""Long enough that nothing a drill wrote expires before it is verified."""

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # One HTTP/2 connection per channel (gRPC shares one per target otherwise).
    ("grpc.use_local_subchannel_pool", 1),
    # No client-side retries: the records show the server's own answers.
    ("grpc.enable_retries", 0),
)


def make_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


@dataclass(frozen=True, slots=True)
class Request:
    """One RPC as the client saw it. Times are `time.monotonic()` seconds."""

    op: str  # "get" or "set"
    key: str
    start: float
    latency: float
    code: grpc.StatusCode
    message: str
    bad_read: bool = False  # a Get answered OK, but not with the acknowledged value

    @property
    def end(self) -> float:
        return self.start + self.latency

    @property
    def ok(self) -> bool:
        return self.code is OK


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


@dataclass(frozen=True, slots=True)
class Summary:
    sent: int
    ok: int
    failed: Mapping[str, int]  # status code name -> count
    max_latency: float
    p99_latency: float
    bad_reads: int

    @property
    def failed_text(self) -> str:
        return " ".join(f"{code}={n}" for code, n in sorted(self.failed.items())) or "-"


def summarize(records: Sequence[Request]) -> Summary:
    latencies = [r.latency for r in records]
    failed = Counter(r.code.name for r in records if not r.ok)
    return Summary(
        sent=len(records),
        ok=sum(1 for r in records if r.ok),
        failed=dict(failed),
        max_latency=max(latencies, default=0.0),
        p99_latency=percentile(latencies, 99),
        bad_reads=sum(1 for r in records if r.bad_read),
    )


@dataclass
class _Worker:
    index: int
    gate: threading.Semaphore
    acked_keys: list[str] = field(default_factory=list)


class Load:
    """`threads` channels, each keeping up to `inflight` RPCs outstanding.

    Use as a context manager (stops and joins on exit) or call start()/stop().
    """

    def __init__(
        self,
        target: str,
        name: str,
        *,
        threads: int = 4,
        inflight: int = 1,
        deadline: float = 0.5,
        max_requests: int = 20_000,
        max_seconds: float = 20.0,
        pace: float = 0.003,
        write_ratio: float = 0.5,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        if not (threads >= 1 and inflight >= 1 and max_requests >= 1 and max_seconds > 0):
            raise ValueError("threads, inflight, max_requests and max_seconds must be positive")
        self.target = target
        self.name = name
        self.threads = threads
        self.inflight = inflight
        self.deadline = deadline
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.pace = pace
        self.write_ratio = write_ratio
        self.metadata = tuple(metadata) or None  # e.g. a bearer token, on every call
        self._lock = threading.Lock()
        self._records: list[Request] = []
        self._acked: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._sent = 0
        self._threads: list[threading.Thread] = []
        self._end = 0.0
        self.started_at = 0.0

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> Load:
        self.started_at = time.monotonic()
        self._end = self.started_at + self.max_seconds
        for index in range(self.threads):
            thread = threading.Thread(
                target=self._run, args=(index,), name=f"load-{self.name}-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        """Stop sending, and wait for the outstanding RPCs (each bounded by its deadline)."""
        self._stop.set()
        self.join()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the load ends by itself (count or time) or was stopped."""
        limit = self.max_seconds + self.deadline + 10.0 if timeout is None else timeout
        give_up = time.monotonic() + limit
        for thread in self._threads:
            thread.join(max(0.0, give_up - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise TimeoutError(f"load threads still running after {limit:.1f}s: {alive}")

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- results ---------------------------------------------------------------------

    @property
    def records(self) -> list[Request]:
        with self._lock:
            return list(self._records)

    @property
    def acked(self) -> dict[str, bytes]:
        """Every acknowledged write: key -> the exact value sent."""
        with self._lock:
            return dict(self._acked)

    def records_since(self, since: float) -> list[Request]:
        return [r for r in self.records if r.start >= since]

    def wait_for_requests(self, count: int, timeout: float) -> None:
        """Bounded wait until at least `count` RPCs have been answered."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                done = len(self._records)
            if done >= count:
                return
            if time.monotonic() >= deadline or not self.running:
                raise TimeoutError(f"{self.name}: {done} of {count} RPCs answered in {timeout}s")
            time.sleep(0.01)

    # --- the worker threads ----------------------------------------------------------

    def _claim(self) -> bool:
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _run(self, index: int) -> None:
        rng = random.Random(f"{self.name}:{index}")
        worker = _Worker(index, threading.Semaphore(self.inflight))
        channel = make_channel(self.target)
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        seq = 0
        try:
            while not self._stop.is_set() and time.monotonic() < self._end:
                if not worker.gate.acquire(timeout=0.05):
                    continue
                if not self._claim():
                    worker.gate.release()
                    break
                seq += 1
                with self._lock:
                    known = len(worker.acked_keys)
                    key = worker.acked_keys[rng.randrange(known)] if known else ""
                if not known or rng.random() < self.write_ratio:
                    key = f"{self.name}:{index}:{seq}"
                    value = f"{key}={rng.getrandbits(64):016x}".encode()
                    self._set(stub, worker, key, value)
                else:
                    self._get(stub, worker, key)
                if self.pace > 0:
                    self._stop.wait(self.pace)
            # Outstanding RPCs end by their deadline; closing the channel earlier would
            # cancel them and record client-made CANCELLEDs.
            for _ in range(self.inflight):
                worker.gate.acquire(timeout=self.deadline + 5.0)
        finally:
            channel.close()

    def _set(
        self, stub: cache_pb2_grpc.CacheServiceStub, worker: _Worker, key: str, value: bytes
    ) -> None:
        start = time.monotonic()
        future = stub.SetEx.future(
            pb.SetExRequest(key=key, value=value, ttl_seconds=TTL_SECONDS),
            timeout=self.deadline,
            metadata=self.metadata,
        )

        def done(call: grpc.Future[pb.SetExResponse]) -> None:
            latency = time.monotonic() - start
            code, message = _outcome(call)
            with self._lock:
                self._records.append(Request("set", key, start, latency, code, message))
                if code is OK:
                    self._acked[key] = value
                    worker.acked_keys.append(key)
            worker.gate.release()

        future.add_done_callback(done)

    def _get(self, stub: cache_pb2_grpc.CacheServiceStub, worker: _Worker, key: str) -> None:
        start = time.monotonic()
        future = stub.Get.future(
            pb.GetRequest(key=key), timeout=self.deadline, metadata=self.metadata
        )

        def done(call: grpc.Future[pb.GetResponse]) -> None:
            latency = time.monotonic() - start
            code, message = _outcome(call)
            bad = False
            if code is OK:
                reply = call.result()
                with self._lock:
                    expected = self._acked.get(key)
                bad = not reply.found or reply.value != expected
            with self._lock:
                self._records.append(Request("get", key, start, latency, code, message, bad))
            worker.gate.release()

        future.add_done_callback(done)


def _outcome(call: grpc.Future[T]) -> tuple[grpc.StatusCode, str]:
    try:
        call.result(timeout=0)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    except grpc.FutureCancelledError:
        return grpc.StatusCode.CANCELLED, "cancelled by the client"
    return OK, ""


def read_back(
    target: str,
    expected: Mapping[str, bytes],
    *,
    batch: int = 250,
    attempts: int = 5,
    timeout: float = 5.0,
    metadata: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """Keys of `expected` whose value the service does not return exactly (missing or
    different), read in Pipeline batches of gets. A batch that fails (an error outcome) is
    retried a few times; a key still unreadable after that raises AssertionError, since
    "unverifiable" must not pass as "verified"."""
    keys = sorted(expected)
    lost: list[str] = []
    with make_channel(target) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        for first in range(0, len(keys), batch):
            chunk = keys[first : first + batch]
            request = pb.PipelineRequest(
                operations=[pb.Operation(get=pb.GetOperation(key=k)) for k in chunk]
            )
            errors = ""
            for attempt in range(attempts):
                try:
                    [reply] = list(
                        stub.Pipeline(
                            iter([request]), timeout=timeout, metadata=tuple(metadata) or None
                        )
                    )
                except grpc.RpcError as exc:
                    errors = f"{exc.code().name}: {exc.details()}"
                else:
                    if not reply.errors:
                        for key, outcome, value in zip(
                            chunk, reply.outcomes, reply.values, strict=True
                        ):
                            if outcome != pb.OUTCOME_VALUE or value != expected[key]:
                                lost.append(key)
                        break
                    errors = f"{reply.errors[0].code}: {reply.errors[0].message}"
                time.sleep(0.2 * (attempt + 1))
            else:
                raise AssertionError(f"could not read back {len(chunk)} keys: {errors}")
    return lost
