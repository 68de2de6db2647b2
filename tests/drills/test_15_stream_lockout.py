"""Drill 15: stream lockout (issue 12, finding 6).

Tokens on, 2 workers on Redis. One tenant ("mallory") opens 160 Pipeline streams on 16
connections, with no deadline, and sends nothing. On the code before fair streams they
took every stream slot of both workers and every other tenant's Pipeline got
RESOURCE_EXHAUSTED for as long as they stayed open (forever). CACHEGATE_MAX_STREAMS is
20 per worker here so that 160 streams fill both workers however the kernel spreads the
16 connections (a worker needs just two of them).

Passes when:
- mallory holds at most its share of each worker's slots (CACHEGATE_STREAM_SHARE, the
  default 0.25: 5 of 20); its other streams are refused at once, RESOURCE_EXHAUSTED
  naming the share;
- another tenant's Pipeline (8 fresh connections, one batch each) is served while
  mallory's streams are open (checked: within the idle timeout of their opening);
- each of mallory's admitted streams ends RESOURCE_EXHAUSTED naming
  CACHEGATE_STREAM_IDLE_SECONDS within IDLE + SLACK of its opening;
- a bystander tenant's unary SetEx/Get keeps p99 <= 50 ms, no worker dies, and every
  write it had acknowledged reads back.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from drills.attack import Bystander, MemoryWatch, attack_row, gateway_pids, tokens_file, workers_env
from drills.harness import Report, StartGateway, StartRedis
from drills.load import CHANNEL_OPTIONS, read_back

pytestmark = pytest.mark.drill

IDLE = 2.0
SLACK = 1.5
MAX_STREAMS = 20
SHARE = 5  # the default CACHEGATE_STREAM_SHARE of 0.25 x MAX_STREAMS
CONNECTIONS, PER_CONNECTION = 16, 10
OTHERS = 8
P99_MS = 50.0
TOKENS = {
    "mallory": "mallory-token-0123456789",
    "alice": "alice-token-0123456789ab",
    "carol": "carol-token-0123456789ab",
}
BATCH = pb.PipelineRequest(operations=[pb.Operation(get=pb.GetOperation(key="k"))])


def bearer(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[tenant]}"),)


@dataclass
class HeldStream:
    """One of the attacker's streams: opened at `opened`, ended (or not) at `ended`."""

    call: Any
    opened: float
    ended: float | None = None

    def outcome(self) -> tuple[str, str]:
        return self.call.code().name, self.call.details() or ""


class Lockout:
    """Opens CONNECTIONS x PER_CONNECTION Pipeline streams that send nothing (each one's
    request iterator waits for `stop`, at most `max_seconds`)."""

    def __init__(self, target: str, max_seconds: float) -> None:
        self._stop = threading.Event()
        self._max_seconds = max_seconds
        self.channels = [
            grpc.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(CONNECTIONS)
        ]
        self.streams: list[HeldStream] = []

    def _silence(self) -> Iterator[pb.PipelineRequest]:
        self._stop.wait(self._max_seconds)
        yield from ()

    def open(self) -> None:
        for channel in self.channels:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for _ in range(PER_CONNECTION):
                # No deadline. grpc's call is a Future too (grpc-stubs types the iterator only).
                call: Any = stub.Pipeline(self._silence(), metadata=bearer("mallory"))
                held = HeldStream(call, time.monotonic())

                def ended(_: object, held: HeldStream = held) -> None:
                    held.ended = time.monotonic()

                call.add_done_callback(ended)
                self.streams.append(held)

    def open_at(self, moment: float) -> int:
        return sum(1 for s in self.streams if s.ended is None or s.ended > moment)

    def close(self) -> None:
        self._stop.set()
        for held in self.streams:
            held.call.cancel()
        for channel in self.channels:
            channel.close()


def other_tenant_pipelines(target: str) -> list[str]:
    """One batch on each of OTHERS fresh connections; the status code name of each."""
    codes: list[str] = []
    for _ in range(OTHERS):
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            try:
                replies = list(stub.Pipeline(iter([BATCH]), timeout=2, metadata=bearer("alice")))
                codes.append("OK" if len(replies) == 1 else f"{len(replies)} replies")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
    return codes


