"""Drill 22: invalidation subscribers that never read, under a flood of changes.

Tokens on, 2 workers on Redis, CACHEGATE_MAX_STREAMS=20. One tenant ("mallory") opens
160 InvalidationService/Subscribe streams on 16 connections, each watching every key of
hers (the prefix ""), and never reads them. A writer then sets FLOOD distinct keys of
~1 KB in her namespace straight in Redis (bounded by count and time), with a key of
another tenant ("alice") among them every PROBE_EVERY writes. Keys that long fill the
HTTP/2 window of a stream that is not read after a few events (short keys would sit in
the client's buffers, megabytes of them, before the server's queue sees any), so each
of her streams' queues then fills: a RESET ("fell behind") takes the place of the
queued keys, and as many keys again unread end the stream.

Passes when:
- mallory holds at most her share of each worker's slots (CACHEGATE_STREAM_SHARE, the
  default 0.25: 5 of 20); her other streams are refused at once, RESOURCE_EXHAUSTED
  naming the share;
- the server ends every one of her admitted streams without her reading a byte (its
  grpc_server_handled_total for Subscribe, RESOURCE_EXHAUSTED, on both workers' side
  ports); read afterwards, each starts with its RESET ("subscribed") and ends
  RESOURCE_EXHAUSTED naming CACHEGATE_INVALIDATION_QUEUE;
- alice, subscribing while mallory's streams are open, is admitted on every connection
  and hears of every one of her probe keys, and her Pipelines (8 fresh connections)
  all answer OK;
- each worker's peak RSS stays within the memory budget plus the fixed base, no worker
  dies, a bystander tenant's unary calls keep p99 <= 50 ms and their acknowledged
  writes read back.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from cachegate.v1 import invalidation_pb2 as ipb
from cachegate.v1 import invalidation_pb2_grpc as ipb_grpc
from drills.attack import (
    BASE_MB,
    BUDGET_MB,
    BYSTANDER_P99_MS,
    Bystander,
    MemoryWatch,
    attack_row,
    gateway_pids,
    tokens_file,
    workers_env,
)
from drills.harness import Gateway, Report, StartGateway, StartRedis
from drills.load import CHANNEL_OPTIONS, read_back
from drills.test_15_stream_lockout import OTHERS, TOKENS, bearer, other_tenant_pipelines

pytestmark = pytest.mark.drill

MAX_STREAMS = 20
SHARE = 5  # the default CACHEGATE_STREAM_SHARE of 0.25 x MAX_STREAMS
CONNECTIONS, PER_CONNECTION = 16, 10
QUEUE = 10_000  # CACHEGATE_INVALIDATION_QUEUE's default
# A stream ends after QUEUE keys queued and QUEUE more missed, plus what its HTTP/2
# window took (~4,000 keys this long): 40,000 is well past it.
FLOOD = 40_000
FLOOD_SECONDS = 20.0
KEY_PAD = "x" * 1000  # with "flood:NNNNNNNN:", within CACHEGATE_MAX_KEY_BYTES
PROBE_EVERY = 1000
ALICE_CONNECTIONS = 4
END_WAIT = 10.0  # seconds after the flood for the server to end mallory's streams
DRAIN_SECONDS = 5.0


def side_port_text(gateway: Gateway, worker: int) -> str:
    """Worker `worker`'s /metrics (its side port is the base port plus its index)."""
    assert gateway.http_port is not None
    connection = http.client.HTTPConnection("127.0.0.1", gateway.http_port + worker, timeout=5)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def handled_subscribes(gateway: Gateway, code: str) -> int:
    """Subscribe calls the server ended with `code`, summed over both workers."""
    total = 0.0
    for worker in (0, 1):
        for line in side_port_text(gateway, worker).splitlines():
            if (
                line.startswith("grpc_server_handled_total{")
                and 'grpc_method="Subscribe"' in line
                and f'grpc_code="{code}"' in line
            ):
                total += float(line.rpartition(" ")[2])
    return int(total)


