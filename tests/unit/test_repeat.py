"""RepeatedMessage: one line, then repeats at doubling intervals, with a count (fake clock)."""

from __future__ import annotations

import pytest

from cachegate.core import RepeatedMessage, RepeatPolicy


def told(message: RepeatedMessage, times: list[float]) -> list[tuple[float, int]]:
    """(time, held back) of each occurrence that gets a line."""
    lines = []
    for now in times:
        held = message.occur(now)
        if held is not None:
            lines.append((now, held))
    return lines


def test_every_half_second_for_three_seconds_gives_three_lines() -> None:
    # The start-up check runs every 0.5 s: 7 occurrences, 3 lines.
    ticks = [100 + 0.5 * i for i in range(7)]
    assert told(RepeatedMessage(), ticks) == [(100.0, 0), (101.0, 1), (103.0, 3)]


def test_intervals_double_up_to_the_cap_and_count_what_they_held() -> None:
    message = RepeatedMessage(RepeatPolicy(first_interval=1, max_interval=8))
    lines = told(message, [float(t) for t in range(0, 40)])
    assert [t for t, _ in lines] == [0, 1, 3, 7, 15, 23, 31, 39]  # gaps 1, 2, 4, 8, 8, ...
    assert [held for _, held in lines] == [0, 0, 1, 3, 7, 7, 7, 7]
    # Every occurrence is either told or counted.
    assert len(lines) + sum(held for _, held in lines) == 40


def test_end_returns_the_held_back_and_the_next_run_is_told_at_once() -> None:
    message = RepeatedMessage(RepeatPolicy(first_interval=10, max_interval=60))
    assert not message.active
    assert message.occur(0) == 0
    assert message.active
    assert message.occur(1) is None
    assert message.occur(2) is None
    assert message.end() == 2
    assert not message.active
    assert message.end() == 0
    assert message.occur(3) == 0  # a new run: told, interval back to the first
    assert message.occur(12) is None
    assert message.occur(13) == 1


@pytest.mark.parametrize(
    ("first", "cap"), [(0, 1), (-1, 1), (1, 0.5), (float("nan"), 1), (1, float("inf"))]
)
def test_a_policy_that_cannot_work_is_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="RepeatPolicy"):
        RepeatPolicy(first_interval=first, max_interval=cap)
