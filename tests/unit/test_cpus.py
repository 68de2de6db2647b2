"""CPU placement arithmetic (runtime/_cpus.py) on given file contents: no real cgroup.

The cgroup files are given as text, as the kernel writes them; a real cgroup is used by
tests/integration/test_worker_placement.py where the machine allows it.
"""

from __future__ import annotations

import pytest

from cachegate.core import load_config
from cachegate.runtime._cgroup import cgroup_dirs
from cachegate.runtime._cpus import (
    CpuQuota,
    parse_cfs,
    parse_cpu_max,
    process_cpu_share,
    read_cpu_quota,
    worker_count,
)
from cachegate.runtime._plan import plan_workers, worker_config

REDIS = {"CACHEGATE_BACKEND": "redis"}


@pytest.mark.parametrize(
    ("text", "cpus", "whole"),
    [
        ("50000 100000\n", 0.5, 1),
        ("100000 100000\n", 1.0, 1),
        ("150000 100000\n", 1.5, 2),
        ("200000 100000\n", 2.0, 2),
        ("1600000 100000\n", 16.0, 16),
        ("25000 50000\n", 0.5, 1),  # another period, same share
        ("1000 100000\n", 0.01, 1),  # at least one worker
    ],
)
def test_cgroup_v2_cpu_max_gives_the_quota_in_cpus_rounded_up(
    text: str, cpus: float, whole: int
) -> None:
    quota = parse_cpu_max(text)
    assert quota is not None
    assert quota.cpus == pytest.approx(cpus)
    assert quota.whole_cpus == whole


@pytest.mark.parametrize("text", ["max 100000\n", "max\n", "", "garbage here\n", "0 100000"])
def test_cgroup_v2_without_a_quota_is_none(text: str) -> None:
    assert parse_cpu_max(text) is None


def test_cgroup_v1_cfs_files() -> None:
    assert parse_cfs("50000\n", "100000\n") == CpuQuota(50_000, 100_000)
    assert parse_cfs("-1\n", "100000\n") is None  # no quota
    assert parse_cfs("", "100000") is None


def test_the_default_worker_count_is_the_smaller_of_affinity_and_quota() -> None:
    half, one_and_half = CpuQuota(50_000, 100_000), CpuQuota(150_000, 100_000)
    assert worker_count(16, None) == 16  # no quota: the affinity set
    assert worker_count(16, half) == 1  # a pod limited to half a CPU on a big node
    assert worker_count(16, one_and_half) == 2  # rounded up
    assert worker_count(2, CpuQuota(1_600_000, 100_000)) == 2  # a quota above the CPUs
    assert worker_count(0, None) == 1


def test_plan_follows_the_quota_unless_workers_are_set() -> None:
    cpus = list(range(16))
    one = CpuQuota(100_000, 100_000)
    plan = plan_workers(load_config(REDIS), cpus, one)
    assert plan.workers == 1
    assert plan.quota_cpus == 1.0
    plan = plan_workers(load_config(REDIS), cpus, CpuQuota(400_000, 100_000))
    assert plan.workers == 4
    assert plan.cpu_share == 1.0
    assert plan.cpu_period == 0.1
    plan = plan_workers(load_config(REDIS), cpus, None)
    assert plan.workers == 16
    explicit = plan_workers(load_config({**REDIS, "CACHEGATE_WORKERS": "3"}), cpus, one)
    assert explicit.workers == 3  # the operator's figure wins
    assert explicit.cpu_share == pytest.approx(1 / 3)  # three share the one CPU


def test_each_worker_gets_its_share_of_the_cpu_in_its_config() -> None:
    config = load_config(REDIS)
    plan = plan_workers(config, [0, 1], CpuQuota(50_000, 100_000))
    assert (plan.workers, plan.cpu_share, plan.cpu_period) == (1, 0.5, 0.1)
    server = worker_config(config, plan, 0).server
    assert (server.cpu_share, server.cpu_period) == (0.5, 0.1)


def test_one_process_may_use_at_most_one_cpu_and_its_part_of_the_quota() -> None:
    # 16 CPUs, one process: the GIL keeps its Python work on about one CPU.
    assert process_cpu_share(16, None, 1) == 1.0
    assert process_cpu_share(16, None, 16) == 1.0
    assert process_cpu_share(2, None, 4) == 0.5  # more workers than CPUs share them
    assert process_cpu_share(16, CpuQuota(50_000, 100_000), 1) == 0.5
    assert process_cpu_share(16, CpuQuota(200_000, 100_000), 4) == 0.5


