"""How much memory this process may use, and each worker's part of it.

A worker holds its own base (the interpreter, grpc, protobuf, redis-py), up to its
memory budget of request and reply bytes (CACHEGATE_MEMORY_BUDGET_BYTES) and its
stale copy (CACHEGATE_STALE_COPY_BYTES). Those two defaults are per worker while the
worker count follows the CPUs: on a big node in a small container, fixed figures would
let the workers together pass the container's limit, and the kernel would OOM-kill
them under the very load the budget is meant to absorb. So, when they are not set,
both follow the memory the process may use (`memory_shares`):

- the limit: the tightest cgroup memory limit of our cgroup and its parents (v2
  `memory.max`, "max" for none; v1 `memory.limit_in_bytes`, where a huge figure means
  none), never above the machine's physical memory, which is the limit without one;
- each worker's room: its part of the limit less WORKER_BASE_BYTES;
- the budget gets 8/9 of the room and the stale copy 1/9 (today's 128 : 16), each at
  most its default, so the defaults are caps: a 512 MiB container with 2 workers (or
  more memory per worker) keeps them whole;
- the budget never goes below its floor, REPLY_COPIES times the send limit (what one
  reply at CACHEGATE_MAX_RECEIVE_MESSAGE_BYTES holds; `load_config` demands the same of
  a set budget), or the largest batch or reply could never be served.

The default worker count (CACHEGATE_WORKERS=0) is also bounded by memory
(`workers_that_fit`): no more workers than the limit holds at their smallest, the floor
budget and a stale copy of 1/8 of it. When the figures do not fit (workers set
explicitly, set figures, or a container smaller than one worker at the floor) the
server starts anyway and the plan logs a warning naming the figures: it may serve
its usual traffic well, and a refusal would turn a tight container into one that
never serves; the warning says what to change.

`read_memory_limit()` and `physical_memory()` read the system (I/O); the arithmetic is
pure and unit-tested on given file contents (tests/unit/test_memory.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from cachegate.core import REPLY_COPIES, LimitSettings
from cachegate.runtime._cgroup import CGROUP_ROOT, PROC_SELF_CGROUP, binding_dirs, read_text

__all__ = [
    "WORKER_BASE_BYTES",
    "MemoryLimit",
    "MemoryShares",
    "budget_floor",
    "memory_ceiling",
    "memory_shares",
    "parse_limit_in_bytes",
    "parse_memory_max",
    "physical_memory",
    "read_memory_limit",
    "workers_that_fit",
]

MIB = 1024 * 1024
WORKER_BASE_BYTES = 112 * MIB
"""What a worker holds besides its budget and stale copy: its own memory at rest and
under load, allocator slack, and its part of the supervisor's (docs/performance.md,
"Memory per worker"). 512 MiB for 2 workers leaves each 144 MiB: today's 128 + 16."""

BUDGET_PARTS, STALE_PARTS = 8, 1
"""The room's split between the budget and the stale copy: the defaults' 128 : 16."""

NO_LIMIT_V1 = 1 << 60
"""cgroup v1 writes "no limit" as the largest page count it can hold, in bytes
(9223372036854771712 on x86-64 with 4 KiB pages): any figure from an exbibyte up is none."""


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    """The memory the whole process (with its workers) may use, and where it comes from."""

    bytes: int
    source: str  # "cgroup" (the container's limit) or "physical" (the machine's memory)

    @property
    def mib(self) -> float:
        return round(self.bytes / MIB, 1)


@dataclass(frozen=True, slots=True)
class MemoryShares:
    """What each of `workers` workers may hold: the figures that go into its config."""

    budget: int
    stale_copy: int
    budget_set: bool  # CACHEGATE_MEMORY_BUDGET_BYTES was set: the operator's figure
    stale_copy_set: bool  # CACHEGATE_STALE_COPY_BYTES was set
    workers: int
    limit: MemoryLimit | None  # None: the limit could not be read (the caps apply)

    @property
    def per_worker(self) -> int:
        """Memory one worker may come to: its base, its budget and its stale copy."""
        return WORKER_BASE_BYTES + self.budget + self.stale_copy

    @property
    def fits(self) -> bool:
        """Whether every worker at its figures stays within the limit."""
        return self.limit is None or self.workers * self.per_worker <= self.limit.bytes


