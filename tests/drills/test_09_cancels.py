"""Drill 9: clients cancel unary calls and Pipeline streams mid-flight, many times.

Redis is made to stutter (DEBUG SLEEP 20 ms every 50 ms) so that cancels land while the
server waits on Redis. A connection given back to the pool with a reply still on its way
would hand that reply to the next caller (the redis-py CVE-2023-28858 class of bug). So,
afterwards: the pool's in_use_connections (Stats) is back to 0, and Gets of 500 known keys
from several threads each return exactly their own value. Calls that completed before
their cancel took effect are checked the same way during the storm.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import pytest

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from drills.harness import DrillRow, Report, StartGateway, StartRedis, Stutter, breaker_delta
from drills.load import TTL_SECONDS, Request, make_channel, read_back, summarize

pytestmark = pytest.mark.drill

T = TypeVar("T")

KNOWN = 500
THREADS = 4
CALLS_PER_THREAD = 600
STORM_SECONDS = 12.0
OK = grpc.StatusCode.OK


def known_key(i: int) -> str:
    return f"cancel:known:{i}"


def known_value(i: int) -> bytes:
    return f"value-of-{i}-".encode() * (1 + i % 7)


def cancel_soon(
    future: grpc.Future[T], delay: float, wrong: Callable[[T], bool]
) -> tuple[grpc.StatusCode, str, bool]:
    """Cancel `future` after `delay` seconds: its status, message, and whether the reply
    (if the call won the race) is `wrong`."""
    time.sleep(delay)
    future.cancel()
    try:
        reply = future.result(timeout=3)
    except grpc.FutureCancelledError:
        return grpc.StatusCode.CANCELLED, "cancelled", False
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", False
    return OK, "", wrong(reply)


def stream_once(
    stub: cache_pb2_grpc.CacheServiceStub, rng: random.Random, tag: str, i: int
) -> Request:
    """A Pipeline stream of 3 batches (20 gets of known keys + 1 write), mostly cancelled
    after its first reply; the values that did arrive must be the keys' own."""
    batches = [
        pb.PipelineRequest(
            operations=[
                *(
                    pb.Operation(get=pb.GetOperation(key=known_key((i + j) % KNOWN)))
                    for j in range(20)
                ),
                pb.Operation(
                    set_ex=pb.SetExOperation(
                        key=f"cancel:junk:{tag}:{b}", value=b"junk", ttl_seconds=TTL_SECONDS
                    )
                ),
            ]
        )
        for b in range(3)
    ]
    start = time.monotonic()
    call = stub.Pipeline(iter(batches), timeout=2)
    bad = False
    code, message = OK, ""
    try:
        for reply in call:
            bad = bad or any(reply.values[j] != known_value((i + j) % KNOWN) for j in range(20))
            if rng.random() < 0.7:
                call.cancel()
    except grpc.RpcError as exc:
        code, message = exc.code(), exc.details() or ""
    return Request("stream", known_key(i), start, time.monotonic() - start, code, message, bad)


def unary_once(
    stub: cache_pb2_grpc.CacheServiceStub, rng: random.Random, tag: str, i: int, read: bool
) -> Request:
    """A Get of a known key (or a throwaway SetEx), cancelled 0-4 ms after it was sent."""
    start = time.monotonic()
    delay = rng.uniform(0, 0.004)
    if read:
        future = stub.Get.future(pb.GetRequest(key=known_key(i)), timeout=2)
        code, message, bad = cancel_soon(future, delay, lambda r: r.value != known_value(i))
    else:
        request = pb.SetExRequest(key=f"cancel:junk:{tag}", value=b"j", ttl_seconds=60)
        written = stub.SetEx.future(request, timeout=2)
        code, message, bad = cancel_soon(written, delay, lambda r: False)
    latency = time.monotonic() - start
    return Request("get" if read else "set", known_key(i), start, latency, code, message, bad)


def storm(target: str, index: int, end: float, record: Callable[[Request], None]) -> None:
    rng = random.Random(index)
    with make_channel(target) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        for n in range(CALLS_PER_THREAD):
            if time.monotonic() >= end:
                return
            i, tag = rng.randrange(KNOWN), f"{index}:{n}"
            kind = rng.choice(("get", "get", "set", "stream"))
            if kind == "stream":
                record(stream_once(stub, rng, tag, i))
            else:
                record(unary_once(stub, rng, tag, i, read=kind == "get"))


def verify_unary(target: str, index: int, wrong: list[str]) -> None:
    with make_channel(target) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        for i in range(index, KNOWN, THREADS):
            reply = stub.Get(pb.GetRequest(key=known_key(i)), timeout=5)
            if not reply.found or reply.value != known_value(i):
                wrong.append(known_key(i))


def test_cancels_leave_no_connection_and_no_stray_reply(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis()
    gateway = start_gateway({"CACHEGATE_BACKEND": "redis", "REDIS_URL": redis_server.url})
    with make_channel(gateway.target) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        for i in range(KNOWN):
            stub.SetEx(
                pb.SetExRequest(key=known_key(i), value=known_value(i), ttl_seconds=TTL_SECONDS),
                timeout=5,
            )
    before = gateway.stats()
    records: list[Request] = []
    lock = threading.Lock()

    def record(request: Request) -> None:
        with lock:
            records.append(request)

    end = time.monotonic() + STORM_SECONDS
    with Stutter(redis_server, sleep=0.02, gap=0.03, max_seconds=STORM_SECONDS + 5) as stutter:
        threads = [
            threading.Thread(target=storm, args=(gateway.target, i, end, record))
            for i in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(STORM_SECONDS + 15)
    assert not any(t.is_alive() for t in threads), "storm threads did not finish"
    in_use = -1
    settle = time.monotonic() + 5
    while time.monotonic() < settle:
        in_use = gateway.stats().pool.in_use_connections
        if in_use == 0:
            break
        time.sleep(0.1)
    after = gateway.stats()
    wrong: list[str] = []
    checkers = [
        threading.Thread(target=verify_unary, args=(gateway.target, i, wrong))
        for i in range(THREADS)
    ]
    for checker in checkers:
        checker.start()
    for checker in checkers:
        checker.join(60)
    lost = read_back(gateway.target, {known_key(i): known_value(i) for i in range(KNOWN)})
    summary = summarize(records)
    cancelled = summary.failed.get("CANCELLED", 0)
    report(
        DrillRow.of(
            "9 client cancels (unary+stream)",
            summary,
            lost=len(lost),
            breaker=breaker_delta(before, after),
            recover_s=None,
            notes=f"cancelled={cancelled}; in_use after={in_use}; misrouted: storm="
            f"{summary.bad_reads} verify={len(wrong)}/{KNOWN}; debug sleeps={stutter.sleeps}",
        )
    )
    assert cancelled >= 500, f"only {cancelled} calls were cancelled: nothing was drilled"
    assert in_use == 0, f"{in_use} connections still in use after the storm"
    assert summary.bad_reads == 0, "a call read a value that was not its key's"
    assert wrong == [], f"{len(wrong)} keys answered with another value, e.g. {wrong[:5]}"
    assert lost == []
    unexpected = set(summary.failed) - {"CANCELLED"}
    assert not unexpected, f"unexpected failures: {summary.failed_text}"