class Listener:
    """A subscriber that reads: one stream per fresh connection, watching `prefix`;
    the keys each stream heard, its RESETs and how it ended."""

    def __init__(self, target: str, tenant: str, prefix: str, max_seconds: float) -> None:
        self.channels = [
            grpc.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(ALICE_CONNECTIONS)
        ]
        self.heard: list[set[str]] = [set() for _ in self.channels]
        self.resets: list[list[str]] = [[] for _ in self.channels]
        self.ends: list[str] = ["open"] * len(self.channels)
        self.calls: list[Any] = [
            ipb_grpc.InvalidationServiceStub(channel).Subscribe(
                ipb.SubscribeRequest(prefixes=[prefix]),
                timeout=max_seconds,
                metadata=bearer(tenant),
            )
            for channel in self.channels
        ]
        self.threads = [
            threading.Thread(target=self._read, args=(i,), daemon=True)
            for i in range(len(self.calls))
        ]
        for thread in self.threads:
            thread.start()

    def _read(self, index: int) -> None:
        try:
            for event in self.calls[index]:
                if event.kind == ipb.INVALIDATION_KIND_RESET:
                    self.resets[index].append(event.reason)
                else:
                    self.heard[index].update(event.keys)
            self.ends[index] = "OK"
        except grpc.RpcError as exc:
            self.ends[index] = exc.code().name

    def wait_live(self, timeout: float) -> bool:
        """Every stream has had its first RESET (the server tracks changes for it)."""
        give_up = time.monotonic() + timeout
        while not all(self.resets) and time.monotonic() < give_up:
            if any(end != "open" for end in self.ends):
                return False
            time.sleep(0.02)
        return all(self.resets)

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for thread in self.threads:
            thread.join(5)
        for channel in self.channels:
            channel.close()


class Silent:
    """mallory: CONNECTIONS x PER_CONNECTION Subscribe streams watching everything of
    hers, never read until `drain`."""

    def __init__(self, target: str, max_seconds: float) -> None:
        self.channels = [
            grpc.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(CONNECTIONS)
        ]
        request = ipb.SubscribeRequest(prefixes=[""])
        self.calls: list[Any] = [
            ipb_grpc.InvalidationServiceStub(channel).Subscribe(
                request, timeout=max_seconds, metadata=bearer("mallory")
            )
            for channel in self.channels
            for _ in range(PER_CONNECTION)
        ]

    def drain(self) -> list[tuple[list[str], str, str]]:
        """Read every stream now, each in its own thread for at most DRAIN_SECONDS:
        (the RESET reasons it read, its code, its details); "open" for one that did not
        end."""
        results: list[tuple[list[str], str, str]] = [([], "open", "")] * len(self.calls)

        def read(index: int) -> None:
            resets: list[str] = []
            try:
                for event in self.calls[index]:
                    if event.kind == ipb.INVALIDATION_KIND_RESET:
                        resets.append(event.reason)
                results[index] = (resets, "OK", "")
            except grpc.RpcError as exc:
                results[index] = (resets, exc.code().name, exc.details() or "")

        threads = [
            threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(self.calls))
        ]
        for thread in threads:
            thread.start()
        give_up = time.monotonic() + DRAIN_SECONDS
        for thread in threads:
            thread.join(max(0.0, give_up - time.monotonic()))
        return list(results)

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            channel.close()


def flood(client: Any) -> tuple[int, list[str], float]:
    """FLOOD long keys in mallory's namespace, an alice probe every PROBE_EVERY, in
    pipelines of PROBE_EVERY; bounded by FLOOD_SECONDS. (keys written, probes, seconds)"""
    start = time.monotonic()
    written = 0
    probes: list[str] = []
    while written < FLOOD and time.monotonic() - start < FLOOD_SECONDS:
        pipe = client.pipeline(transaction=False)
        for index in range(written, written + PROBE_EVERY):
            pipe.set(f"mallory:flood:{index:08d}:{KEY_PAD}", b"v", ex=120)
        probe = f"probe:{len(probes)}"
        pipe.set(f"alice:{probe}", b"p", ex=120)
        pipe.execute()
        written += PROBE_EVERY
        probes.append(probe)
    return written, probes, time.monotonic() - start