def parse_memory_max(text: str) -> int | None:
    """cgroup v2 `memory.max`: bytes, or "max" (no limit) -> None.

    Anything unreadable counts as no limit: a wrong guess must not shrink the server.
    """
    value = text.strip()
    if value == "max":
        return None
    try:
        limit = int(value)
    except ValueError:
        return None
    return limit if limit > 0 else None


def parse_limit_in_bytes(text: str) -> int | None:
    """cgroup v1 `memory.limit_in_bytes`: bytes; the kernel's huge "unlimited" -> None."""
    limit = parse_memory_max(text)
    return limit if limit is not None and limit < NO_LIMIT_V1 else None


def read_memory_limit(
    read: Callable[[str], str | None] | None = None,
    *,
    root: str = CGROUP_ROOT,
    proc_self_cgroup: str = PROC_SELF_CGROUP,
) -> int | None:
    """This process's cgroup memory limit in bytes (the tightest of its cgroups'), or None.

    `read(path)` returns a file's text or None when it cannot be read (by default the
    file system; tests give file contents).
    """
    read = read or read_text
    dirs = binding_dirs(read, "memory", root, proc_self_cgroup)
    limits: list[int] = []
    for version, directory in dirs:
        if version == 2:
            text = read(f"{directory}/memory.max")
            limit = parse_memory_max(text) if text is not None else None
        else:
            text = read(f"{directory}/memory.limit_in_bytes")
            limit = parse_limit_in_bytes(text) if text is not None else None
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def physical_memory() -> int | None:
    """The machine's memory in bytes (None where the system does not say)."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def memory_ceiling(cgroup: int | None, physical: int | None) -> MemoryLimit | None:
    """The memory the process may use: its cgroup limit, never above physical memory."""
    if cgroup is not None and (physical is None or cgroup < physical):
        return MemoryLimit(cgroup, "cgroup")
    if physical is not None:
        return MemoryLimit(physical, "physical")
    return None


def budget_floor(limits: LimitSettings) -> int:
    """The smallest budget that serves: one reply at the send limit, all its copies."""
    return REPLY_COPIES * limits.max_receive_message_bytes


def _smallest_worker(limits: LimitSettings) -> int:
    """The least memory one worker needs: set figures as they are, derived ones at
    their floor (the budget floor, and a stale copy in the defaults' proportion)."""
    floor = budget_floor(limits)
    budget = limits.memory_budget_bytes if limits.memory_budget_set else floor
    stale = (
        limits.stale_copy_bytes if limits.stale_copy_set else floor * STALE_PARTS // BUDGET_PARTS
    )
    return WORKER_BASE_BYTES + budget + stale


def workers_that_fit(limit: MemoryLimit | None, limits: LimitSettings) -> int | None:
    """How many workers `limit` holds at their smallest (at least 1); None: no limit."""
    if limit is None:
        return None
    return max(1, limit.bytes // _smallest_worker(limits))


def memory_shares(limits: LimitSettings, limit: MemoryLimit | None, workers: int) -> MemoryShares:
    """Each worker's budget and stale copy: set figures as they are; unset ones from
    its part of `limit` (module docstring), at most the defaults `limits` holds."""
    workers = max(1, workers)
    budget, stale = limits.memory_budget_bytes, limits.stale_copy_bytes
    if limit is not None:
        room = max(0, limit.bytes // workers - WORKER_BASE_BYTES)
        parts = BUDGET_PARTS + STALE_PARTS
        if not limits.memory_budget_set:
            budget = max(budget_floor(limits), min(budget, room * BUDGET_PARTS // parts))
        if not limits.stale_copy_set:
            stale = min(stale, room * STALE_PARTS // parts)
    return MemoryShares(
        budget=budget,
        stale_copy=stale,
        budget_set=limits.memory_budget_set,
        stale_copy_set=limits.stale_copy_set,
        workers=workers,
        limit=limit,
    )
