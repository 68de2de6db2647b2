"""Where this process's cgroup limits live: the cgroup directories that bind it.

A limit set on a parent cgroup binds its children too, so a reader takes every cgroup
from ours up to the mount's root and keeps the tightest limit it finds there
(`_cpus.py` for the CPU quota, `_memory.py` for the memory limit).

- cgroup v2: one hierarchy, the line "0::<path>" of /proc/self/cgroup, mounted at
  /sys/fs/cgroup; every controller's files are in the same directories.
- cgroup v1: one hierarchy per controller ("4:cpu,cpuacct:<path>"), mounted at
  /sys/fs/cgroup/<its controllers>.

In a container the mount's root IS the container's cgroup, while the listed path may be
the host's: directories that do not exist are skipped by the readers (their files read
as None).

Hybrid mounts (every controller on v1, beside an empty v2 hierarchy at
/sys/fs/cgroup/unified, which the listing names too as "0::<path>") need nothing of
their own: the v2 line is looked up under /sys/fs/cgroup, where no limit file is, and
a v2 hierarchy without controllers carries no limit anyway; the v1 lines give the
limits (tests/unit/test_memory.py and test_cpus.py, and drill 26 on a real one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

__all__ = ["CGROUP_ROOT", "PROC_SELF_CGROUP", "binding_dirs", "cgroup_dirs", "read_text"]

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"


def cgroup_dirs(
    proc_self_cgroup: str, controller: str, root: str = CGROUP_ROOT
) -> list[tuple[int, str]]:
    """The cgroup directories whose `controller` limits bind this process.

    From the text of /proc/self/cgroup: (1, dir) for each level of the cgroup v1
    hierarchy that carries `controller` ("cpu", "memory"), (2, dir) for each level of
    the v2 one; ours first, then up to the mount's root.
    """
    found: list[tuple[int, str]] = []
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            version, mount = 2, PurePosixPath(root)
        elif controller in controllers.split(","):
            version, mount = 1, PurePosixPath(root) / controllers
        else:
            continue
        here = PurePosixPath("/") / path.lstrip("/")
        for level in (here, *here.parents):
            found.append((version, str(mount / level.relative_to("/"))))
    return found


def binding_dirs(
    read: Callable[[str], str | None],
    controller: str,
    root: str = CGROUP_ROOT,
    proc_self_cgroup: str = PROC_SELF_CGROUP,
) -> list[tuple[int, str]]:
    """`cgroup_dirs` of this process, read with `read`; without /proc (or with an odd
    one), the v2 files at the mount's root, if any."""
    listing = read(proc_self_cgroup)
    dirs = cgroup_dirs(listing, controller, root) if listing else []
    return dirs or [(2, root)]


def read_text(path: str) -> str | None:
    """A cgroup (or /proc) file's text, or None when it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read()
    except OSError:
        return None
