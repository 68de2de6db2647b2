"""The ratios `make bench` states (issue 15): figures of one run in, rows out.

Absolute figures move 2-4x between hosts of one machine kind, so every speed target is
a ratio of two figures measured in the same run. This module is the pure part: it finds
the records a ratio needs, divides, and says whether the target is met. It does no I/O
and measures nothing; scripts/bench.py feeds it and prints its rows, and
scripts/bench_compare.py lines up the rows of two runs.

A ratio whose figures were not measured in the run (`--only unary` has no Pipeline, a
failed part has no record) has no value and `met` None: it says "not measured" rather
than borrowing a figure from another run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Figure", "Measured", "Ratio", "compute_ratios", "ratio_table"]

AT_MOST, AT_LEAST, RECORDED = "<=", ">=", "record"


class Measured(Protocol):
    """What the ratios read from one bench record (scripts/bench.py's Record)."""

    @property
    def name(self) -> str: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def ops_per_s(self) -> float: ...
    @property
    def p50_ms(self) -> float: ...
    @property
    def p99_ms(self) -> float: ...
    @property
    def server_cpu_us_per_op(self) -> float | None: ...
    @property
    def redis_round_trips_per_op(self) -> float | None: ...
    @property
    def redis_cpu_us_per_op(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure a ratio is made of, named so a reader can find its record."""

    label: str
    value: float


@dataclass(frozen=True, slots=True)
class Ratio:
    """One row: `value` = numerator ÷ denominator (or numerator alone for an absolute).

    `op` is "<=" or ">=" against `target`, or "record" for a figure kept for comparison
    between runs (scripts/bench_compare.py) with no target of its own. `value` and `met`
    are None when a figure it needs was not measured in the run.
    """

    name: str
    value: float | None
    target: float | None
    op: str
    met: bool | None
    numerator: Figure | None
    denominator: Figure | None

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "not measured"
        if self.met is None:
            return "recorded"
        return "met" if self.met else "NOT MET"


# The records the ratios read, by (name, concurrency, batch) as scripts/bench.py writes them.
UNARY_GET_C64 = ("cachegate-unary-get", 64, 1)
UNARY_SETEX_C64 = ("cachegate-unary-setex", 64, 1)
UNARY_GET_C1 = ("cachegate-unary-get", 1, 1)
FLOOR_C64 = ("grpcio-floor-get", 64, 1)
LEAN_REDIS_GET_C64 = ("grpcio-floor-redis-get", 64, 1)
REDIS_PY_PIPELINE_100 = ("redis-py", 1, 100)
PIPELINE = "cachegate-pipeline"
STREAM_FLOOR = "grpcio-floor-pipeline"  # the floor's Pipeline: a constant reply per batch
LEAN_PIPELINE = "grpcio-floor-redis-pipeline"  # the floor's Pipeline: one bounded read

Reader = Callable[[Measured], float | None]


def _ops(record: Measured) -> float | None:
    return record.ops_per_s


def _cpu(record: Measured) -> float | None:
    return record.server_cpu_us_per_op


def _p50(record: Measured) -> float | None:
    return record.p50_ms


def _p99(record: Measured) -> float | None:
    return record.p99_ms


def _round_trips(record: Measured) -> float | None:
    return record.redis_round_trips_per_op


def _redis_ceiling(record: Measured) -> float | None:
    """Operations per second Redis's one command thread could serve of this load at
    most: 1 / its CPU per operation, whatever sends it."""
    at_redis = record.redis_cpu_us_per_op
    return 1e6 / at_redis if at_redis else None


class _Run:
    """The records of one run, looked up by what they measured."""

    def __init__(self, records: Sequence[Measured]) -> None:
        self._records = {(r.name, r.concurrency, r.batch): r for r in records}
        self._batches = {(r.name, r.batch): r for r in records}

    def figure(
        self, key: tuple[str, int, int], read: Reader, what: str, scale: float = 1.0
    ) -> Figure | None:
        record = self._records.get(key)
        return _figure(record, read, what, scale)

    def pipeline(
        self, batch: int, read: Reader, what: str, name: str = PIPELINE, scale: float = 1.0
    ) -> Figure | None:
        return _figure(self._batches.get((name, batch)), read, what, scale)

    def pipeline_batches(self) -> list[int]:
        return sorted(batch for name, batch in self._batches if name == PIPELINE)


def _figure(record: Measured | None, read: Reader, what: str, scale: float) -> Figure | None:
    if record is None:
        return None
    value = read(record)
    if value is None:
        return None
    where = f"{record.name} c={record.concurrency} batch={record.batch}"
    label = f"{where}: {what}" if scale == 1.0 else f"{where}: {what} x {scale:g}"
    return Figure(label, value * scale)


def _row(
    name: str,
    numerator: Figure | None,
    denominator: Figure | None,
    op: str,
    target: float | None,
    *,
    absolute: bool = False,
) -> Ratio:
    value: float | None = None
    if absolute:
        value = numerator.value if numerator is not None else None
    elif numerator is not None and denominator is not None and denominator.value > 0:
        value = numerator.value / denominator.value
    met: bool | None = None
    if value is not None and target is not None:
        met = value <= target if op == AT_MOST else value >= target
    return Ratio(name, value, target, op, met, numerator, denominator)


def compute_ratios(records: Sequence[Measured]) -> list[Ratio]:
    """Every ratio of issue 15 with its target; the references that say whether a target
    is within reach on this host (the lean Redis Get and Pipeline, Redis's own ceiling);
    then issue 12's fast paths to the floor."""
    run = _Run(records)
    get_cpu = run.figure(UNARY_GET_C64, _cpu, "server CPU us per call")
    floor_cpu = run.figure(FLOOR_C64, _cpu, "server CPU us per call")
    floor_cpu_100th = run.figure(FLOOR_C64, _cpu, "server CPU us per call", scale=0.01)
    get_rate = run.figure(UNARY_GET_C64, _ops, "calls/s")
    floor_rate = run.figure(FLOOR_C64, _ops, "calls/s")
    redis_py_100 = run.figure(REDIS_PY_PIPELINE_100, _ops, "ops/s")
    rows = [
        _row("unary Get CPU per call / grpcio floor's (c=64)", get_cpu, floor_cpu, AT_MOST, 1.10),
        _row("unary Get calls/s / grpcio floor's (c=64)", get_rate, floor_rate, AT_LEAST, 0.90),
        _row(
            "unary Get p99 ms (c=64; the one absolute)",
            run.figure(UNARY_GET_C64, _p99, "p99 ms"),
            None,
            AT_MOST,
            10.0,
            absolute=True,
        ),
        _row(
            "Pipeline b=100 ops/s / redis-py pipelines of 100",
            run.pipeline(100, _ops, "ops/s"),
            redis_py_100,
            AT_LEAST,
            3.5,
        ),
        _row(
            "Pipeline b=100 CPU per op / (floor CPU per call / 100)",
            run.pipeline(100, _cpu, "server CPU us per op"),
            floor_cpu_100th,
            AT_MOST,
            1.0,
        ),
        _row(
            "Pipeline b=1000 ops/s / redis-py pipelines of 100",
            run.pipeline(1000, _ops, "ops/s"),
            redis_py_100,
            AT_LEAST,
            11.0,
        ),
        _row(
            "Redis round trips per unary Get call (c=64)",
            run.figure(UNARY_GET_C64, _round_trips, "Redis round trips (reads) per call"),
            None,
            AT_MOST,
            0.25,
            absolute=True,
        ),
        _row(
            "unary Get p50 ms (c=1; within 5% of a baseline run)",
            run.figure(UNARY_GET_C1, _p50, "p50 ms"),
            None,
            RECORDED,
            None,
            absolute=True,
        ),
        # Issue 12: the fast paths may not lose more than 5% against the floor of their
        # own run; these rows carry that figure for bench_compare.py to set side by side.
        _row("fast path: unary Get calls/s / floor calls/s", get_rate, floor_rate, RECORDED, None),
        _row(
            "fast path: unary SetEx calls/s / floor calls/s",
            run.figure(UNARY_SETEX_C64, _ops, "calls/s"),
            floor_rate,
            RECORDED,
            None,
        ),
    ]
    # The leanest thread-pool Get on Redis (the floor reading each key on its thread's
    # own connection): where it misses a unary target, no Get that has a round trip of
    # its own can meet it on this host; the second pair is what cachegate's guarantees cost.
    lean_cpu = run.figure(LEAN_REDIS_GET_C64, _cpu, "server CPU us per call")
    lean_rate = run.figure(LEAN_REDIS_GET_C64, _ops, "calls/s")
    rows += [
        _row(
            "lean Redis Get CPU per call / grpcio floor's (c=64)",
            lean_cpu,
            floor_cpu,
            AT_MOST,
            1.10,
        ),
        _row(
            "lean Redis Get calls/s / grpcio floor's (c=64)", lean_rate, floor_rate, AT_LEAST, 0.90
        ),
        _row("unary Get CPU per call / lean Redis Get's (c=64)", get_cpu, lean_cpu, RECORDED, None),
        _row("unary Get calls/s / lean Redis Get's (c=64)", get_rate, lean_rate, RECORDED, None),
    ]
    # The leanest Pipeline of gets on Redis (the floor's stream handler doing one bounded
    # read per batch): where it misses a Pipeline target, no gateway that reads as issue
    # 12 requires meets it on this host.
    lean_100_cpu = run.pipeline(100, _cpu, "server CPU us per op", LEAN_PIPELINE)
    rows += [
        _row(
            "lean Redis Pipeline b=100 ops/s / redis-py pipelines of 100",
            run.pipeline(100, _ops, "ops/s", LEAN_PIPELINE),
            redis_py_100,
            AT_LEAST,
            3.5,
        ),
        _row(
            "lean Redis Pipeline b=100 CPU per op / (floor CPU per call / 100)",
            lean_100_cpu,
            floor_cpu_100th,
            AT_MOST,
            1.0,
        ),
        _row(
            "lean Redis Pipeline b=1000 ops/s / redis-py pipelines of 100",
            run.pipeline(1000, _ops, "ops/s", LEAN_PIPELINE),
            redis_py_100,
            AT_LEAST,
            11.0,
        ),
        _row(
            "Pipeline b=100 CPU per op / lean Redis Pipeline's",
            run.pipeline(100, _cpu, "server CPU us per op"),
            lean_100_cpu,
            RECORDED,
            None,
        ),
        _row(
            "Pipeline b=1000 ops/s / lean Redis Pipeline's",
            run.pipeline(1000, _ops, "ops/s"),
            run.pipeline(1000, _ops, "ops/s", LEAN_PIPELINE),
            RECORDED,
            None,
        ),
        # grpcio's own cost of one stream message (a constant reply of 100 values)
        # against one unary call's: the floor under every Pipeline figure.
        _row(
            "stream floor CPU per b=100 message / floor CPU per call",
            run.pipeline(100, _cpu, "server CPU us per op", STREAM_FLOOR, scale=100),
            floor_cpu,
            RECORDED,
            None,
        ),
    ]
    # Redis's own ceiling for the Pipeline load as sent (the bounded read, issue 12):
    # where it is below a target, no gateway can meet that target on this host.
    for batch, target in ((100, 3.5), (1000, 11.0)):
        ceiling = run.pipeline(batch, _redis_ceiling, "1e6 / Redis command-thread CPU us per op")
        rows.append(
            _row(
                f"Redis's ceiling at Pipeline b={batch} / redis-py pipelines of 100",
                ceiling,
                redis_py_100,
                AT_LEAST,
                target,
            )
        )
        rows.append(
            _row(
                f"Pipeline b={batch} ops/s / Redis's ceiling for it",
                run.pipeline(batch, _ops, "ops/s"),
                ceiling,
                RECORDED,
                None,
            )
        )
    for batch in run.pipeline_batches() or [10, 100, 1000]:
        rows.append(
            _row(
                f"fast path: Pipeline b={batch} ops/s / floor calls/s",
                run.pipeline(batch, _ops, "ops/s"),
                floor_rate,
                RECORDED,
                None,
            )
        )
    return rows


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"


def ratio_table(rows: Sequence[Ratio]) -> str:
    """The rows as `make bench` prints them last; the figures' labels are in the JSON."""
    head = f"{'ratio':64} {'value':>9} {'target':>9}  verdict       from"
    lines = [head, "-" * len(head)]
    for row in rows:
        target = f"{row.op} {row.target:g}" if row.target is not None else row.op
        figures = [_number(f.value) for f in (row.numerator, row.denominator) if f is not None]
        source = " / ".join(figures) if row.value is not None else ""
        lines.append(
            f"{row.name:64} {_number(row.value):>9} {target:>9}  {row.verdict:12}  {source}"
        )
    return "\n".join(lines)
