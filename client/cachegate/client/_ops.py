"""Pipeline operations and their results, as plain frozen records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from cachegate.client._errors import CacheClientError

__all__ = ["CacheEntry", "Delete", "Get", "Operation", "Result", "SetEx"]


@dataclass(frozen=True, slots=True)
class Get:
    key: str


@dataclass(frozen=True, slots=True)
class SetEx:
    key: str
    value: bytes
    ttl_seconds: int


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


Operation: TypeAlias = Get | SetEx | Delete


@dataclass(frozen=True, slots=True)
class Result:
    """What happened to one operation of a batch.

    outcome is "value" (a get found its key: see `value`), "ok" (stored, or
    deleted), "not_found" (a get missed, a delete found nothing) or "error"
    (see `error`, the same exception a unary call would raise). A "value" is
    `stale` when Redis could not answer and the server answered from its copy,
    `age_seconds` old (only in a batch sent with `stale_if_error`).
    """

    outcome: Literal["value", "ok", "not_found", "error"]
    value: bytes | None = None
    error: CacheClientError | None = None
    stale: bool = False
    age_seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.outcome == "error"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A value read by `CacheClient.get_entry`, and whether it is fresh.

    `stale` is True when Redis could not answer and the server answered from its
    own copy of the key (the read allowed it with `stale_if_error`); `age_seconds`
    is then how long ago the server last learned the value (0.0 for a fresh one).
    """

    value: bytes
    stale: bool = False
    age_seconds: float = 0.0
