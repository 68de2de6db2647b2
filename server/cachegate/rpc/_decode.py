"""Registering services so that undecodable requests get INVALID_ARGUMENT.

grpc's generated `add_..._to_server` parses each request before our code runs;
bytes that are not a valid message (corrupt wire format, bad UTF-8 in a string)
then end the call with INTERNAL "Exception deserializing request!", and on a
stream grpc may try to send a second status that never completes, leaving the
call (and a graceful stop) hanging. Here the parse never raises: it yields an
`Undecodable` marker, and the handlers answer it with INVALID_ARGUMENT like any
other bad input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from cachegate.rpc._status import UNDECODABLE
from cachegate.rpc._wire import EntryLimit, RequestLimit, counted, limited

__all__ = ["Undecodable", "add_service", "handler_factory", "undecodable_message"]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands in for a request whose bytes did not parse."""

    type_name: str
    reason: str


def undecodable_message(request: Undecodable) -> str:
    return f"the request is not a valid {request.type_name}: {request.reason}"


def _tolerant(message_class: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message | Undecodable:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Undecodable(name, str(exc))

    return parse


def _guard_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            context.abort(UNDECODABLE, undecodable_message(request))
        return behavior(request, context)

    return handler


def _guard_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    def handler(requests: Iterable[Any], context: grpc.ServicerContext) -> Any:
        def checked() -> Iterator[Any]:
            for request in requests:
                if isinstance(request, Undecodable):
                    context.abort(UNDECODABLE, undecodable_message(request))
                yield request

        return behavior(checked(), context)

    return handler


def handler_factory(
    request_streaming: bool, response_streaming: bool
) -> Callable[..., grpc.RpcMethodHandler[Any, Any]]:
    """grpc's constructor for a method handler of this kind of RPC."""
    factories: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    return factories[(request_streaming, response_streaming)]


def add_service(
    server: grpc.Server,
    service: ServiceDescriptor,
    behaviors: Mapping[str, Callable[..., Any]],
    *,
    guarded: bool = True,
    raw: frozenset[str] = frozenset(),
    limits: Mapping[str, RequestLimit] | None = None,
    entries: Mapping[str, Sequence[EntryLimit]] | None = None,
    serializers: Mapping[str, Callable[[Any], bytes]] | None = None,
) -> None:
    """Register `behaviors` (method name -> servicer method) for `service`.

    With guarded=False the behaviors receive Undecodable themselves (the cache
    servicer does, so its metrics and error mapping see the bad request too).
    Methods named in `raw` get the request bytes unparsed (they parse themselves).
    `limits` maps a method to its own request size limit and the setting behind it:
    a larger request reaches the behavior as MessageTooLarge, never parsed.
    `entries` maps a method to limits on its repeated fields' entries: a request past
    one reaches the behavior as TooManyEntries, never parsed.
    `serializers` maps a method to its own response serializer (its replies may come
    encoded already).
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behavior = behaviors[method.name]
        request: Callable[[bytes], Any] | None = None
        if method.name not in raw:
            request = _tolerant(message_factory.GetMessageClass(method.input_type))
            if limits and method.name in limits:
                names = {f.number: f.name for f in method.input_type.fields}
                request = limited(request, method.input_type.full_name, limits[method.name], names)
            if entries and method.name in entries:
                request = counted(request, method.input_type.full_name, entries[method.name])
        response: Callable[[Any], bytes] = message_factory.GetMessageClass(
            method.output_type
        ).SerializeToString
        if serializers and method.name in serializers:
            response = serializers[method.name]
        streaming_in, streaming_out = method.client_streaming, method.server_streaming
        if guarded:
            behavior = _guard_stream(behavior) if streaming_in else _guard_unary(behavior)
        handlers[method.name] = handler_factory(streaming_in, streaming_out)(
            behavior, request_deserializer=request, response_serializer=response
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # Registered handlers skip grpc's per-call lookup by name (not in grpc-stubs yet).
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]
