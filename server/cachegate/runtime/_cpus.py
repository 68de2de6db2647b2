"""How much CPU this process may use: the CPUs it may run on and its cgroup's CPU quota.

A container's CPU limit is a quota (CFS bandwidth: so much CPU time per period), not a
set of CPUs: a pod limited to one CPU on a 64-CPU node may run on all 64, one at a time
on average. Counting the affinity set alone would start 64 workers that share one CPU.
So the default worker count is the smaller of the two, the quota rounded up.

`read_cpu_quota()` and `available_cpus()` read the system (I/O); the arithmetic on what
they read is pure and unit-tested on given file contents (tests/unit/test_cpus.py).

- cgroup v2: `cpu.max` holds "<quota> <period>" in microseconds, "max <period>" for
  no quota. A quota set on a parent cgroup binds its children too, so every cgroup
  from ours up to the mount's root is read and the tightest quota counts (`_cgroup.py`).
- cgroup v1: `cpu.cfs_quota_us` (-1 for no quota) and `cpu.cfs_period_us` in the
  `cpu` controller's hierarchy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cachegate.runtime._cgroup import CGROUP_ROOT, PROC_SELF_CGROUP, binding_dirs, read_text

__all__ = [
    "CpuQuota",
    "available_cpus",
    "parse_cfs",
    "parse_cpu_max",
    "process_cpu_share",
    "read_cpu_quota",
    "tightest",
    "worker_count",
]

GIL_CPUS = 1.0
"""The Python work of one process runs on about one CPU at a time, however many it may
use (the GIL): the most CPU one process's calls can use, whatever the machine."""


@dataclass(frozen=True, slots=True)
class CpuQuota:
    """A CFS bandwidth limit: `quota_us` of CPU time every `period_us`."""

    quota_us: int
    period_us: int

    @property
    def cpus(self) -> float:
        """The quota in CPUs (0.5: half a CPU's time)."""
        return self.quota_us / self.period_us

    @property
    def whole_cpus(self) -> int:
        """The quota rounded up to whole CPUs, at least 1 (a worker per started CPU)."""
        return max(1, -(-self.quota_us // self.period_us))

    @property
    def period(self) -> float:
        """The period in seconds: a process at its quota runs, then waits, within it."""
        return self.period_us / 1_000_000


def available_cpus() -> list[int]:
    """The CPUs this process may run on (taskset/cpuset aware; quotas are not CPUs)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def parse_cpu_max(text: str) -> CpuQuota | None:
    """cgroup v2 `cpu.max`: "50000 100000" -> half a CPU; "max 100000" -> None (no quota).

    Anything unreadable counts as no quota: a wrong guess must not shrink the server.
    """
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000  # the kernel's default
    except ValueError:
        return None
    return CpuQuota(quota, period) if quota > 0 and period > 0 else None


def parse_cfs(quota_us: str, period_us: str) -> CpuQuota | None:
    """cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`; -1 (no quota) -> None."""
    try:
        quota, period = int(quota_us.strip()), int(period_us.strip())
    except ValueError:
        return None
    return CpuQuota(quota, period) if quota > 0 and period > 0 else None


def tightest(quotas: Iterable[CpuQuota | None]) -> CpuQuota | None:
    """The smallest quota (in CPUs) of those set; None when none is."""
    found = [q for q in quotas if q is not None]
    return min(found, key=lambda q: q.cpus) if found else None


def read_cpu_quota(
    read: Callable[[str], str | None] | None = None,
    *,
    root: str = CGROUP_ROOT,
    proc_self_cgroup: str = PROC_SELF_CGROUP,
) -> CpuQuota | None:
    """This process's CPU quota (the tightest of its cgroups'), or None for none.

    `read(path)` returns a file's text or None when it cannot be read (by default the
    file system; tests give file contents).
    """
    read = read or read_text
    dirs = binding_dirs(read, "cpu", root, proc_self_cgroup)
    quotas: list[CpuQuota | None] = []
    for version, directory in dirs:
        if version == 2:
            text = read(f"{directory}/cpu.max")
            quotas.append(parse_cpu_max(text) if text is not None else None)
        else:
            quota = read(f"{directory}/cpu.cfs_quota_us")
            period = read(f"{directory}/cpu.cfs_period_us")
            if quota is not None and period is not None:
                quotas.append(parse_cfs(quota, period))
    return tightest(quotas)


def worker_count(cpus: int, quota: CpuQuota | None) -> int:
    """The default worker count: one per CPU the process may use, i.e. the smaller of
    the affinity set and the quota rounded up; at least 1."""
    cpus = max(1, cpus)
    return cpus if quota is None else min(cpus, quota.whole_cpus)


def process_cpu_share(cpus: int, quota: CpuQuota | None, workers: int) -> float:
    """The CPU one of `workers` processes may use, in CPUs: its part of the affinity set
    and of the quota, and never more than the GIL lets one process use."""
    workers = max(1, workers)
    share = min(GIL_CPUS, max(1, cpus) / workers)
    if quota is not None:
        share = min(share, quota.cpus / workers)
    return share