def test_subscribers_that_never_read(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report, tmp_path: Path
) -> None:
    tokens = tokens_file(tmp_path, TOKENS)
    redis_server = start_redis()
    gateway = start_gateway(
        workers_env(
            redis_server.url,
            CACHEGATE_TOKENS_FILE=str(tokens),
            CACHEGATE_MAX_STREAMS=str(MAX_STREAMS),
            CACHEGATE_INVALIDATION_QUEUE=str(QUEUE),
        ),
        http=True,
    )
    pids = set(gateway_pids(gateway))
    assert len(pids) == 3, f"expected a supervisor and 2 workers: {pids}"
    writer = redis_server.client()
    silent = Silent(gateway.target, max_seconds=60)
    alice: Listener | None = None
    bystander = Bystander(gateway.target, max_seconds=40, metadata=bearer("carol"))
    with MemoryWatch(gateway, max_seconds=60) as memory, bystander:
        try:
            time.sleep(0.5)  # the bystander's calm baseline
            time.sleep(0.5)  # mallory's refusals arrive
            refused_at_once = handled_subscribes(gateway, "RESOURCE_EXHAUSTED")
            alice = Listener(gateway.target, "alice", "probe:", max_seconds=50)
            alice_live = alice.wait_live(10)
            others = other_tenant_pipelines(gateway.target)
            written, probes, flood_seconds = flood(writer)
            flood_end = time.monotonic()
            # The server ends every one of mallory's streams by itself: she has not read
            # a byte of them yet.
            ended_by_server = 0
            while time.monotonic() - flood_end < END_WAIT:
                ended_by_server = handled_subscribes(gateway, "RESOURCE_EXHAUSTED")
                if ended_by_server >= len(silent.calls):
                    break
                time.sleep(0.1)
            ended_after = time.monotonic() - flood_end
            # alice's last probe arrives (her streams read as they go).
            give_up = time.monotonic() + 5
            while time.monotonic() < give_up and not all(
                set(probes) <= heard for heard in alice.heard
            ):
                time.sleep(0.05)
            drained = silent.drain()
        finally:
            silent.close()
            if alice is not None:
                alice.close()
        time.sleep(0.5)  # the bystander after the attack
    assert alice is not None
    share_refused = [r for r in drained if "CACHEGATE_STREAM_SHARE" in r[2]]
    queue_ended = [r for r in drained if "CACHEGATE_INVALIDATION_QUEUE" in r[2]]
    codes = Counter(code for _, code, _ in drained)
    admitted = len(queue_ended)
    first_resets = Counter(r[0][0] if r[0] else "-" for r in queue_ended)
    missed = [len(set(probes) - heard) for heard in alice.heard]
    alive = set(gateway_pids(gateway))
    lost = read_back(gateway.target, bystander.load.acked, metadata=bearer("carol"))
    report(
        attack_row(
            "22 subscriber flood",
            bystander,
            memory,
            lost=len(lost),
            notes=f"mallory streams={len(drained)}: refused for share={len(share_refused)}, "
            f"ended for the queue={len(queue_ended)} (first event {dict(first_resets)}), "
            f"codes {dict(codes)}; server-side RESOURCE_EXHAUSTED {refused_at_once} at once, "
            f"{ended_by_server}/{len(drained)} {ended_after:.2f}s after {written} writes "
            f"in {flood_seconds:.2f}s; "
            f"alice: live={alice_live}, probes missed {missed} of {len(probes)}, "
            f"resets {[Counter(r) for r in alice.resets]}, "
            f"streams {Counter(alice.ends)}, Pipelines {dict(Counter(others))}",
        )
    )
    assert alice_live, f"alice's subscriptions: resets {alice.resets}, ends {alice.ends}"
    assert admitted <= 2 * SHARE, f"mallory held {admitted} slots; her share is {SHARE}/worker"
    assert admitted >= SHARE, f"only {admitted} of mallory's streams admitted"
    assert set(codes) == {"RESOURCE_EXHAUSTED"}, dict(codes)
    assert len(share_refused) + admitted == len(drained), "a stream ended for another reason"
    assert ended_by_server == len(drained), (
        f"the server ended {ended_by_server} of mallory's {len(drained)} streams "
        f"within {END_WAIT}s of the flood, before she read any"
    )
    assert set(first_resets) == {"subscribed"}, dict(first_resets)
    # A RESET after the first (Redis dropped the tracking connection and it was opened
    # again) stands in for the keys it covers, as the contract says; nothing else may.
    unexplained = [m for m, resets in zip(missed, alice.resets, strict=True) if len(resets) == 1]
    assert not any(unexplained), f"alice's probes not heard, and no RESET: {missed}"
    assert alice.ends == ["CANCELLED"] * ALICE_CONNECTIONS, alice.ends  # ours, at the end
    assert others == ["OK"] * OTHERS, f"alice's Pipelines: {others}"
    peak = memory.max_worker_mb
    assert peak <= BUDGET_MB + BASE_MB, f"peak RSS {peak:.0f} MB > {BUDGET_MB} + {BASE_MB}"
    assert memory.killed == []
    assert alive == pids, f"workers before {pids}, after {alive}"
    assert bystander.p99_ms() <= BYSTANDER_P99_MS, bystander.text()
    assert bystander.summary.ok >= 100, bystander.text()
    assert not bystander.summary.failed, bystander.text()
    assert lost == []
