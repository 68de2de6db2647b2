"""Worker mode: CPU placement, and the worker count and memory that follow real cgroups."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from redisprocs import RedisProcess, free_port
from workerprocs import (
    SERVER,
    Launch,
    ServerProcess,
    redis_env,
    stats,
    wait_for,
    worker_ids,
)

# --- CPU placement: pinning is opt-in, the worker count follows the CPU quota -----------


def affinity_of(pid: int) -> set[int]:
    return set(os.sched_getaffinity(pid))


def test_no_process_pins_itself_unless_asked(launch: Launch, redis_server: RedisProcess) -> None:
    # On a shared machine (a Kubernetes node without exclusive cores) every cachegate
    # pinning itself would pick the same lowest-numbered CPUs.
    ours = affinity_of(0)
    if len(ours) < 2:
        pytest.skip("one CPU here: pinned and unpinned look the same")
    port = free_port()
    single = launch(redis_env(redis_server, port, CACHEGATE_WORKERS="1"))
    assert worker_ids(f"127.0.0.1:{port}", single, {0}) == {0}
    assert affinity_of(single.proc.pid) == ours
    assert not single.messages("pinned to one CPU")
    assert single.stop() == 0

    port = free_port()
    workers = launch(redis_env(redis_server, port))
    assert worker_ids(f"127.0.0.1:{port}", workers, {0, 1}) == {0, 1}
    assert [affinity_of(pid) for pid in workers.worker_pids().values()] == [ours, ours]
    assert workers.stop() == 0

    port = free_port()
    pinned = launch(redis_env(redis_server, port, CACHEGATE_PIN_CPUS="1"))
    assert worker_ids(f"127.0.0.1:{port}", pinned, {0, 1}) == {0, 1}
    first, second = sorted(ours)[:2]
    pids = pinned.worker_pids()
    assert (affinity_of(pids[0]), affinity_of(pids[1])) == ({first}, {second})
    assert pinned.stop() == 0


@pytest.fixture
def v1_cgroup() -> Iterator[Callable[[str, dict[str, int]], Path]]:
    """A real cgroup v1 group of one controller ("cpu", "memory") with the given files
    written (a quota, a limit), made for one test and removed after (skipped where the
    machine does not let us make one: no v1 hierarchy of it, no rights)."""
    made: list[Path] = []

    def make(controller: str, files: dict[str, int]) -> Path:
        parent = Path("/sys/fs/cgroup") / controller
        group = parent / f"cachegate-test-{os.getpid()}-{len(made)}"
        try:
            group.mkdir()
        except OSError as exc:
            pytest.skip(f"cannot make a cgroup here ({parent}: {exc})")
        made.append(group)
        try:
            for name, value in files.items():
                (group / name).write_text(str(value))
        except OSError as exc:
            pytest.skip(f"cannot set {', '.join(files)} here ({group}: {exc})")
        return group

    yield make
    for group in made:
        deadline = time.monotonic() + 10
        while True:
            # Only the test's own server is in the group: a test that failed half-way
            # may leave it running (this teardown runs before `launch`'s).
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                group.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def entering(group: Path) -> list[str]:
    """A command that starts the server inside `group` (it joins it, then becomes
    cachegate-server)."""
    enter = (
        "import os, sys; "
        f"open({str(group / 'cgroup.procs')!r}, 'w').write(str(os.getpid())); "
        f"os.execv({SERVER!r}, [{SERVER!r}])"
    )
    return [sys.executable, "-c", enter]


def test_the_worker_count_follows_a_real_cgroup_cpu_quota(
    launch: Launch, redis_server: RedisProcess, v1_cgroup: Callable[[str, dict[str, int]], Path]
) -> None:
    if len(affinity_of(0)) < 2:
        pytest.skip("one CPU here: the quota cannot lower the worker count")
    # Half a CPU.
    group = v1_cgroup("cpu", {"cpu.cfs_period_us": 100_000, "cpu.cfs_quota_us": 50_000})
    port = free_port()
    server = launch(redis_env(redis_server, port, CACHEGATE_WORKERS="0"), entering(group))
    assert worker_ids(f"127.0.0.1:{port}", server, {0}) == {0}
    assert stats(f"127.0.0.1:{port}").workers == 1  # two CPUs here, but half a CPU's time
    (plan,) = server.messages("one process, no supervisor")
    assert (plan["workers"], plan["cpu_quota"], plan["cpu_share_each"]) == (1, 0.5, 0.5)
    assert server.stop() == 0


def test_each_workers_memory_follows_a_real_cgroup_limit_unless_set(
    launch: Launch, redis_server: RedisProcess, v1_cgroup: Callable[[str, dict[str, int]], Path]
) -> None:
    # 448 MiB for 2 workers: 224 MiB each, less a worker's base (112 MiB), split 8 : 1
    # between the memory budget and the stale copy: both below their defaults (the caps).
    mib = 1024 * 1024
    group = v1_cgroup("memory", {"memory.limit_in_bytes": 448 * mib})
    budget, stale = 112 * mib * 8 // 9, 112 * mib // 9

    def figures(server: ServerProcess) -> list[tuple[int, int]]:
        """The budget and stale copy each worker runs with, from its `serving` line."""
        wait_for(lambda: len(server.messages("serving")) == 2, 30, "two serving workers")
        return [
            (s["memory_budget_bytes"], s["stale_copy_bytes"]) for s in server.messages("serving")
        ]

    port = free_port()
    derived = launch(redis_env(redis_server, port), entering(group))
    assert figures(derived) == [(budget, stale)] * 2
    (plan,) = [entry for entry in derived.logs() if "memory_budget_from" in entry]
    assert (plan["workers"], plan["memory_limit_mib"], plan["memory_limit_from"]) == (
        2,
        448.0,
        "cgroup",
    )
    assert (plan["memory_budget_from"], plan["stale_copy_from"]) == ("default", "default")
    assert derived.stop() == 0

    # Set, the operator's figures win over the derived ones, even past the limit (which
    # the plan warns about: 2 x (112 + 200) MiB is more than 448).
    port = free_port()
    chosen = {"CACHEGATE_MEMORY_BUDGET_BYTES": str(200 * mib), "CACHEGATE_STALE_COPY_BYTES": "0"}
    explicit = launch(redis_env(redis_server, port, **chosen), entering(group))
    assert figures(explicit) == [(200 * mib, 0)] * 2
    (plan,) = [entry for entry in explicit.logs() if "memory_budget_from" in entry]
    assert (plan["memory_budget_from"], plan["stale_copy_from"]) == ("set", "set")
    assert [e for e in explicit.logs() if "pass the memory limit of 448.0 MiB" in e["msg"]]
    assert explicit.stop() == 0
