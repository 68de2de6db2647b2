"""Ending a call from another thread with a status: the one place that reaches into grpcio.

The public `context.cancel()` ends a call as CANCELLED, a code the README's error
table does not list (clients do not know what to make of it). grpc core's
cancel-with-status, which grpc's own channel uses, sends the status and message as
trailers, resets the stream and wakes the handler's blocked read or write. grpcio
keeps the core call in the servicer context's private `_rpc_event.call`: it is
looked up with care, and without it the call still ends (as CANCELLED, logged).
tests/integration/test_fair_streams.py and tests/drills/test_13_slow_readers.py check
the status a caller sees, so a grpcio upgrade that breaks this shows there.

The code is also set on the context first (public API), the way `context.abort`
leaves it: the observing interceptor (_observe.py) reads the code there when the
handler unwinds, so the metrics count the code the caller sees.
"""

from __future__ import annotations

import logging

import grpc
from grpc import _common  # the status-code table grpc itself uses to cancel calls

__all__ = ["end_call"]

log = logging.getLogger("cachegate.service")


def end_call(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """End the call behind `context` with `code` and `details` for the caller."""
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    context.set_details(details)
    context.set_code(code)
    try:
        call.cancel(_common.STATUS_CODE_TO_CYGRPC_STATUS_CODE[code], details)  # type: ignore[union-attr]
    except Exception:  # a grpcio without it, or a context that is not grpcio's
        log.warning("cannot end a call with a status; it ends CANCELLED", exc_info=True)
        context.set_code(grpc.StatusCode.CANCELLED)
        context.cancel()
