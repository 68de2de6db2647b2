"""CacheClient: a typed client of cachegate.v1.CacheService over one gRPC channel."""

from __future__ import annotations

import os
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

import grpc

from cachegate.client._errors import from_rpc_error
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc as pb_grpc

__all__ = ["DEFAULT_TARGET", "CacheClient"]

DEFAULT_TARGET = "127.0.0.1:50051"

Resp = TypeVar("Resp")


class CacheClient:
    """Get, set and delete through a cachegate server.

    >>> with CacheClient("127.0.0.1:50051") as cache:   # doctest: +SKIP
    ...     cache.set_ex("greeting", b"hello", ttl_seconds=60)
    ...     cache.get("greeting")
    b'hello'
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float = 5.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.target = target or os.environ.get("CACHEGATE_TARGET") or DEFAULT_TARGET
        self.timeout = timeout
        self._own_channel = channel is None
        self._channel = channel or grpc.insecure_channel(self.target)
        self._stub = pb_grpc.CacheServiceStub(self._channel)

    def get(self, key: str, *, timeout: float | None = None) -> bytes | None:
        """The value, or None on a miss (an empty value comes back as b"")."""
        reply = self._call(self._stub.Get, pb.GetRequest(key=key), timeout)
        return reply.value if reply.found else None

    def set_ex(
        self, key: str, value: bytes, ttl_seconds: int, *, timeout: float | None = None
    ) -> None:
        self._call(
            self._stub.SetEx,
            pb.SetExRequest(key=key, value=value, ttl_seconds=ttl_seconds),
            timeout,
        )

    def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """True when the key existed."""
        return self._call(self._stub.Delete, pb.DeleteRequest(key=key), timeout).deleted

    def stats(self, *, timeout: float | None = None) -> pb.StatsResponse:
        return self._call(self._stub.Stats, pb.StatsRequest(), timeout)

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: Callable[..., Resp], request: object, timeout: float | None) -> Resp:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
