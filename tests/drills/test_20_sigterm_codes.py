"""Drill 20: SIGTERM under load, several times: every call ends with a code of the table.

Each trial starts a 2-worker gateway (CACHEGATE_GRACE_SECONDS=2) on one Redis, runs
unary load from many connections (drills.load.Load, several calls in flight on each),
and keeps Pipeline streams open: some send a batch every few milliseconds, one sends
a batch and then stays quiet. Then the gateway gets SIGTERM. Whatever a call was
doing at that moment, it must end OK or with a code of README's error table
(UNAVAILABLE is what a client retries after "server shutting down"), never CANCELLED
or UNKNOWN: clients do not retry those, and a call they sent was not refused cleanly.

The trials are bounded (count and time) and print the codes seen per trial.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from drills.attack import workers_env
from drills.harness import DrillRow, Report, StartGateway, StartRedis
from drills.load import Load, make_channel, summarize

pytestmark = pytest.mark.drill

TRIALS = int(os.environ.get("DRILL_SIGTERM_TRIALS", "4"))
GRACE = 2.0
BUSY_STREAMS = 3
BATCH_EVERY = 0.005
STREAM_SECONDS = 8.0  # longer than the grace: a stream still open at the end is cut
# The codes of README's "Errors" table (and OK).
TABLE = {
    "OK",
    "INVALID_ARGUMENT",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
}


class Stream:
    """One Pipeline stream on its own connection: `batches` gets, one every `every` s
    (None: one batch, then silence), for at most `seconds`; records how it ended."""

    def __init__(self, target: str, every: float | None, seconds: float) -> None:
        self._channel = make_channel(target)
        self._every = every
        self._seconds = seconds
        self.replies = 0
        self.code = "UNFINISHED"
        self.details = ""
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)
        self._started = threading.Event()

    def _requests(self) -> Iterator[pb.PipelineRequest]:
        end = time.monotonic() + self._seconds
        batch = pb.PipelineRequest(
            operations=[pb.Operation(get=pb.GetOperation(key=f"term20:{i}")) for i in range(20)]
        )
        yield batch
        self._started.set()
        while time.monotonic() < end:
            time.sleep(self._every if self._every is not None else 0.05)
            if self._every is not None:
                yield batch

    def _run(self) -> None:
        stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        try:
            for _ in stub.Pipeline(self._requests(), timeout=self._seconds + 5):
                self.replies += 1
            self.code = "OK"
        except grpc.RpcError as exc:
            self.code = exc.code().name
            self.details = exc.details() or ""

    def start(self) -> None:
        self._thread.start()

    def wait_started(self, timeout: float) -> bool:
        return self._started.wait(timeout)

    def join(self) -> None:
        self._thread.join(self._seconds + 10)
        self._channel.close()


def test_sigterm_codes(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    outside: list[str] = []
    seen_total: collections.Counter[str] = collections.Counter()
    for trial in range(1, TRIALS + 1):
        gateway = start_gateway(
            workers_env(redis_server.url, 2, CACHEGATE_GRACE_SECONDS=str(GRACE))
        )
        load = Load(
            gateway.target,
            f"t20-{trial}",
            threads=8,
            inflight=4,
            deadline=2.0,
            pace=0.0,
            max_seconds=10,
            max_requests=40_000,
        )
        streams = [Stream(gateway.target, BATCH_EVERY, STREAM_SECONDS) for _ in range(BUSY_STREAMS)]
        streams.append(Stream(gateway.target, None, STREAM_SECONDS))  # one quiet stream
        with load:
            for stream in streams:
                stream.start()
            load.wait_for_requests(500, timeout=10)
            assert all(s.wait_started(5) for s in streams), "a stream never got going"
            term_at = time.monotonic()
            gateway.proc.send_signal(15)  # SIGTERM, our own child, by PID
            exit_code = gateway.proc.wait(GRACE + 15)
            exited_after = time.monotonic() - term_at
        for stream in streams:
            stream.join()
        records = load.records
        summary = summarize(records)
        codes: collections.Counter[str] = collections.Counter(r.code.name for r in records)
        codes.update(f"stream:{s.code}" for s in streams)
        seen_total.update(codes)
        bad = {c: n for c, n in codes.items() if c.removeprefix("stream:") not in TABLE}
        messages = sorted(
            {r.message for r in records if r.code.name not in TABLE}
            | {s.details for s in streams if s.code not in TABLE}
        )
        around = [r for r in records if r.start <= term_at <= r.end]
        # When the odd calls started and ended, relative to the signal (ms).
        odd = [
            f"{r.op}@{(r.start - term_at) * 1000:+.0f}..{(r.end - term_at) * 1000:+.0f}ms"
            for r in records
            if r.code.name not in TABLE
        ]
        report(
            DrillRow.of(
                f"20 SIGTERM codes trial {trial}/{TRIALS}",
                summary,
                lost=None,
                breaker="-",
                recover_s=None,
                notes=f"calls in flight at SIGTERM {len(around)}; streams "
                f"{'/'.join(f'{s.code}({s.replies})' for s in streams)}; "
                f"exit {exit_code} after {exited_after:.2f}s; outside table: {bad or 'none'} "
                f"{messages[:3] if messages else ''}",
            )
        )
        print(
            f"trial {trial}: codes {dict(sorted(codes.items()))} exit {exit_code} after "
            f"{exited_after:.2f}s; outside the table: {bad or 'none'} {messages[:3]} {odd[:8]}"
        )
        if bad:
            outside.append(f"trial {trial}: {bad} {messages[:3]}")
        assert exit_code == 0, gateway.log_tail()
    print(f"all {TRIALS} trials: {dict(sorted(seen_total.items()))}")
    assert not outside, f"codes outside README's table in {len(outside)}/{TRIALS} trials: {outside}"
