"""Drill 19: a short Redis blip costs seconds, not the breaker's whole recovery timeout.

Two workers, REDIS_SOCKET_TIMEOUT=0.5, REDIS_RECOVERY_TIMEOUT=60, load running
(callers' deadlines of 2 s, so a stalled Redis times out on the server's own 0.5 s and
the breakers open). Every worker also has callers of its own (CALLERS_PER_WORKER threads
on a connection found through Stats' worker id) sending Gets one after the other, so each
worker's breaker meets its failure threshold in the stall however the kernel spreads the
load's connections between the workers.

1. Redis is SIGSTOPped for 3 s, then SIGCONTed. Every worker's breaker must open, and
   every worker must answer a Get OK again within RECOVERY_BOUND seconds of the SIGCONT:
   the background PING (about 1 s after the opening, then 2, 4, ... s apart) finds
   Redis back and half-opens the breaker, and the next call closes it. Without it the
   breaker stays open for the whole 60 s (the wait here is bounded: the drill fails in
   seconds, not a minute).
2. Redis is SIGKILLed for 10 s (AOF on), then restarted. Each worker's probes during
   the outage, counted by cachegate_breaker_probes_total, stay within the schedule
   (at most one per interval: 1, 2, 4 ... s), and at least one was sent. Afterwards
   every worker serves again and every acknowledged write is still there.
"""

from __future__ import annotations

import http.client
import threading
import time

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from drills.attack import workers_env
from drills.harness import DrillRow, Gateway, Report, StartGateway, StartRedis
from drills.load import Load, make_channel, read_back, summarize

pytestmark = pytest.mark.drill

WORKERS = 2
SOCKET_TIMEOUT = 0.5
RECOVERY_TIMEOUT = 60.0
STALL_SECONDS = 3.0
DOWN_SECONDS = 10.0
# The probe after the SIGCONT comes at most one interval (2 s here, the second probe's)
# after the one that found Redis stopped, plus a PING's timeout and a call.
RECOVERY_BOUND = 3.0
CALL_DEADLINE = 2.0
# More than REDIS_FAILURE_THRESHOLD (5) calls failing at once on every worker.
CALLERS_PER_WORKER = 6


def schedule_allows(seconds: float) -> int:
    """Probes README's schedule starts within `seconds` of an opening: the first 1 s
    after it, each next one twice the interval later, up to the recovery timeout."""
    count, at, interval = 0, 1.0, 1.0
    while at <= seconds:
        count += 1
        interval = min(interval * 2, RECOVERY_TIMEOUT)
        at += interval
    return count


def worker_metrics(
    gateway: Gateway, worker: int
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of worker `worker`'s /metrics (each worker serves http port + id)."""
    assert gateway.http_port is not None
    connection = http.client.HTTPConnection("127.0.0.1", gateway.http_port + worker, timeout=5)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "worker"))
            samples[(sample.name, labels)] = sample.value
    return samples


def probes(gateway: Gateway, worker: int) -> int:
    samples = worker_metrics(gateway, worker)
    return int(
        sum(
            samples.get(("cachegate_breaker_probes_total", (("result", result),)), 0.0)
            for result in ("success", "failure")
        )
    )


def opened(gateway: Gateway, worker: int) -> int:
    return int(worker_metrics(gateway, worker)[("cachegate_breaker_opened_total", ())])


def breaker_state(gateway: Gateway, worker: int) -> int:
    return int(worker_metrics(gateway, worker)[("cachegate_breaker_state", ())])


def channel_per_worker(target: str, timeout: float = 20.0) -> dict[int, grpc.Channel]:
    """One connection to each worker (the kernel spreads connections; Stats says whose).
    Bounded in time: a worker that is still starting has not bound the port yet."""
    found: dict[int, grpc.Channel] = {}
    end = time.monotonic() + timeout
    while len(found) < WORKERS and time.monotonic() < end:
        channel = make_channel(target)
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        worker = stub.Stats(pb.StatsRequest(), timeout=5).worker_id
        if worker in found:
            channel.close()
            time.sleep(0.05)
        else:
            found[worker] = channel
    return found


class Caller:
    """Gets on one worker's connection from `threads` threads, each one call after the
    other, bounded by `max_seconds`; keeps (start, end, ok)."""

    def __init__(
        self, channel: grpc.Channel, max_seconds: float, threads: int = CALLERS_PER_WORKER
    ) -> None:
        self._stub = cache_pb2_grpc.CacheServiceStub(channel)
        self._end = time.monotonic() + max_seconds
        self._stop = threading.Event()
        self.calls: list[tuple[float, float, bool]] = []
        self._threads = [
            threading.Thread(target=self._run, name=f"caller-{n}", daemon=True)
            for n in range(threads)
        ]

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._end:
            start = time.monotonic()
            try:
                self._stub.Get(pb.GetRequest(key="blip:caller"), timeout=CALL_DEADLINE)
                ok = True
            except grpc.RpcError:
                ok = False
            self.calls.append((start, time.monotonic(), ok))  # one append: thread-safe
            self._stop.wait(0.02)

    def first_ok_after(self, since: float) -> float | None:
        ends = [end for _start, end, ok in list(self.calls) if ok and end >= since]
        return min(ends) - since if ends else None

    def __enter__(self) -> Caller:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CALL_DEADLINE + 5)


