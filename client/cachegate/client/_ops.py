"""Pipeline operations and their results, as plain frozen records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from cachegate.client._errors import CacheClientError

__all__ = ["Delete", "Get", "Operation", "Result", "SetEx"]


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
    (see `error`, the same exception a unary call would raise).
    """

    outcome: Literal["value", "ok", "not_found", "error"]
    value: bytes | None = None
    error: CacheClientError | None = None

    @property
    def failed(self) -> bool:
        return self.outcome == "error"
