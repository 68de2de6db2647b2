"""Two `make bench` runs' ratios side by side: `scripts/bench_compare.py A.json B.json`.

For each ratio of the runs' JSON (scripts/bench.py writes them; scripts/bench_ratios.py
computes them) it prints A's value, B's value and B's change against A in percent, so
"the fast paths stay within 5% against the grpcio floor" (issue 12) and "the c=1 p50
within 5% of a baseline" (issue 15) can be read off two commits' runs. Only ratios are
compared: each is made of figures of one run, so the machine's drift between the runs
cancels out, where absolute figures move 2-4x between hosts.

A ratio missing from one run (an older JSON, `--only`) or not measured in it prints "-".
`--within PCT` makes the exit status 1 when any ratio present in both runs moved by more
than PCT percent in either direction (the default prints only); `--match TEXT` keeps the
ratios whose name contains TEXT, e.g. `--match "fast path" --within 5` for issue 12.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["compare", "load_ratios", "main"]


def load_ratios(path: Path) -> dict[str, float | None]:
    """The ratios of one bench JSON by name; an older JSON (a bare list) has none."""
    data: Any = json.loads(path.read_text())
    if not isinstance(data, dict):
        return {}
    return {row["name"]: row["value"] for row in data.get("ratios", [])}


def change_percent(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return (after - before) / before * 100


def compare(
    before: dict[str, float | None], after: dict[str, float | None]
) -> list[tuple[str, float | None, float | None, float | None]]:
    """(name, A, B, change %) for every ratio of either run, in A's order then B's."""
    names = list(before) + [name for name in after if name not in before]
    rows = []
    for name in names:
        a, b = before.get(name), after.get(name)
        rows.append((name, a, b, change_percent(a, b)))
    return rows


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the baseline run's JSON (A)")
    parser.add_argument("after", type=Path, help="the run to compare with it (B)")
    parser.add_argument(
        "--within", type=float, help="exit 1 when a ratio moved by more than this percent"
    )
    parser.add_argument("--match", default="", help="only the ratios whose name contains this")
    args = parser.parse_args(argv)
    rows = compare(load_ratios(args.before), load_ratios(args.after))
    rows = [row for row in rows if args.match in row[0]]
    if not rows:
        print(
            "bench_compare: no ratios to compare (files before issue 15? --match?)", file=sys.stderr
        )
        return 1
    print(f"{'ratio':56} {'A':>10} {'B':>10} {'change':>8}")
    print("-" * 87)
    moved = []
    for name, a, b, change in rows:
        shown = "-" if change is None else f"{change:+.1f}%"
        print(f"{name:56} {_number(a):>10} {_number(b):>10} {shown:>8}")
        if change is not None and args.within is not None and abs(change) > args.within:
            moved.append(name)
    if moved:
        print(f"\nmoved by more than {args.within:g}%: {', '.join(moved)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