def wait_all(callers: dict[int, Caller], since: float, limit: float) -> dict[int, float | None]:
    """Each worker's first OK after `since`, waiting at most `limit` seconds for all."""
    end = since + limit
    while time.monotonic() < end:
        if all(c.first_ok_after(since) is not None for c in callers.values()):
            break
        time.sleep(0.05)
    return {worker: c.first_ok_after(since) for worker, c in callers.items()}


def test_blip_recovery_by_probing(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report
) -> None:
    redis_server = start_redis(["--appendonly", "yes", "--appendfsync", "always"])
    gateway = start_gateway(
        workers_env(
            redis_server.url,
            WORKERS,
            REDIS_SOCKET_TIMEOUT=str(SOCKET_TIMEOUT),
            REDIS_RECOVERY_TIMEOUT=str(RECOVERY_TIMEOUT),
        ),
        http=True,
    )
    channels = channel_per_worker(gateway.target)
    assert sorted(channels) == list(range(WORKERS)), f"reached workers {sorted(channels)}"
    opened_before = {w: opened(gateway, w) for w in range(WORKERS)}
    load = Load(gateway.target, "blip", threads=6, deadline=CALL_DEADLINE, max_seconds=60)
    callers = {w: Caller(channels[w], max_seconds=60) for w in range(WORKERS)}
    try:
        with load:
            for caller in callers.values():
                caller.__enter__()
            load.wait_for_requests(200, timeout=10)

            # 1. A 3 s stall.
            redis_server.pause()
            try:
                time.sleep(STALL_SECONDS)
            finally:
                redis_server.resume()
            resumed_at = time.monotonic()
            recovered = wait_all(callers, resumed_at, RECOVERY_BOUND + 2)
            opened_blip = {w: opened(gateway, w) - opened_before[w] for w in range(WORKERS)}
            blip_load = load.records_since(resumed_at)

            # 2. Redis down for 10 s: count each worker's probes (only once the blip is
            # over: a breaker still open from it would be counted from the wrong start).
            probes_down: dict[int, int] = {}
            after_restart: dict[int, float | None] = {}
            down_for = 0.0
            end = time.monotonic() + 10
            while any(breaker_state(gateway, w) != 0 for w in range(WORKERS)):
                if time.monotonic() >= end or None in recovered.values():
                    break
                time.sleep(0.1)
            else:
                probes_before = {w: probes(gateway, w) for w in range(WORKERS)}
                redis_server.kill()
                killed_at = time.monotonic()
                time.sleep(DOWN_SECONDS)
                probes_down = {w: probes(gateway, w) - probes_before[w] for w in range(WORKERS)}
                down_for = time.monotonic() - killed_at
                redis_server.restart()
                restarted_at = time.monotonic()
                after_restart = wait_all(callers, restarted_at, RECOVERY_TIMEOUT / 2)
    finally:
        for caller in callers.values():
            caller.__exit__()
        for channel in channels.values():
            channel.close()
    summary = summarize(load.records)
    serving = bool(after_restart) and None not in after_restart.values()
    # Read back only through a serving gateway (else the drill fails below anyway).
    lost = read_back(gateway.target, load.acked) if serving else None
    most = schedule_allows(down_for)

    def seconds(values: dict[int, float | None]) -> str:
        return "/".join("never" if v is None else f"{v:.2f}s" for _, v in sorted(values.items()))

    blip_ok = sum(1 for r in blip_load if r.ok and r.end <= resumed_at + RECOVERY_BOUND)
    notes = (
        f"stall {STALL_SECONDS:.0f}s: opened per worker {list(opened_blip.values())}, "
        f"first OK per worker after SIGCONT {seconds(recovered)} (bound {RECOVERY_BOUND}s), "
        f"load OK within the bound {blip_ok}; down {down_for:.1f}s: probes per worker "
        f"{list(probes_down.values())} (schedule allows {most}), first OK per worker "
        f"after restart {seconds(after_restart)}"
    )
    print(notes)
    report(
        DrillRow.of(
            "19 blip recovery by probing",
            summary,
            lost=None if lost is None else len(lost),
            breaker=f"opened={sum(opened_blip.values())}",
            recover_s=max((v for v in recovered.values() if v is not None), default=None),
            notes=notes,
        )
    )
    assert all(n >= 1 for n in opened_blip.values()), f"a breaker never opened: {opened_blip}"
    for worker, took in recovered.items():
        assert took is not None, (
            f"worker {worker} still refused calls {RECOVERY_BOUND + 2:.0f}s after SIGCONT"
        )
        assert took <= RECOVERY_BOUND, f"worker {worker} recovered {took:.2f}s after SIGCONT"
    assert probes_down, "the outage part did not run (a breaker never closed after the blip)"
    for worker, sent in probes_down.items():
        assert 1 <= sent <= most, f"worker {worker} sent {sent} probes in {down_for:.1f}s"
    assert serving, f"first OK per worker after the restart: {after_restart}"
    assert lost == [], f"acknowledged writes lost, e.g. {(lost or [])[:5]}"
    assert summary.bad_reads == 0
