"""Fixtures of the fault drills, and the summary table printed at the end of the run.

Run them with `make drills` (which also runs tests/fuzz); `make test` leaves this folder
out. With $DRILLS_REPORT set, the rows are also written there as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from drills.harness import (
    ROWS,
    DrillRow,
    Gateway,
    Report,
    StartGateway,
    StartRedis,
    format_table,
)
from redisprocs import RedisProcess, start_standalone

_outcomes: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "drill: a fault drill (make drills)")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = "FAIL"
    elif report.when == "call" and report.passed:
        _outcomes.setdefault(report.nodeid, "pass")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    for row in ROWS:
        row.outcome = _outcomes.get(row.nodeid, row.outcome or "?")
    terminalreporter.section("fault drills")
    for line in format_table(ROWS).splitlines():
        terminalreporter.write_line(line)
    destination = os.environ.get("DRILLS_REPORT")
    if destination:
        Path(destination).write_text(json.dumps([row.as_json() for row in ROWS], indent=2) + "\n")
        terminalreporter.write_line(f"(rows written to {destination})")


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """Start `cachegate-server` processes; each one is killed (by PID) at teardown."""
    started: list[Gateway] = []

    def start(
        env: Mapping[str, str],
        *,
        http: bool = False,
        wait: bool = True,
        cgroup_procs: Path | None = None,
    ) -> Gateway:
        log = tmp_path / f"cachegate-{len(started)}.log"
        gateway = Gateway(env, log, http=http, cgroup_procs=cgroup_procs)
        started.append(gateway)
        if wait:
            gateway.wait_serving()
        return gateway

    yield start
    for gateway in started:
        gateway.kill()


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[StartRedis]:
    """Start standalone redis-servers with extra arguments; all stopped at teardown."""
    started: list[RedisProcess] = []

    def start(extra_args: Sequence[str] = ()) -> RedisProcess:
        server = start_standalone(tmp_path / f"redis-{len(started)}", extra_args=extra_args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """Record this drill's row (before its assertions, so a failing drill shows too)."""

    def add(row: DrillRow) -> None:
        row.nodeid = request.node.nodeid
        ROWS.append(row)
        print(f"\nDRILL {' | '.join(row.cells())}", flush=True)

    return add
