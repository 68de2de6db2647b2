"""What both clients (sync and asyncio) put on their channel: target, options, service
config with the retry policy, and the call metadata.

One definition, so `CacheClient` and `AsyncCacheClient` can never drift apart in how
they balance, retry, bound messages or authenticate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeAlias, TypeVar

import grpc

from cachegate.v1 import cache_pb2 as pb

__all__ = [
    "DEFAULT_TARGET",
    "RETRIED_METHODS",
    "SERVICE_NAME",
    "ClientBase",
    "Metadata",
    "auth_metadata",
    "channel_options",
    "resolve_target",
    "service_config",
]

DEFAULT_TARGET = "127.0.0.1:50051"
# The name the server's health service gives the cache: its service's full name.
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["CacheService"].full_name
# Get, SetEx, Delete and Stats leave the same state when run twice; Pipeline is a
# stream and is never retried by the channel.
RETRIED_METHODS = ("Get", "SetEx", "Delete", "Stats")

Metadata = tuple[tuple[str, str], ...]
ChannelOptions = list[tuple[str, Any]]
ChannelT = TypeVar("ChannelT")
OpenInsecure: TypeAlias = Callable[[str, ChannelOptions], ChannelT]
OpenSecure: TypeAlias = Callable[[str, grpc.ChannelCredentials, ChannelOptions], ChannelT]


def resolve_target(target: str | None) -> str:
    """`target`, else $CACHEGATE_TARGET, else 127.0.0.1:50051."""
    return target or os.environ.get("CACHEGATE_TARGET") or DEFAULT_TARGET


def auth_metadata(token: str | None) -> Metadata:
    """The metadata every call carries: the bearer token, when there is one."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def service_config(*, retries: bool) -> str:
    """gRPC service config: round_robin, and retry UNAVAILABLE with backoff for the
    idempotent RPCs only.

    round_robin: a target that resolves to several addresses (`dns:///` naming a
    headless Service, or `ipv4:a:p,b:p`) gets a connection to each and spreads calls
    over the ready ones; grpc's default, pick_first, would send everything to one
    replica. A target with one address behaves the same under both.

    The server adds grpc-retry-pushback-ms when its breaker is open, so a retry
    never hammers it.
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": []}
    if retries:
        config["methodConfig"].append(
            {
                "name": [{"service": SERVICE_NAME, "method": method} for method in RETRIED_METHODS],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    return json.dumps(config)


def channel_options(
    *,
    retries: bool,
    max_message_bytes: int,
    keepalive_seconds: float,
    options: Sequence[tuple[str, Any]] = (),
) -> ChannelOptions:
    """The channel arguments of a client; `options` come last, so they win."""
    return [
        ("grpc.enable_retries", 1 if retries else 0),
        ("grpc.service_config", service_config(retries=retries)),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        *options,
    ]


class ClientBase(Generic[ChannelT]):
    """The settings both clients take, and how they open a channel from them.

    `target` defaults to $CACHEGATE_TARGET, then 127.0.0.1:50051. Every call has
    a deadline (`timeout` seconds unless the call passes its own). Pass
    `credentials` (grpc.ssl_channel_credentials(...)) for TLS and `token` for the
    server's bearer-token auth; `channel` to bring a channel of your own (it is
    then yours to close).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        retries: bool = True,
        max_message_bytes: int = 16 * 1024 * 1024,
        keepalive_seconds: float = 60.0,
        options: Sequence[tuple[str, Any]] = (),
        channel: ChannelT | None = None,
    ) -> None:
        self.target = resolve_target(target)
        self.timeout = timeout
        self._metadata = auth_metadata(token)
        self._credentials = credentials
        self._channel_options = channel_options(
            retries=retries,
            max_message_bytes=max_message_bytes,
            keepalive_seconds=keepalive_seconds,
            options=options,
        )
        self._own_channel = channel is None
        self._given_channel = channel
        self._configured()

    def _configured(self) -> None:
        """Called at the end of __init__: open the channel now, or later."""

    def _open_channel(
        self, insecure: OpenInsecure[ChannelT], secure: OpenSecure[ChannelT]
    ) -> ChannelT:
        """The given channel, or a new one from `insecure` / `secure` (grpc's or grpc.aio's)."""
        if self._given_channel is not None:
            return self._given_channel
        if self._credentials is not None:
            return secure(self.target, self._credentials, self._channel_options)
        return insecure(self.target, self._channel_options)

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout
