"""`make bench`'s ratios: figures of one run in, rows with targets and verdicts out.

Only the arithmetic and the bookkeeping are tested here (speed stays out of unit tests):
the figures are invented, shaped like issue 15's run of 2026-11-30.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # the bench's modules are scripts, not a package

from bench_compare import compare, load_ratios  # noqa: E402
from bench_compare import main as compare_main  # noqa: E402
from bench_ratios import Ratio, compute_ratios, ratio_table  # noqa: E402


@dataclass(frozen=True, slots=True)
class Row:
    """One bench record: the fields scripts/bench.py's Record has."""

    name: str
    concurrency: int
    batch: int
    ops_per_s: float
    p50_ms: float = 1.0
    p99_ms: float = 5.0
    server_cpu_us_per_op: float | None = None
    redis_round_trips_per_op: float | None = None
    redis_cpu_us_per_op: float | None = None


# Issue 15's run: every ratio misses its target.
ISSUE_15 = [
    Row("redis-py", 1, 100, 180_079.0),
    Row("cachegate-unary-get", 1, 1, 1_000.0, p50_ms=0.415),
    Row("cachegate-unary-get", 64, 1, 7_287.0, p99_ms=14.5, server_cpu_us_per_op=204.0,
        redis_round_trips_per_op=1.0),
    Row("cachegate-unary-setex", 64, 1, 7_000.0, server_cpu_us_per_op=200.0),
    Row("grpcio-floor-get", 64, 1, 12_514.0, server_cpu_us_per_op=138.0),
    Row("cachegate-pipeline", 4, 10, 90_000.0, server_cpu_us_per_op=9.0),
    Row("cachegate-pipeline", 4, 100, 428_252.0, server_cpu_us_per_op=2.08),
    Row("cachegate-pipeline", 4, 1000, 1_330_374.0, server_cpu_us_per_op=0.70),
]  # fmt: skip


def by_name(rows: list[Ratio]) -> dict[str, Ratio]:
    return {row.name: row for row in rows}


def assert_missed(rows: dict[str, Ratio], name: str, value: float, target: float) -> None:
    """The row has this value and misses this target."""
    row = rows[name]
    assert row.value == pytest.approx(value), name
    assert (row.target, row.met) == (target, False), name


def test_issue_15s_run_misses_every_target_with_the_issues_ratios() -> None:
    rows = by_name(compute_ratios(ISSUE_15))
    expected = {
        "unary Get CPU per call / grpcio floor's (c=64)": (204 / 138, 1.10),
        "unary Get calls/s / grpcio floor's (c=64)": (7_287 / 12_514, 0.90),
        "unary Get p99 ms (c=64; the one absolute)": (14.5, 10.0),
        "Pipeline b=100 ops/s / redis-py pipelines of 100": (428_252 / 180_079, 3.5),
        "Pipeline b=100 CPU per op / (floor CPU per call / 100)": (2.08 / 1.38, 1.0),
        "Pipeline b=1000 ops/s / redis-py pipelines of 100": (1_330_374 / 180_079, 11.0),
        "Redis round trips per unary Get call (c=64)": (1.0, 0.25),
    }
    for name, (value, target) in expected.items():
        row = rows[name]
        assert row.value == pytest.approx(value), name
        assert row.target == target, name
        assert row.met is False, name
        assert row.verdict == "NOT MET", name
    # the issue's own reading of that run: 1.48x the floor's CPU, 0.58x its rate
    cpu_ratio = rows["unary Get CPU per call / grpcio floor's (c=64)"].value
    assert cpu_ratio == pytest.approx(1.478, 1e-3)
    assert rows["unary Get calls/s / grpcio floor's (c=64)"].value == pytest.approx(0.582, 1e-3)


def test_each_ratio_keeps_the_two_figures_it_came_from() -> None:
    rows = by_name(compute_ratios(ISSUE_15))
    cpu = rows["Pipeline b=100 CPU per op / (floor CPU per call / 100)"]
    assert cpu.numerator is not None
    assert cpu.denominator is not None
    assert cpu.numerator.value == 2.08
    assert cpu.denominator.value == pytest.approx(1.38)
    assert "cachegate-pipeline c=4 batch=100" in cpu.numerator.label
    assert "grpcio-floor-get c=64" in cpu.denominator.label
    p99 = rows["unary Get p99 ms (c=64; the one absolute)"]
    assert p99.numerator is not None
    assert p99.numerator.value == 14.5
    assert p99.denominator is None


def test_the_targets_are_met_at_their_bounds_and_beyond() -> None:
    good = [
        Row("redis-py", 1, 100, 100_000.0),
        Row("cachegate-unary-get", 64, 1, 9_000.0, p99_ms=10.0, server_cpu_us_per_op=110.0,
            redis_round_trips_per_op=0.25),
        Row("grpcio-floor-get", 64, 1, 10_000.0, server_cpu_us_per_op=100.0),
        Row("cachegate-pipeline", 4, 100, 350_000.0, server_cpu_us_per_op=0.9,
            redis_cpu_us_per_op=1 / 0.35),  # Redis could serve 350,000 a second: 3.5x
        Row("cachegate-pipeline", 4, 1000, 1_200_000.0, server_cpu_us_per_op=0.3,
            redis_cpu_us_per_op=0.5),
    ]  # fmt: skip
    good += [
        Row("grpcio-floor-redis-get", 64, 1, 9_000.0, server_cpu_us_per_op=110.0),
        Row("grpcio-floor-redis-pipeline", 4, 100, 350_000.0, server_cpu_us_per_op=1.0),
        Row("grpcio-floor-redis-pipeline", 4, 1000, 1_100_000.0, server_cpu_us_per_op=0.3),
    ]
    targeted = [row for row in compute_ratios(good) if row.target is not None]
    assert len(targeted) == 14
    assert all(row.met for row in targeted), [r.name for r in targeted if not r.met]


def test_a_figure_not_measured_in_the_run_is_said_so_not_guessed() -> None:
    only_unary = [row for row in ISSUE_15 if row.name.startswith("cachegate-unary")]
    rows = compute_ratios(only_unary)
    floor_ratios = [row for row in rows if "floor" in row.name]
    assert floor_ratios
    assert all(row.value is None and row.met is None for row in floor_ratios)
    assert all(row.verdict == "not measured" for row in floor_ratios)
    pipeline = by_name(rows)["Pipeline b=1000 ops/s / redis-py pipelines of 100"]
    assert (pipeline.value, pipeline.met, pipeline.numerator) == (None, None, None)
    # what was measured in the run is still stated
    assert by_name(rows)["unary Get p99 ms (c=64; the one absolute)"].value == 14.5
    # a record without its CPU figure (pipeline rows always have one; pool rows never)
    no_cpu = [replace(r, server_cpu_us_per_op=None) if r.name == "grpcio-floor-get" else r
              for r in ISSUE_15]  # fmt: skip
    cpu = by_name(compute_ratios(no_cpu))["unary Get CPU per call / grpcio floor's (c=64)"]
    assert (cpu.value, cpu.met, cpu.denominator) == (None, None, None)


def test_redis_s_own_ceiling_says_whether_a_pipeline_target_is_within_reach() -> None:
    # 2026-12-01's run: the bounded read costs Redis's command thread 0.677 us per key at
    # batch 1000, so it serves at most 1.48M keys/s: 7.9x redis-py's pipelines, not 11x.
    run = [
        replace(r, redis_cpu_us_per_op={100: 0.974, 1000: 0.677}[r.batch])
        if r.name == "cachegate-pipeline" and r.batch in (100, 1000) else r
        for r in ISSUE_15
    ]  # fmt: skip
    rows = by_name(compute_ratios(run))
    ceiling = "Redis's ceiling at Pipeline b=1000 / redis-py pipelines of 100"
    assert_missed(rows, ceiling, 1e6 / 0.677 / 180_079, 11.0)
    b1000 = rows[ceiling]
    assert b1000.numerator is not None
    assert "cachegate-pipeline c=4 batch=1000" in b1000.numerator.label
    b100 = rows["Redis's ceiling at Pipeline b=100 / redis-py pipelines of 100"]
    assert b100.value == pytest.approx(1e6 / 0.974 / 180_079)
    assert (b100.target, b100.met) == (3.5, True)
    reached = rows["Pipeline b=1000 ops/s / Redis's ceiling for it"]
    assert reached.value == pytest.approx(1_330_374 * 0.677 / 1e6)
    assert reached.verdict == "recorded"
    # a run that did not read Redis's CPU (an older Redis) has no ceiling
    unread = by_name(compute_ratios(ISSUE_15))
    assert unread["Redis's ceiling at Pipeline b=1000 / redis-py pipelines of 100"].met is None


def test_the_lean_redis_get_says_whether_the_unary_targets_are_within_reach() -> None:
    # 2026-12-01: the floor reading each key on its thread's own connection
    run = [*ISSUE_15, Row("grpcio-floor-redis-get", 64, 1, 9_000.0, server_cpu_us_per_op=180.0)]
    rows = by_name(compute_ratios(run))
    assert_missed(rows, "lean Redis Get CPU per call / grpcio floor's (c=64)", 180 / 138, 1.10)
    assert_missed(rows, "lean Redis Get calls/s / grpcio floor's (c=64)", 9_000 / 12_514, 0.90)
    cost = rows["unary Get CPU per call / lean Redis Get's (c=64)"]
    assert cost.value == pytest.approx(204 / 180)
    assert cost.verdict == "recorded"
    assert rows["unary Get calls/s / lean Redis Get's (c=64)"].value == pytest.approx(7_287 / 9_000)
    # a run without it (bench.py --only redis) says so
    assert (
        by_name(compute_ratios(ISSUE_15))[
            "lean Redis Get CPU per call / grpcio floor's (c=64)"
        ].verdict
        == "not measured"
    )