def test_pinning_is_off_by_default_and_round_robin_when_asked() -> None:
    plan = plan_workers(load_config(REDIS), [2, 5], None)
    assert [plan.cpu_of(w) for w in range(3)] == [None, None, None]
    pinned = plan_workers(load_config({**REDIS, "CACHEGATE_PIN_CPUS": "1"}), [2, 5], None)
    assert pinned.pin
    assert [pinned.cpu_of(w) for w in range(3)] == [2, 5, 2]


def test_cgroup_dirs_walk_up_from_ours_to_the_mount_root() -> None:
    v2 = "0::/kubepods.slice/pod1/cri-abc\n"
    assert cgroup_dirs(v2, "cpu", "/sys/fs/cgroup") == [
        (2, "/sys/fs/cgroup/kubepods.slice/pod1/cri-abc"),
        (2, "/sys/fs/cgroup/kubepods.slice/pod1"),
        (2, "/sys/fs/cgroup/kubepods.slice"),
        (2, "/sys/fs/cgroup"),
    ]
    assert cgroup_dirs("0::/\n", "cpu", "/sys/fs/cgroup") == [(2, "/sys/fs/cgroup")]
    v1 = "12:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n3:cpuset:/docker/x\n0::/\n"
    assert cgroup_dirs(v1, "cpu", "/cg") == [
        (1, "/cg/cpu,cpuacct/docker/x"),
        (1, "/cg/cpu,cpuacct/docker"),
        (1, "/cg/cpu,cpuacct"),
        (2, "/cg"),
    ]


def test_read_cpu_quota_in_a_v2_container() -> None:
    files = {"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "50000 100000\n"}
    assert read_cpu_quota(files.get) == CpuQuota(50_000, 100_000)
    files["/sys/fs/cgroup/cpu.max"] = "max 100000\n"
    assert read_cpu_quota(files.get) is None


def test_read_cpu_quota_takes_the_tightest_of_our_cgroup_and_its_parents() -> None:
    files = {
        "/proc/self/cgroup": "0::/pods/pod1/c1\n",
        "/sys/fs/cgroup/pods/pod1/c1/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/pods/pod1/cpu.max": "150000 100000\n",
        "/sys/fs/cgroup/pods/cpu.max": "800000 100000\n",
    }
    assert read_cpu_quota(files.get) == CpuQuota(150_000, 100_000)


def test_read_cpu_quota_in_a_v1_container_whose_listing_names_the_host_path() -> None:
    # Without a cgroup namespace the listing names the host's path, while the mount's
    # root is the container's own cgroup: the reader finds the quota at the root.
    files = {
        "/proc/self/cgroup": "5:cpuacct,cpu:/docker/0123\n2:memory:/docker/0123\n",
        "/sys/fs/cgroup/cpuacct,cpu/cpu.cfs_quota_us": "200000\n",
        "/sys/fs/cgroup/cpuacct,cpu/cpu.cfs_period_us": "100000\n",
    }
    quota = read_cpu_quota(files.get)
    assert quota == CpuQuota(200_000, 100_000)
    assert worker_count(64, quota) == 2


def test_read_cpu_quota_on_hybrid_mounts() -> None:
    # v1 controllers beside an empty v2 hierarchy at /sys/fs/cgroup/unified, which the
    # listing names too ("0::..."): the quota is the v1 cpu controller's; the v2 line
    # names directories without cpu.max, so it adds none.
    files = {
        "/proc/self/cgroup": "1:cpu:/process_api/abc\n2:cpuacct:/process_api/abc\n0::/\n",
        "/sys/fs/cgroup/cpu/process_api/abc/cpu.cfs_quota_us": "150000\n",
        "/sys/fs/cgroup/cpu/process_api/abc/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/unified/cgroup.procs": "1\n",
    }
    quota = read_cpu_quota(files.get)
    assert quota == CpuQuota(150_000, 100_000)
    assert worker_count(8, quota) == 2


def test_read_cpu_quota_without_any_cgroup_file_is_none() -> None:
    nothing: dict[str, str] = {}
    assert read_cpu_quota(nothing.get) is None
    assert read_cpu_quota({"/proc/self/cgroup": "1:cpu:/\n"}.get) is None
