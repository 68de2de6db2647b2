"""Many threads sharing a few Redis connections: latency percentiles, errors and throughput.

Used by the pool fairness test (tests/integration/test_pool_fairness.py) and by
`make bench` (scripts/bench.py --only pool), so both measure the same thing: a busy
threaded application calling GET through a bounded pool. A fair pool keeps the slowest
calls within a few times its p99; an unfair one lets a few waiters lose the race for a
freed connection again and again until their pool timeout fails the call.

The load is bounded in count (`calls_per_thread`) and in time (`seconds`) and stops by
itself; every thread starts at the same moment (a barrier).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["KEYS", "VALUE", "PoolLoad", "hammer", "percentile"]

KEYS = 1000
VALUE = b"v" * 32


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for no values)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(frozen=True, slots=True)
class PoolLoad:
    """What one run saw. Latencies are in seconds, ascending, failed calls included."""

    name: str
    threads: int
    latencies: list[float]
    errors: dict[str, int]
    elapsed: float

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def ops_per_s(self) -> float:
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0

    def ms(self, fraction: float) -> float:
        return percentile(self.latencies, fraction) * 1000

    @property
    def max_ms(self) -> float:
        return self.latencies[-1] * 1000 if self.latencies else 0.0

    def row(self) -> str:
        errors = ", ".join(f"{n} {kind}" for kind, n in sorted(self.errors.items())) or "0"
        return (
            f"{self.name:34} {self.threads:4} {self.ops_per_s:9,.0f} {self.ms(0.5):8.2f} "
            f"{self.ms(0.99):8.2f} {self.ms(0.999):9.2f} {self.max_ms:9.2f}  "
            f"{self.calls} calls, errors: {errors}"
        )

    @staticmethod
    def header() -> str:
        return (
            f"{'pool':34} {'thr':>4} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'p99.9 ms':>9} {'max ms':>9}  calls and errors"
        )


def hammer(
    name: str,
    get: Callable[[str], Any],
    *,
    threads: int = 32,
    seconds: float = 2.0,
    calls_per_thread: int = 50_000,
    expect: bytes | None = VALUE,
) -> PoolLoad:
    """`threads` threads call `get(key)` back to back for `seconds` (or their call cap).

    A call that raises counts as an error of its exception type (its latency is kept);
    a wrong value raises AssertionError at the end.
    """
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    wrong: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def work(n: int) -> None:
        mine: list[float] = []
        failed: collections.Counter[str] = collections.Counter()
        clock = time.perf_counter
        start_line.wait()
        stop = stop_at[0]
        i = n
        for _ in range(calls_per_thread):
            began = clock()
            if began >= stop:
                break
            key = f"k{i % KEYS}"
            try:
                value = get(key)
            except Exception as exc:  # counted and shown, never hidden
                failed[type(exc).__name__] += 1
            else:
                if expect is not None and value != expect and len(wrong) < 5:
                    wrong.append(f"{key}: {value!r}")
            mine.append(clock() - began)
            i += threads
        with lock:
            latencies.extend(mine)
            errors.update(failed)

    pool = [threading.Thread(target=work, args=(n,), name=f"load-{n}") for n in range(threads)]
    for thread in pool:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start_line.wait()
    for thread in pool:
        thread.join(timeout=seconds + 60)
    elapsed = time.perf_counter() - began
    if wrong:
        raise AssertionError(f"{name}: wrong values read: {wrong}")
    latencies.sort()
    return PoolLoad(name, threads, latencies, dict(errors), elapsed)
