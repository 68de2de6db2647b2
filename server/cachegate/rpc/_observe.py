"""What the servicer tells the outside world about each RPC (metrics hook in here).

The servicer already wraps every method to map errors to statuses; reporting
from that same wrapper costs two calls per RPC and no extra interceptor layer.
"""

from __future__ import annotations

from typing import Protocol

import grpc

__all__ = ["NullObserver", "RpcObserver"]


class RpcObserver(Protocol):
    def started(self, method: str) -> None:
        """An RPC of `method` (e.g. "Get") began."""

    def handled(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """It ended with `code` after `seconds` (streams: when the stream ends)."""


class NullObserver:
    """Observes nothing (tests and embedders that do not want metrics)."""

    def started(self, method: str) -> None:
        pass

    def handled(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        pass