def test_one_tenant_cannot_lock_others_out_of_streams(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report, tmp_path: Path
) -> None:
    tokens = tokens_file(tmp_path, TOKENS)
    redis_server = start_redis()
    gateway = start_gateway(
        workers_env(
            redis_server.url,
            CACHEGATE_TOKENS_FILE=str(tokens),
            CACHEGATE_MAX_STREAMS=str(MAX_STREAMS),
            CACHEGATE_STREAM_IDLE_SECONDS=str(IDLE),
        )
    )
    pids = set(gateway_pids(gateway))
    assert len(pids) == 3, f"expected a supervisor and 2 workers: {pids}"
    lockout = Lockout(gateway.target, max_seconds=IDLE + SLACK + 10)
    bystander = Bystander(gateway.target, max_seconds=30, metadata=bearer("carol"))
    with MemoryWatch(gateway, max_seconds=60) as memory, bystander:
        time.sleep(0.5)  # the bystander's calm baseline
        try:
            lockout.open()
            opened = max(s.opened for s in lockout.streams)
            time.sleep(0.3)  # the refusals arrive
            others = other_tenant_pipelines(gateway.target)
            others_done = time.monotonic()
            held_meanwhile = lockout.open_at(others_done)
            # Every stream ends by itself: refused at once, or idle after IDLE.
            give_up = opened + IDLE + SLACK
            while time.monotonic() < give_up and any(s.ended is None for s in lockout.streams):
                time.sleep(0.05)
            still_open = sum(1 for s in lockout.streams if s.ended is None)
        finally:
            lockout.close()
        time.sleep(0.5)  # the bystander after the attack
    # (code, details, seconds from opening to the end: how long the slot was held)
    outcomes = [(*s.outcome(), (s.ended or time.monotonic()) - s.opened) for s in lockout.streams]
    shared = [life for _, text, life in outcomes if "CACHEGATE_STREAM_SHARE" in text]
    idled = [life for _, text, life in outcomes if "CACHEGATE_STREAM_IDLE_SECONDS" in text]
    codes = Counter(code for code, _, _ in outcomes)
    alive = set(gateway_pids(gateway))
    lost = read_back(gateway.target, bystander.load.acked, metadata=bearer("carol"))
    first_idle = min(idled, default=0.0)
    last_idle = max(idled, default=0.0)
    report(
        attack_row(
            "15 stream lockout",
            bystander,
            memory,
            lost=len(lost),
            notes=f"mallory streams={len(outcomes)}: refused for share={len(shared)}, "
            f"idle-closed={len(idled)} after {first_idle:.2f}-{last_idle:.2f}s, "
            f"still open after {IDLE + SLACK:.1f}s={still_open}, codes {dict(codes)}; "
            f"mallory held {held_meanwhile} while alice's 8 Pipelines got "
            f"{dict(Counter(others))} ({others_done - opened:.2f}s after the lockout)",
        )
    )
    assert others_done - opened < IDLE, "the other tenant was checked too late to tell"
    assert others == ["OK"] * OTHERS, f"the other tenant's Pipelines: {others}"
    assert still_open == 0, f"{still_open} idle streams still open {IDLE + SLACK}s later"
    assert set(codes) == {"RESOURCE_EXHAUSTED"}, dict(codes)
    assert len(idled) <= 2 * SHARE, f"mallory held {len(idled)} slots; its share is {SHARE}/worker"
    assert len(idled) >= SHARE, f"only {len(idled)} streams admitted"
    assert len(shared) + len(idled) == len(outcomes)
    assert first_idle >= IDLE - 0.1, "a stream was closed before its idle timeout"
    assert last_idle <= IDLE + SLACK
    assert bystander.p99_ms() <= P99_MS, bystander.text()
    assert bystander.summary.ok >= 100, bystander.text()
    assert not bystander.summary.failed, bystander.text()
    assert memory.killed == []
    assert alive == pids, f"workers before {pids}, after {alive}"
    assert lost == []
