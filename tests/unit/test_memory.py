"""Each worker's part of the memory (runtime/_memory.py), on given figures and file trees.

The cgroup files are given as text, as the kernel writes them, either as a mapping or as
a fake tree under tmp_path read through the real file reader; a real cgroup is used by
tests/integration/test_worker_placement.py where the machine allows it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cachegate.core import REPLY_COPIES, LimitSettings, load_config
from cachegate.runtime._cpus import CpuQuota
from cachegate.runtime._memory import (
    WORKER_BASE_BYTES,
    MemoryLimit,
    budget_floor,
    memory_ceiling,
    memory_shares,
    parse_limit_in_bytes,
    parse_memory_max,
    physical_memory,
    read_memory_limit,
    workers_that_fit,
)
from cachegate.runtime._plan import plan_workers, worker_config

MIB = 1024 * 1024
GIB = 1024 * MIB
REDIS = {"CACHEGATE_BACKEND": "redis"}
DEFAULTS = LimitSettings()
BUDGET_CAP, STALE_CAP = DEFAULTS.memory_budget_bytes, DEFAULTS.stale_copy_bytes
FLOOR = REPLY_COPIES * DEFAULTS.max_receive_message_bytes


def cgroup(size: int) -> MemoryLimit:
    return MemoryLimit(size, "cgroup")


# --- the files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "limit"),
    [("536870912\n", 512 * MIB), ("max\n", None), ("", None), ("garbage\n", None), ("0", None)],
)
def test_cgroup_v2_memory_max(text: str, limit: int | None) -> None:
    assert parse_memory_max(text) == limit


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("1073741824\n", GIB),
        ("9223372036854771712\n", None),  # the kernel's "no limit" (4 KiB pages)
        ("9223372036854775807\n", None),
        ("-1\n", None),
        ("", None),
    ],
)
def test_cgroup_v1_limit_in_bytes_where_a_huge_figure_is_none(text: str, limit: int | None) -> None:
    assert parse_limit_in_bytes(text) == limit


def test_read_memory_limit_takes_the_tightest_of_our_cgroup_and_its_parents() -> None:
    files = {
        "/proc/self/cgroup": "0::/pods/pod1/c1\n",
        "/sys/fs/cgroup/pods/pod1/c1/memory.max": "max\n",
        "/sys/fs/cgroup/pods/pod1/memory.max": "1073741824\n",
        "/sys/fs/cgroup/pods/memory.max": "8589934592\n",
    }
    assert read_memory_limit(files.get) == GIB
    files["/sys/fs/cgroup/pods/pod1/c1/memory.max"] = "536870912\n"
    assert read_memory_limit(files.get) == 512 * MIB


def test_read_memory_limit_in_a_v1_container_whose_listing_names_the_host_path() -> None:
    # Without a cgroup namespace the listing names the host's path while the mount's
    # root is the container's own cgroup; the `cpu` line is not the memory's.
    files = {
        "/proc/self/cgroup": "5:cpuacct,cpu:/docker/0123\n4:memory:/docker/0123\n0::/\n",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "805306368\n",
        "/sys/fs/cgroup/cpuacct,cpu/memory.limit_in_bytes": "1048576\n",  # never read
    }
    assert read_memory_limit(files.get) == 768 * MIB


def test_read_memory_limit_without_any_limit_is_none() -> None:
    nothing: dict[str, str] = {}
    assert read_memory_limit(nothing.get) is None
    unlimited = {
        "/proc/self/cgroup": "4:memory:/\n",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
    }
    assert read_memory_limit(unlimited.get) is None


def test_read_memory_limit_from_a_fake_v2_tree(tmp_path: Path) -> None:
    # The real reader (files, not a mapping) over a tree laid out as the kernel's.
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cgroup").write_text("0::/kubepods/pod7/ctr\n")
    ctr = tmp_path / "cg" / "kubepods" / "pod7" / "ctr"
    ctr.mkdir(parents=True)
    (ctr / "memory.max").write_text("max\n")
    (ctr.parent / "memory.max").write_text(f"{640 * MIB}\n")
    # The root of a v2 mount has no memory.max: a missing file is no limit.
    found = read_memory_limit(
        root=str(tmp_path / "cg"), proc_self_cgroup=str(tmp_path / "proc" / "cgroup")
    )
    assert found == 640 * MIB


def test_read_memory_limit_from_a_fake_v1_tree(tmp_path: Path) -> None:
    (tmp_path / "cgroup").write_text("9:memory:/docker/abc\n3:cpu:/docker/abc\n")
    group = tmp_path / "cg" / "memory" / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "memory.limit_in_bytes").write_text(f"{GIB}\n")
    (tmp_path / "cg" / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    root, listing = str(tmp_path / "cg"), str(tmp_path / "cgroup")
    assert read_memory_limit(root=root, proc_self_cgroup=listing) == GIB
    (group / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert read_memory_limit(root=root, proc_self_cgroup=listing) is None


def test_read_memory_limit_on_hybrid_mounts(tmp_path: Path) -> None:
    # Hybrid (systemd's default for years, and this project's CI machine): every
    # controller on a v1 hierarchy, and an empty v2 one at /sys/fs/cgroup/unified that
    # /proc/self/cgroup lists too ("0::..."). The limit is the v1 memory one's; the v2
    # line names no directory with a limit file, so it adds none.
    (tmp_path / "cgroup").write_text(
        "4:memory:/process_api/abc\n2:cpu,cpuacct:/process_api/abc\n0::/user.slice/s1\n"
    )
    group = tmp_path / "cg" / "memory" / "process_api" / "abc"
    group.mkdir(parents=True)
    (group / "memory.limit_in_bytes").write_text(f"{512 * MIB}\n")
    unified = tmp_path / "cg" / "unified" / "user.slice" / "s1"
    unified.mkdir(parents=True)
    (unified / "cgroup.procs").write_text("1\n")  # a v2 cgroup with no controllers
    root, listing = str(tmp_path / "cg"), str(tmp_path / "cgroup")
    assert read_memory_limit(root=root, proc_self_cgroup=listing) == 512 * MIB


def test_the_ceiling_is_the_cgroup_limit_never_above_physical_memory() -> None:
    assert memory_ceiling(GIB, 64 * GIB) == MemoryLimit(GIB, "cgroup")
    assert memory_ceiling(None, 64 * GIB) == MemoryLimit(64 * GIB, "physical")
    assert memory_ceiling(128 * GIB, 64 * GIB) == MemoryLimit(64 * GIB, "physical")
    assert memory_ceiling(GIB, None) == MemoryLimit(GIB, "cgroup")
    assert memory_ceiling(None, None) is None
    physical = physical_memory()
    assert physical is None or physical > 64 * MIB


# --- the arithmetic ----------------------------------------------------------------------


def test_the_documented_512_mib_container_with_two_workers_keeps_todays_defaults() -> None:
    shares = memory_shares(DEFAULTS, cgroup(512 * MIB), 2)
    assert (shares.budget, shares.stale_copy) == (BUDGET_CAP, STALE_CAP)
    assert shares.fits


@pytest.mark.parametrize(
    ("limit", "workers"),
    [(64 * GIB, 16), (GIB, 1), (512 * MIB, 1), (512 * MIB, 2), (24 * GIB, 2)],
)
def test_the_defaults_are_caps_with_more_memory_per_worker(limit: int, workers: int) -> None:
    shares = memory_shares(DEFAULTS, MemoryLimit(limit, "physical"), workers)
    assert (shares.budget, shares.stale_copy) == (BUDGET_CAP, STALE_CAP)


def test_less_memory_per_worker_shrinks_both_in_proportion() -> None:
    # 1 GiB for 5 workers: 204.8 MiB each, less the base, split 8 : 1.
    shares = memory_shares(DEFAULTS, cgroup(GIB), 5)
    room = GIB // 5 - WORKER_BASE_BYTES
    assert shares.budget == room * 8 // 9
    assert shares.stale_copy == room // 9
    assert FLOOR < shares.budget < BUDGET_CAP
    assert 0 < shares.stale_copy < STALE_CAP
    assert shares.fits
    assert 5 * shares.per_worker <= GIB


def test_the_budget_never_goes_below_one_reply_at_the_send_limit() -> None:
    assert budget_floor(DEFAULTS) == FLOOR == 16 * MIB
    # 16 workers in 1 GiB: 64 MiB each is less than the base alone.
    squeezed = memory_shares(DEFAULTS, cgroup(GIB), 16)
    assert squeezed.budget == FLOOR
    assert squeezed.stale_copy == 0  # the stale copy goes first: it is best effort
    assert not squeezed.fits
    # A smaller send limit lowers the floor with it.
    small = load_config({"CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES": str(MIB)}).limits
    assert memory_shares(small, cgroup(GIB), 16).budget == REPLY_COPIES * MIB


def test_set_figures_are_the_operators_and_stay() -> None:
    limits = load_config(
        {"CACHEGATE_MEMORY_BUDGET_BYTES": str(100 * MIB), "CACHEGATE_STALE_COPY_BYTES": "0"}
    ).limits
    assert (limits.memory_budget_set, limits.stale_copy_set) == (True, True)
    for limit in (cgroup(GIB), cgroup(64 * GIB), None):
        shares = memory_shares(limits, limit, 16)
        assert (shares.budget, shares.stale_copy) == (100 * MIB, 0)
    # One set, the other derived from the same room.
    only_budget = load_config({"CACHEGATE_MEMORY_BUDGET_BYTES": str(200 * MIB)}).limits
    shares = memory_shares(only_budget, cgroup(GIB), 5)
    assert (shares.budget, shares.stale_copy) == (200 * MIB, (GIB // 5 - WORKER_BASE_BYTES) // 9)
    assert not shares.fits  # 5 x (112 + 200 + 10) MiB is more than 1 GiB: said, not changed


def test_unset_figures_are_told_apart_from_set_ones_equal_to_the_default() -> None:
    assert not load_config({}).limits.memory_budget_set
    assert not load_config({}).limits.stale_copy_set
    same = load_config({"CACHEGATE_MEMORY_BUDGET_BYTES": str(BUDGET_CAP)}).limits
    assert same.memory_budget_set
    assert not same.stale_copy_set
    assert memory_shares(same, cgroup(GIB), 5).budget == BUDGET_CAP


def test_no_readable_limit_keeps_the_defaults() -> None:
    shares = memory_shares(DEFAULTS, None, 64)
    assert (shares.budget, shares.stale_copy) == (BUDGET_CAP, STALE_CAP)
    assert shares.fits
    assert workers_that_fit(None, DEFAULTS) is None


def test_how_many_workers_a_limit_holds_at_their_smallest() -> None:
    smallest = WORKER_BASE_BYTES + FLOOR + FLOOR // 8  # 130 MiB
    assert workers_that_fit(cgroup(GIB), DEFAULTS) == GIB // smallest == 7
    assert workers_that_fit(cgroup(512 * MIB), DEFAULTS) == 3
    assert workers_that_fit(cgroup(100 * MIB), DEFAULTS) == 1  # at least one
    for limit in (GIB, 512 * MIB, 3 * GIB, 2 * smallest):
        workers = workers_that_fit(cgroup(limit), DEFAULTS)
        assert workers is not None
        shares = memory_shares(DEFAULTS, cgroup(limit), workers)
        assert shares.fits, f"{workers} workers in {limit / MIB} MiB"
        assert shares.stale_copy >= FLOOR // 8  # never squeezed out by the count
        assert not memory_shares(DEFAULTS, cgroup(limit), workers + 1).fits  # the most


# --- the plan ----------------------------------------------------------------------------


def test_the_plan_bounds_the_default_worker_count_by_memory() -> None:
    # The problem this guards: 16 CPUs in a 1 GiB container started 16 workers of
    # 128 + 16 MiB each (and a base each), far past the limit.
    config = load_config(REDIS)
    plan = plan_workers(config, list(range(16)), None, cgroup(GIB))
    assert plan.workers == 7
    assert plan.memory.fits
    assert "memory limit of 1024.0 MiB" in plan.reason
    each = worker_config(config, plan, 3).limits
    assert (each.memory_budget_bytes, each.stale_copy_bytes) == (
        plan.memory.budget,
        plan.memory.stale_copy,
    )
    assert each.memory_budget_bytes < BUDGET_CAP
    # The CPU quota still counts: 2 CPUs' worth in the same container.
    plan = plan_workers(config, list(range(16)), CpuQuota(200_000, 100_000), cgroup(GIB))
    assert plan.workers == 2
    assert (plan.memory.budget, plan.memory.stale_copy) == (BUDGET_CAP, STALE_CAP)


def test_the_operators_worker_count_wins_and_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = load_config({**REDIS, "CACHEGATE_WORKERS": "16"})
    plan = plan_workers(config, list(range(16)), None, cgroup(GIB))
    assert plan.workers == 16
    assert plan.memory.budget == FLOOR
    assert not plan.memory.fits
    with caplog.at_level("INFO", logger="cachegate.workers"):
        plan.log()
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "pass the memory limit of 1024.0 MiB (cgroup)" in warning.getMessage()
    assert "CACHEGATE_WORKERS" in warning.getMessage()


def test_the_plans_log_line_names_the_figures_and_where_they_come_from(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = load_config({**REDIS, "CACHEGATE_STALE_COPY_BYTES": str(MIB)})
    plan = plan_workers(config, [0, 1], None, cgroup(448 * MIB))
    with caplog.at_level("INFO", logger="cachegate.workers"):
        plan.log()
    (record,) = caplog.records
    assert record.levelname == "INFO"
    fields = vars(record)
    assert fields["memory_limit_mib"] == 448.0
    assert fields["memory_limit_from"] == "cgroup"
    assert fields["memory_budget_bytes_each"] == (224 - 112) * MIB * 8 // 9
    assert fields["memory_budget_from"] == "default"
    assert (fields["stale_copy_bytes_each"], fields["stale_copy_from"]) == (MIB, "set")


def test_without_a_known_limit_the_plan_keeps_todays_figures() -> None:
    config = load_config(REDIS)
    plan = plan_workers(config, list(range(16)))
    assert plan.workers == 16
    limits = worker_config(config, plan, 0).limits
    assert (limits.memory_budget_bytes, limits.stale_copy_bytes) == (BUDGET_CAP, STALE_CAP)


def test_the_memory_backend_runs_one_worker_with_the_whole_limit() -> None:
    plan = plan_workers(load_config({}), list(range(16)), None, cgroup(512 * MIB))
    assert plan.workers == 1
    assert (plan.memory.budget, plan.memory.stale_copy) == (BUDGET_CAP, STALE_CAP)
