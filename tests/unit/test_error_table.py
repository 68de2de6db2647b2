"""The README's error table says what the code does (rpc/_status.py is the mapping).

The README keeps its table for users; this test reads it and checks every row
against the code, so the two cannot drift: a row added, changed or dropped on
one side without the other fails here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from cachegate.core import CircuitOpenError, CircuitState
from cachegate.pool import (
    CommandError,
    PoolExhaustedError,
    RedisOutOfMemoryError,
    RedisTimeoutError,
    RedisUnavailableError,
)
from cachegate.rpc._status import (
    INTERNAL,
    STREAM_IDLE,
    SUBSCRIBER_BEHIND,
    UNDECODABLE,
    InvalidArgumentError,
    Rejection,
    ShuttingDownError,
    TooBusyError,
    status_for,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_rows() -> dict[str, tuple[str, str]]:
    """The "## Errors" table: condition -> (status, details), markup removed."""
    section = README.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("condition", "---"):
            continue
        condition, status, details = (cell.replace("`", "") for cell in cells)
        rows[condition] = (status, details)
    return rows


def _from(exc: BaseException) -> Callable[[], Rejection]:
    def rejection() -> Rejection:
        found = status_for(exc)
        return INTERNAL if found is None else found

    return rejection


def _code(code: grpc.StatusCode) -> Callable[[], Rejection]:
    return lambda: Rejection(code, "")


# Each README row, and how the code reaches its status: an exception status_for maps,
# or a status the code sends where no exception reaches status_for.
CONDITIONS: dict[str, Callable[[], Rejection]] = {
    "bad key, value, TTL or batch size": _from(InvalidArgumentError("key", "must not be empty")),
    "request bytes that do not decode (corrupt, bad UTF-8)": _code(UNDECODABLE),
    "breaker open (Redis not touched)": _from(
        CircuitOpenError("redis", CircuitState.OPEN, retry_after=2.5)
    ),
    "breaker forced open by an operator (ForceOpenBreaker)": _from(
        CircuitOpenError("redis", CircuitState.OPEN, retry_after=30.0, forced=True)
    ),
    "server shutting down (SIGTERM): a new call, or a Pipeline stream's next batch": _from(
        ShuttingDownError()
    ),
    "Redis refused, reset or down": _from(RedisUnavailableError("connection refused")),
    "Redis too slow, or the caller's deadline ran out": _from(RedisTimeoutError("timed out")),
    "no pool connection free within REDIS_POOL_TIMEOUT": _from(PoolExhaustedError("pool full")),
    "too many Pipeline streams or RPCs at once, or past the caller's share of streams": _from(
        TooBusyError("too many streams")
    ),
    "a Pipeline stream idle for CACHEGATE_STREAM_IDLE_SECONDS": _code(STREAM_IDLE),
    'an invalidation subscriber that does not read (see "Invalidations and the near cache")': (
        _code(SUBSCRIBER_BEHIND)
    ),
    "Redis at maxmemory refuses a write (OOM)": _from(RedisOutOfMemoryError("OOM")),
    "Redis rejected the command (e.g. WRONGTYPE)": _from(CommandError("WRONGTYPE")),
    "anything else (a bug)": _from(RuntimeError("a bug")),
}


def test_the_readme_table_has_a_row_for_each_condition_and_no_other() -> None:
    assert sorted(readme_rows()) == sorted(CONDITIONS)


@pytest.mark.parametrize("condition", sorted(CONDITIONS))
def test_each_row_is_what_the_code_sends(condition: str) -> None:
    status, details = readme_rows()[condition]
    rejection = CONDITIONS[condition]()
    assert rejection.code.name == status
    kinds = {type(detail) for detail in rejection.details}
    assert (error_details_pb2.BadRequest in kinds) == ("google.rpc.BadRequest" in details)
    assert (error_details_pb2.RetryInfo in kinds) == ("google.rpc.RetryInfo" in details)
    if "grpc-retry-pushback-ms: -1" in details:
        assert ("grpc-retry-pushback-ms", "-1") in rejection.trailers


def test_the_status_docstring_points_to_the_readme_instead_of_copying_it() -> None:
    from cachegate.rpc import _status

    assert _status.__doc__ is not None
    assert "README.md" in _status.__doc__
    assert not re.search(r"^\|", _status.__doc__, re.MULTILINE)  # no table of its own


@pytest.mark.parametrize(
    ("retry_after", "pushback", "delay_ms"),
    [(0.0, "50", 50), (0.001, "50", 50), (0.3, "300", 300), (0.999, "999", 999), (5.0, "-1", 5000)],
)
def test_an_open_breaker_never_asks_for_a_retry_sooner_than_50_ms(
    retry_after: float, pushback: str, delay_ms: int
) -> None:
    """A half-open breaker refuses with nothing left to wait; a pushback of 0 ms is a
    retry timer grpc core can lose, and the call then hangs until its deadline."""
    rejection = status_for(CircuitOpenError("redis", CircuitState.HALF_OPEN, retry_after))
    assert rejection is not None
    assert ("grpc-retry-pushback-ms", pushback) in rejection.trailers
    [info] = rejection.details
    assert isinstance(info, error_details_pb2.RetryInfo)
    assert info.retry_delay.ToMilliseconds() == delay_ms