def test_the_lean_pipeline_says_whether_the_pipeline_targets_are_within_reach() -> None:
    # 2026-12-01: the floor's stream handler, one bounded read per batch; its constant reply
    run = [
        *ISSUE_15,
        Row("grpcio-floor-redis-pipeline", 4, 100, 388_683.0, server_cpu_us_per_op=1.76),
        Row("grpcio-floor-redis-pipeline", 4, 1000, 1_084_036.0, server_cpu_us_per_op=0.59),
        Row("grpcio-floor-pipeline", 4, 100, 538_110.0, server_cpu_us_per_op=0.91),
    ]
    rows = by_name(compute_ratios(run))
    lean = "lean Redis Pipeline b="
    assert_missed(rows, f"{lean}100 ops/s / redis-py pipelines of 100", 388_683 / 180_079, 3.5)
    assert_missed(rows, f"{lean}100 CPU per op / (floor CPU per call / 100)", 1.76 / 1.38, 1.0)
    assert_missed(rows, f"{lean}1000 ops/s / redis-py pipelines of 100", 1_084_036 / 180_079, 11.0)
    assert rows["Pipeline b=100 CPU per op / lean Redis Pipeline's"].value == pytest.approx(
        2.08 / 1.76
    )
    assert rows["Pipeline b=1000 ops/s / lean Redis Pipeline's"].value == pytest.approx(
        1_330_374 / 1_084_036
    )
    stream = rows["stream floor CPU per b=100 message / floor CPU per call"]
    assert stream.value == pytest.approx(91 / 138)  # 0.91 us per op x 100 ops per message
    assert stream.verdict == "recorded"
    # the floor's records never stand in for cachegate's own
    alone = by_name(compute_ratios([r for r in run if r.name != "cachegate-pipeline"]))
    assert alone["Pipeline b=100 ops/s / redis-py pipelines of 100"].verdict == "not measured"


def test_the_c1_p50_and_the_fast_paths_are_recorded_without_a_target() -> None:
    rows = by_name(compute_ratios(ISSUE_15))
    p50 = rows["unary Get p50 ms (c=1; within 5% of a baseline run)"]
    assert (p50.value, p50.target, p50.op, p50.met) == (0.415, None, "record", None)
    fast = {
        "fast path: unary Get calls/s / floor calls/s": 7_287 / 12_514,
        "fast path: unary SetEx calls/s / floor calls/s": 7_000 / 12_514,
        "fast path: Pipeline b=10 ops/s / floor calls/s": 90_000 / 12_514,
        "fast path: Pipeline b=100 ops/s / floor calls/s": 428_252 / 12_514,
        "fast path: Pipeline b=1000 ops/s / floor calls/s": 1_330_374 / 12_514,
    }
    for name, value in fast.items():
        assert rows[name].value == pytest.approx(value), name
        assert rows[name].verdict == "recorded", name


def test_the_table_has_one_line_per_ratio_with_its_verdict() -> None:
    rows = compute_ratios(ISSUE_15[:3])  # no floor, no pipelines
    text = ratio_table(rows).splitlines()
    assert len(text) == 2 + len(rows)
    assert "not measured" in text[2]  # CPU against the floor
    assert "NOT MET" in next(line for line in text if line.startswith("unary Get p99"))


def write_run(path: Path, records: list[Row]) -> Path:
    rows = [asdict(r) for r in compute_ratios(records)]
    path.write_text(json.dumps({"records": [asdict(r) for r in records], "ratios": rows}))
    return path


def test_compare_prints_the_change_of_every_ratio_between_two_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faster = [replace(r, ops_per_s=r.ops_per_s * 1.1) if r.name == "cachegate-pipeline" else r
              for r in ISSUE_15]  # fmt: skip
    a = write_run(tmp_path / "a.json", ISSUE_15)
    b = write_run(tmp_path / "b.json", faster)
    rows = {name: change for name, _, _, change in compare(load_ratios(a), load_ratios(b))}
    assert rows["fast path: Pipeline b=100 ops/s / floor calls/s"] == pytest.approx(10.0)
    assert rows["fast path: unary Get calls/s / floor calls/s"] == pytest.approx(0.0)
    assert compare_main([str(a), str(b)]) == 0
    assert compare_main([str(a), str(b), "--within", "5"]) == 1
    assert compare_main([str(a), str(b), "--within", "11"]) == 0
    assert compare_main([str(a), str(b), "--match", "unary", "--within", "5"]) == 0
    assert compare_main([str(a), str(b), "--match", "no such ratio"]) == 1
    out = capsys.readouterr().out
    assert "+10.0%" in out


def test_compare_reads_an_older_json_as_having_no_ratios(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps([{"name": "cachegate-unary-get"}]))  # before issue 15: a list
    new = write_run(tmp_path / "new.json", ISSUE_15)
    assert load_ratios(old) == {}
    rows = compare(load_ratios(old), load_ratios(new))
    assert rows
    assert all(a is None and change is None for _, a, _, change in rows)
