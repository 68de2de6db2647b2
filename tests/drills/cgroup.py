"""A memory cgroup of a drill's own: the container limit a gateway is started inside.

The server sizes its workers, memory budgets and stale copies from the memory limit of
its cgroup (runtime/_memory.py); a drill proves that sizing by starting the server in a
cgroup with a limit, attacking it, and reading what the kernel counted: the peak and
whether it killed anything for memory. The cgroup is made below the drill's own (it
stays inside whatever limit the drill itself runs under), holds only the processes the
drill puts there, and is removed at the end.

Making one needs root and a memory controller that can be written: a cgroup v1
`memory` hierarchy, or cgroup v2 with `memory` delegated to the drill's cgroup. Where
neither is there `MemoryCgroup.create` says why, and the drill skips with that reason
(reported as a skip, never as a pass).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MemoryCgroup", "NoCgroupError"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
EMPTY_WAIT_SECONDS = 10.0


class NoCgroupError(RuntimeError):
    """No memory cgroup can be made here (the message says why)."""


@dataclass(frozen=True)
class _Layout:
    version: int
    parent: Path  # the drill's own cgroup, where ours is made


def _own_cgroup() -> _Layout:
    """Where this process's memory cgroup lives, v1 first (on hybrid mounts v1 holds
    the memory controller and v2 holds none)."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    unified = ""
    for line in lines:
        number, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return _Layout(1, CGROUP_ROOT / "memory" / path.lstrip("/"))
        if number == "0":
            unified = path
    parent = CGROUP_ROOT / unified.lstrip("/")
    enabled = (parent / "cgroup.subtree_control").read_text().split()
    if "memory" not in enabled:
        raise NoCgroupError(f"cgroup v2 has no memory controller delegated at {parent}")
    return _Layout(2, parent)


class MemoryCgroup:
    """One cgroup with a memory limit: `procs` is the file a process writes its PID to."""

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    @classmethod
    def create(cls, name: str, limit_bytes: int) -> MemoryCgroup:
        if os.geteuid() != 0:
            raise NoCgroupError("making a memory cgroup needs root")
        try:
            layout = _own_cgroup()
            path = layout.parent / name
            path.mkdir()
        except (OSError, ValueError) as exc:
            raise NoCgroupError(f"cannot make a memory cgroup: {exc}") from exc
        group = cls(path, layout.version)
        limit_file = "memory.limit_in_bytes" if layout.version == 1 else "memory.max"
        try:
            (path / limit_file).write_text(str(limit_bytes))
        except OSError as exc:
            group.remove()
            raise NoCgroupError(f"cannot set {limit_file}: {exc}") from exc
        return group

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def pids(self) -> list[int]:
        return [int(pid) for pid in self.procs.read_text().split()]

    def limit_bytes(self) -> int:
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        return int((self.path / name).read_text())

    def peak_bytes(self) -> int | None:
        """The most the cgroup has held (None where the kernel does not keep it)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int((self.path / name).read_text())
        except OSError:
            return None

    def oom_kills(self) -> int:
        """Processes the kernel killed in this cgroup for want of memory."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise RuntimeError(f"{self.path / name} does not count OOM kills")

    def remove(self) -> None:
        """Wait (bounded) for the cgroup's processes to end, kill by PID any that did
        not (they are the drill's own: nothing else is ever put here), then remove it."""
        deadline = time.monotonic() + EMPTY_WAIT_SECONDS
        with contextlib.suppress(OSError):
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            while self.pids() and time.monotonic() < deadline + EMPTY_WAIT_SECONDS:
                time.sleep(0.1)
        with contextlib.suppress(FileNotFoundError):
            self.path.rmdir()
