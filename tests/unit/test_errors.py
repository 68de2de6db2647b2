"""The server side's one exception root: every error class hangs under CacheError, the
unavailable ones are also the builtin ConnectionError, and the tree drawn in
cachegate.core._errors names every class in it."""

from __future__ import annotations

import pickle
from collections.abc import Iterable

import pytest
import redis.exceptions as rex

import cachegate.core._errors
from cachegate.core import CacheError, CircuitOpenError, CircuitState
from cachegate.pool import (
    CommandError,
    PoolExhaustedError,
    RedisOutOfMemoryError,
    RedisTimeoutError,
    RedisUnavailableError,
)
from cachegate.rpc._status import InvalidArgumentError, ShuttingDownError, TooBusyError

# What "the cache is unavailable now" means to a caller: the guide's except ConnectionError.
UNAVAILABLE: set[type[BaseException]] = {
    CircuitOpenError,
    RedisUnavailableError,
    RedisTimeoutError,
    PoolExhaustedError,
}
NOT_UNAVAILABLE: set[type[BaseException]] = {
    CommandError,
    RedisOutOfMemoryError,
    InvalidArgumentError,
    TooBusyError,
    ShuttingDownError,
}
# The other bases each class keeps, for code written against them.
KEPT_BASES: dict[type[BaseException], tuple[type[BaseException], ...]] = {
    RedisUnavailableError: (rex.ConnectionError,),
    RedisTimeoutError: (rex.TimeoutError, TimeoutError, rex.ConnectionError),
    InvalidArgumentError: (ValueError,),
}


def by_name(classes: Iterable[type[BaseException]]) -> list[type[BaseException]]:
    return sorted(classes, key=lambda cls: cls.__name__)


def tree(root: type[BaseException]) -> set[type[BaseException]]:
    """Every class under *root* (root excluded), however deep."""
    found: set[type[BaseException]] = set()
    todo = list(root.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("cachegate.") and cls not in found:
            found.add(cls)
            todo.extend(cls.__subclasses__())
    return found


def test_every_error_is_under_the_one_root() -> None:
    assert tree(CacheError) == UNAVAILABLE | NOT_UNAVAILABLE


def test_cachegate_core_and_pool_export_the_same_root() -> None:
    import cachegate.pool

    assert cachegate.pool.CacheError is CacheError
    assert cachegate.pool.CircuitOpenError is CircuitOpenError


@pytest.mark.parametrize("cls", by_name(UNAVAILABLE))
def test_the_unavailable_ones_are_connection_errors(cls: type[BaseException]) -> None:
    assert issubclass(cls, CacheError)
    assert issubclass(cls, ConnectionError)


@pytest.mark.parametrize("cls", by_name(NOT_UNAVAILABLE))
def test_the_others_are_not_connection_errors(cls: type[BaseException]) -> None:
    assert issubclass(cls, CacheError)
    assert not issubclass(cls, ConnectionError)


@pytest.mark.parametrize("cls", by_name(KEPT_BASES))
def test_the_bases_they_had_are_kept(cls: type[BaseException]) -> None:
    for base in KEPT_BASES[cls]:
        assert issubclass(cls, base), base


def test_the_tree_is_drawn_with_every_class() -> None:
    drawing = cachegate.core._errors.__doc__ or ""
    for cls in tree(CacheError) | {CacheError}:
        assert f"── {cls.__name__} " in drawing, cls.__name__


def test_the_guides_except_connection_error_catches_a_refusal() -> None:
    caught: BaseException | None = None
    try:
        raise CircuitOpenError("redis", CircuitState.OPEN, 1.5)
    except ConnectionError as exc:  # the migration guide's handler
        caught = exc
    assert isinstance(caught, CircuitOpenError)
    assert isinstance(caught, CacheError)
    assert str(caught) == "circuit breaker 'redis' is open; retry after 1.500s"


def test_one_except_cache_error_catches_every_kind() -> None:
    raised: list[BaseException] = [
        CircuitOpenError("redis", CircuitState.HALF_OPEN, 0.0),
        RedisTimeoutError("slow"),
        PoolExhaustedError("full"),
        RedisOutOfMemoryError("OOM"),
        InvalidArgumentError("key", "empty"),
        TooBusyError("streams"),
        ShuttingDownError(),
    ]
    for error in raised:
        with pytest.raises(CacheError):
            raise error


def test_a_refusal_still_crosses_process_borders() -> None:
    error = CircuitOpenError("redis", CircuitState.OPEN, 2.0, forced=True)
    clone = pickle.loads(pickle.dumps(error))  # noqa: S301 -- our own object
    assert (type(clone), clone.name, clone.state, clone.retry_after, clone.forced) == (
        CircuitOpenError,
        "redis",
        CircuitState.OPEN,
        2.0,
        True,
    )
