"""Observing every RPC once: a server interceptor in front of every service.

Like go-grpc-prometheus's server interceptors, `ObservingInterceptor` sees each
call of every service the server serves (cache, health, admin, reflection), so no
servicer reports its own calls. It is the outermost interceptor: a call refused by
the auth interceptor (UNAUTHENTICATED, PERMISSION_DENIED) is counted too. Calls
grpc refuses before any interceptor runs are not: an unknown method (UNIMPLEMENTED)
and a call past CACHEGATE_MAX_CONCURRENT_RPCS (RESOURCE_EXHAUSTED).

The code recorded is the code the caller sees. grpc sends the code the handler set
(`context.abort`, `context.set_code`, as grpc_health's Check does for an unknown
service), else OK when the handler returns and UNKNOWN when it raises; a call ended
from another thread (`_endcall.end_call`: the send watch, an idle stream) sets its
code on the context before it cancels the call, and a stream the caller went away
from ends CANCELLED. One race is grpc's: a caller's reset first ends the handler's
requests, then marks the call cancelled, and a handler that finishes in between is
counted OK. Streams are timed until their last reply, through a wrapper
around the response iterator.

The wrapped handler of each method is made once and reused while the handler
behind it stays the same object (grpc hands out one handler per registered method),
so a call costs a dictionary lookup here, not a new handler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from cachegate.rpc._decode import handler_factory

__all__ = ["ObservingInterceptor", "RpcObserver"]

if TYPE_CHECKING:  # grpc-stubs make these generic; grpc itself does not
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.ServerInterceptor


class RpcObserver(Protocol):
    """What the outside world learns of each RPC (the metrics hook in here).

    `method` is the full gRPC method name, "/cachegate.v1.CacheService/Get".
    """

    def started(self, method: str) -> None:
        """An RPC of `method` began."""

    def handled(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """It ended with `code` after `seconds` (streams: when the stream ends)."""


_OK, _UNKNOWN, _CANCELLED = grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED


def _set_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The code the handler (or end_call) set on the call, if any."""
    code: grpc.StatusCode | None = context.code()  # type: ignore[attr-defined]  # grpcio has it; grpc-stubs 1.53 does not
    return code


def _raised_code(context: grpc.ServicerContext, exc: BaseException) -> grpc.StatusCode:
    """The code the caller sees when the handler raised `exc` (or was closed)."""
    code = _set_code(context)
    if code is not None:  # context.abort, or end_call from another thread
        return code
    if isinstance(exc, grpc.RpcError | GeneratorExit):  # the call was gone: no status sent
        return _CANCELLED
    return _UNKNOWN  # grpc answers an unexpected exception with UNKNOWN


def _observed_unary(
    behavior: Callable[[Any, grpc.ServicerContext], Any], method: str, observer: RpcObserver
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def observed(request: Any, context: grpc.ServicerContext) -> Any:
        observer.started(method)
        start = time.perf_counter()
        try:
            response = behavior(request, context)
        except BaseException as exc:
            observer.handled(method, _raised_code(context, exc), time.perf_counter() - start)
            raise
        # context.code() inline (no helper frame): this is every unary call's path.
        code = context.code()  # type: ignore[attr-defined]  # grpcio has it; grpc-stubs 1.53 not
        observer.handled(method, code or _OK, time.perf_counter() - start)
        return response

    return observed


def _observed_stream(
    behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
    method: str,
    observer: RpcObserver,
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        observer.started(method)
        start = time.perf_counter()
        try:
            # grpc closes this generator when the call ends early: `yield from` closes
            # the servicer's too, so its clean-up runs before the code is read.
            yield from behavior(request, context)
        except BaseException as exc:
            observer.handled(method, _raised_code(context, exc), time.perf_counter() - start)
            raise
        # A caller that cancelled while the handler finished (its requests ended, then
        # the cancel came) never gets the OK grpc would send: it saw CANCELLED.
        code = _set_code(context) or (_OK if context.is_active() else _CANCELLED)
        observer.handled(method, code, time.perf_counter() - start)

    return observed


def observed_handler(handler: Handler, method: str, observer: RpcObserver) -> Handler:
    """`handler` with its behaviour reported to `observer` as `method`."""
    streaming_in, streaming_out = handler.request_streaming, handler.response_streaming
    if streaming_out:
        responses = handler.stream_stream if streaming_in else handler.unary_stream
        assert responses is not None  # grpc's handler of this kind has this behaviour
        behavior = _observed_stream(responses, method, observer)
    else:
        response = handler.stream_unary if streaming_in else handler.unary_unary
        assert response is not None
        behavior = _observed_unary(response, method, observer)
    return handler_factory(streaming_in, streaming_out)(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ObservingInterceptor(_Interceptor):
    """Reports every call of every service to an `RpcObserver` (see the module)."""

    def __init__(self, observer: RpcObserver) -> None:
        self._observer = observer
        # method -> (the handler grpc gave, its observed twin)
        self._observed: dict[str, tuple[Handler, Handler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        method: str = handler_call_details.method
        known = self._observed.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        observed = observed_handler(handler, method, self._observer)
        self._observed[method] = (handler, observed)
        return observed
