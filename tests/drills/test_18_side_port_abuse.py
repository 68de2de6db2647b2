"""Drill 18: the HTTP side port under abuse must not grow the worker or starve gRPC.

One worker process (the side port lives inside it) on a Redis backend. While a gRPC
bystander calls, the drill opens `IDLE` connections to the side port that never send a
byte, runs a slowloris (a request head dripped one byte every `DRIP` seconds), and makes
`QUICK` quick connects (connect, GET /, read, close) from `QUICK_THREADS` threads at
once, and scrapes /metrics every half second. Expected: the worker's thread count stays
bounded (counted in /proc/<pid>/task), no quick connect waits for a SYN retry (~1 s),
the slowloris is cut off by the read timeout, /metrics keeps answering, the bystander
keeps p99 <= 50 ms with every call OK, and every acknowledged write survives.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from drills.attack import Bystander, MemoryWatch, attack_row, workers_env
from drills.harness import Report, Sampler, StartGateway, StartRedis
from drills.load import percentile, read_back

pytestmark = pytest.mark.drill

IDLE = 400
QUICK = 200
QUICK_THREADS = 20
DRIP = 0.5
SLOWLORIS_SECONDS = 12.0
READ_TIMEOUT = 5.0  # the default of CACHEGATE_HTTP_READ_TIMEOUT
THREAD_GROWTH = 16
SYN_RETRY = 0.9  # a connect that took this long waited for a SYN retransmission
P99_MS = 50.0


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _slowloris(port: int, result: dict[str, float]) -> None:
    """Drip a request head; how long until the server closed the connection."""
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.settimeout(DRIP)
        for i in range(len(head)):
            if time.monotonic() - start > SLOWLORIS_SECONDS:
                break
            try:
                sock.sendall(head[i : i + 1])
                if sock.recv(1024) == b"":
                    break
                break  # the server answered (408) before closing
            except TimeoutError:
                continue  # nothing from the server yet: drip on
            except OSError:
                break
    result["held"] = time.monotonic() - start


def _quick(port: int, count: int, connects: list[float], failures: list[str]) -> None:
    for _ in range(count):
        start = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                connects.append(time.monotonic() - start)
                sock.settimeout(5)
                sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                with contextlib.suppress(OSError):
                    while sock.recv(4096):
                        pass
        except OSError as exc:
            failures.append(type(exc).__name__)


def _scrape(port: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        return 1.0 if response.status == 200 and b"cachegate_info" in body else 0.0
    finally:
        connection.close()


def test_side_port_abuse(
    start_redis: StartRedis, start_gateway: StartGateway, report: Report, tmp_path: Path
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(workers_env(redis_server.url, workers=1), http=True)
    assert gateway.http_port is not None
    port = gateway.http_port
    baseline = _threads(gateway.pid)
    idle: list[socket.socket] = []
    idle_connects: list[float] = []
    quick_connects: list[float] = []
    quick_failures: list[str] = []
    slow: dict[str, float] = {}
    with (
        MemoryWatch(gateway, max_seconds=60) as memory,
        Sampler(lambda: float(_threads(gateway.pid)), 0.1, 40) as threads,
        Bystander(gateway.target, threads=2, max_seconds=25) as bystander,
    ):
        time.sleep(0.5)
        with Sampler(lambda: _scrape(port), 0.5, 20) as scrapes:
            try:
                for _ in range(IDLE):  # bounded: IDLE connects, each with a timeout
                    start = time.monotonic()
                    try:
                        idle.append(socket.create_connection(("127.0.0.1", port), timeout=3))
                    except OSError:
                        break
                    idle_connects.append(time.monotonic() - start)
                loris = threading.Thread(target=_slowloris, args=(port, slow), daemon=True)
                loris.start()
                workers = [
                    threading.Thread(
                        target=_quick,
                        args=(port, QUICK // QUICK_THREADS, quick_connects, quick_failures),
                        daemon=True,
                    )
                    for _ in range(QUICK_THREADS)
                ]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join(60)
                loris.join(SLOWLORIS_SECONDS + 5)
                time.sleep(1.0)  # a few more scrapes with the idle connections still open
            finally:
                for sock in idle:
                    sock.close()
    peak_threads = int(max(threads.values(), default=0))
    scraped = [v for _, v in scrapes.samples]
    slow_connects = sum(1 for t in idle_connects + quick_connects if t >= SYN_RETRY)
    quick_p99 = percentile(quick_connects, 99) * 1000
    lost = len(read_back(gateway.target, bystander.load.acked))
    summary = bystander.summary
    report(
        attack_row(
            "18 side port abuse",
            bystander,
            memory,
            lost=lost,
            notes=(
                f"threads {baseline}->{peak_threads}; idle={len(idle)} "
                f"connects>={SYN_RETRY}s: {slow_connects} of "
                f"{len(idle_connects) + len(quick_connects)} "
                f"(quick p99={quick_p99:.1f}ms max={max(quick_connects, default=0) * 1000:.0f}ms "
                f"failed={len(quick_failures)}); slowloris held {slow.get('held', -1):.1f}s; "
                f"/metrics ok {int(sum(v for v in scraped if v))}/{len(scraped)}"
            ),
        )
    )
    assert len(idle) == IDLE
    assert peak_threads - baseline <= THREAD_GROWTH, (baseline, peak_threads)
    assert slow_connects == 0
    assert not quick_failures
    assert len(quick_connects) == QUICK
    assert slow.get("held", 99) <= READ_TIMEOUT + 1.5
    assert scraped
    assert all(v == 1.0 for v in scraped), scraped
    assert set(summary.failed) == set(), summary.failed
    assert bystander.p99_ms() <= P99_MS
    assert lost == 0
    assert not memory.killed
