"""CacheService: the gRPC methods, each a thin shell over the breaker-guarded pool."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from cachegate.core import LimitSettings, StaleCopy, StaleValue, short_key_chars
from cachegate.pool import CacheError, PartialRead, RedisConnectionPool, RedisReport, TooLarge
from cachegate.rpc._admin import breaker_stats
from cachegate.rpc._auth import Identity, TokenTable, caller_identity
from cachegate.rpc._budget import REPLY_COPIES, REQUEST_COPIES, MemoryBudget
from cachegate.rpc._decode import Undecodable, undecodable_message
from cachegate.rpc._endcall import end_call
from cachegate.rpc._fastpath import get_only_keys
from cachegate.rpc._health import HealthSample
from cachegate.rpc._limits import check_key, check_ttl, check_value
from cachegate.rpc._replies import ReplyBudget, too_large_indexes
from cachegate.rpc._sendwatch import SendWatch
from cachegate.rpc._stale import StaleReads
from cachegate.rpc._status import (
    INTERNAL,
    InvalidArgumentError,
    Rejection,
    ShuttingDownError,
    TooBusyError,
    abort,
    code_number,
    status_for,
)
from cachegate.rpc._streams import StreamGate, caller_of, status_closer
from cachegate.rpc._wire import MessageTooLarge, too_many_operations
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc as pb_grpc

__all__ = ["CacheServicer"]

log = logging.getLogger("cachegate.service")

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_INVALID_ARGUMENT = code_number(grpc.StatusCode.INVALID_ARGUMENT)
_RESOURCE_EXHAUSTED = code_number(grpc.StatusCode.RESOURCE_EXHAUSTED)
_VALUE, _NOT_FOUND, _EMPTY = pb.OUTCOME_VALUE, pb.OUTCOME_NOT_FOUND, b""


def _rejection(exc: BaseException, method: str) -> Rejection:
    rejection = status_for(exc)
    if rejection is None:
        log.error("unexpected error in %s", method, exc_info=exc)
        return INTERNAL
    return rejection


def _unary(
    method: Callable[[CacheServicer, Req, grpc.ServicerContext], Resp],
) -> Callable[[CacheServicer, Req, grpc.ServicerContext], Resp]:
    """Turn every exception of a unary method into its status (the observing
    interceptor reports the RPC, see _observe.py)."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: CacheServicer, request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            if self._draining:  # a plain attribute: the one check a call pays for it
                raise ShuttingDownError
            if isinstance(request, Undecodable):
                raise InvalidArgumentError("request", undecodable_message(request))
            if isinstance(request, MessageTooLarge):  # never parsed: a bad request
                raise InvalidArgumentError(request.field, request.message())
            response = method(self, request, context)
        except Exception as exc:
            abort(context, _rejection(exc, name))
            raise AssertionError("abort() returned") from exc  # pragma: no cover
        return response

    return wrapper


class CacheServicer(pb_grpc.CacheServiceServicer):
    def __init__(
        self,
        pool: RedisConnectionPool,
        limits: LimitSettings,
        *,
        worker_id: int = 0,
        workers: int = 1,
        tokens: TokenTable | None = None,
        health: Callable[[], HealthSample] | None = None,
        stale_copy: StaleCopy | None = None,
    ) -> None:
        # Stats' Redis figures: the health prober's latest (HealthReporter.latest),
        # never a Redis call of its own; without a reporter, a live check.
        self._health = health or (lambda: HealthSample(pool.health_report(), 0.0))
        # With tokens, every key lives in its caller's tenant namespace (see _auth),
        # the identity AuthInterceptor resolved for the call.
        self._tokens = tokens
        self._tenants = TenantCounters()
        # Each open stream holds a server thread for its whole life: bound them so
        # streams can never take every thread away from unary calls, give each caller
        # a share only, and end idle streams (see _streams).
        self._streams = StreamGate(
            limits.max_streams, limits.stream_share, limits.stream_idle_seconds
        )
        self._pool = pool
        # The worker's copy of values for stale-if-error answers (see _stale.py).
        self._stale = StaleReads(pool, stale_copy)
        self._limits = limits
        self._worker_id = worker_id
        self._workers = workers
        self._draining = False
        # Every request and reply byte a caller can make this worker hold is counted
        # here; replies are bounded per reply and per worker (see _replies.py).
        self._budget = MemoryBudget(limits.memory_budget_bytes)
        self._replies = ReplyBudget(self._budget, limits)
        self._sends = SendWatch(limits.send_timeout, self._reply_unread)
        # Replies whose values outgrow the first read are built one at a time: they
        # hold the GIL for milliseconds (copies of megabytes), and one at a time
        # leaves the rest of the worker's time to every other caller.
        self._large_replies = threading.Lock()

    @property
    def streams(self) -> StreamGate:
        """The stream slots, shared with InvalidationService's streams."""
        return self._streams

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """From now on every new call is refused with UNAVAILABLE (the server is stopping);
        calls already running finish. Streams are cut between batches by the server
        (see _server.py)."""
        self._draining = True

    @_unary
    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.GetResponse:
        key = check_key(request.key, self._limits)
        tenant = self._tenant(context)
        if tenant is not None:
            key = tenant.prefix.encode() + key
        allowance = request.stale_if_error_seconds
        if allowance and self._stale.enabled:
            value = self._stale.get(key, allowance, context.time_remaining())
            if isinstance(value, StaleValue):
                if tenant is not None:
                    self._tenants.add(tenant.tenant, 1, 0, 0)
                return pb.GetResponse(
                    found=True, value=value.value, stale=True, age_seconds=value.age_seconds
                )
        else:
            value = self._pool.execute("GET", key, timeout=context.time_remaining())
        if tenant is not None:
            self._tenants.add(tenant.tenant, 1, int(value is not None), int(value is None))
        if value is None:
            return pb.GetResponse(found=False)
        return pb.GetResponse(found=True, value=value)

    @_unary
    def SetEx(self, request: pb.SetExRequest, context: grpc.ServicerContext) -> pb.SetExResponse:
        key = check_key(request.key, self._limits)
        check_ttl(request.ttl_seconds)
        check_value(request.value, self._limits)
        tenant = self._tenant(context)
        if tenant is not None:
            key = tenant.prefix.encode() + key
            self._tenants.add(tenant.tenant, 1, 0, 0)
        # A large value is copied again on its way to Redis: it needs room in the budget.
        held = self._replies.hold_request(len(request.value), context)
        try:
            # SETEX, keeping the worker's stale copy (see _stale.py).
            self._stale.set_ex(key, request.ttl_seconds, request.value, context.time_remaining())
        finally:
            self._budget.release(held)
        return pb.SetExResponse()

    @_unary
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        key = check_key(request.key, self._limits)
        tenant = self._tenant(context)
        if tenant is not None:
            key = tenant.prefix.encode() + key
            self._tenants.add(tenant.tenant, 1, 0, 0)
        removed = self._stale.delete(key, context.time_remaining())  # DEL; the copy drops it
        return pb.DeleteResponse(deleted=bool(removed))

    def Pipeline(  # type: ignore[override]  # requests arrive as bytes (see _fastpath)
        self, request_iterator: Iterable[bytes], context: grpc.ServicerContext
    ) -> Iterator[pb.PipelineResponse]:
        tenant = self._tenant(context)
        caller = caller_of(context.peer(), tenant.tenant if tenant else None)
        try:
            stream = self._streams.admit(caller, status_closer(context))
        except TooBusyError as exc:
            abort(context, _rejection(exc, "Pipeline"))
            raise AssertionError("abort() returned") from exc  # pragma: no cover
        request_iterator = stream.watch(request_iterator)  # the idle clock
        try:
            prefix = tenant.prefix if tenant else ""
            namespace = prefix.encode()
            # grpc hands us one request at a time and HTTP/2 flow control holds the rest
            # back, so a fast sender never makes us buffer without bound. Requests come
            # as bytes: a batch of plain gets skips the full parse (see _fastpath).
            for data in request_iterator:
                # The batch's bytes count against the budget until its reply is built;
                # the reply's count until grpc has sent it (it asks for the next one).
                held = 0
                try:
                    if self._draining:  # the batch before this one got its reply
                        raise ShuttingDownError
                    self._check_count(data)  # before any memory is taken for it
                    if not self._budget.reserve(
                        len(data) * REQUEST_COPIES, self._replies.wait(context)
                    ):
                        raise TooBusyError(self._replies.full_message("batch"))
                    held = len(data) * REQUEST_COPIES
                    parsed = self._parse_batch(data)
                    if isinstance(parsed, list):  # gets only: the fast path
                        keys = [namespace + key for key in parsed] if namespace else parsed
                        reply, kept = self._get_batch(keys, context)
                    else:
                        reply, kept = self._run_batch(parsed, context, prefix)
                except (InvalidArgumentError, ShuttingDownError, TooBusyError) as exc:
                    abort(context, _rejection(exc, "Pipeline"))
                finally:
                    self._budget.release(held)
                if tenant is not None:
                    self._count_batch(tenant.tenant, reply)
                sending = self._sends.arm(context)
                try:
                    yield reply
                finally:
                    self._sends.disarm(sending)  # False: _reply_unread ended the call
                    self._budget.release(kept)
        finally:
            self._streams.release(stream)

    def _reply_unread(self, context: grpc.ServicerContext) -> None:
        end_call(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"a Pipeline reply waited {self._limits.send_timeout:g}s for the caller to read it "
            "(CACHEGATE_SEND_TIMEOUT); read replies as you send batches",
        )

    def _check_count(self, data: bytes) -> None:
        """Counted on the wire before anything is parsed: building millions of empty
        operations costs far more than the bytes that carry them (see _wire.py)."""
        reason = too_many_operations(data, self._limits.max_batch_ops)
        if reason is not None:
            raise InvalidArgumentError(
                "operations",
                f"{reason}; the limit is {self._limits.max_batch_ops} operations "
                "(CACHEGATE_MAX_BATCH_OPS)",
            )

    def _parse_batch(self, data: bytes) -> list[bytes] | pb.PipelineRequest:
        """The keys of a batch of plain gets, or the parsed batch; InvalidArgumentError."""
        keys = get_only_keys(data, self._limits.max_key_bytes)
        if keys is None:
            try:
                batch = pb.PipelineRequest.FromString(data)
            except DecodeError as exc:
                name = pb.PipelineRequest.DESCRIPTOR.full_name
                raise InvalidArgumentError(
                    "batch", undecodable_message(Undecodable(name, str(exc)))
                ) from None
        size = len(keys) if keys is not None else len(batch.operations)
        if size > self._limits.max_batch_ops:
            raise InvalidArgumentError(
                "operations",
                f"batch has {size} operations; the limit is {self._limits.max_batch_ops} "
                "(CACHEGATE_MAX_BATCH_OPS)",
            )
        return keys if keys is not None else batch

    def _run_batch(
        self, batch: pb.PipelineRequest, context: grpc.ServicerContext, prefix: str = ""
    ) -> tuple[pb.PipelineResponse, int]:
        """The reply to a batch and the budget bytes it holds until it is sent."""
        operations = batch.operations
        size = len(operations)
        # The key rule's cheap check (core/_keys.py): a short key needs no encoding.
        short_key = short_key_chars(self._limits.max_key_bytes)
        outcomes = [pb.OUTCOME_UNSPECIFIED] * size
        values = [b""] * size
        errors: list[tuple[int, int, str]] = []
        commands: list[tuple[Any, ...]] = []
        positions: list[int] = []
        for index, op in enumerate(operations):
            if op.WhichOneof("op") == "get":
                key = op.get.key
                if key and len(key) <= short_key:
                    commands.append(("GET", prefix + key))
                    positions.append(index)
                    continue
            try:
                commands.append(self._command(index, op, prefix))
            except InvalidArgumentError as exc:
                outcomes[index] = pb.OUTCOME_ERROR
                errors.append((index, _INVALID_ARGUMENT, str(exc)))
                continue
            positions.append(index)
        # The gets' values are read within the reply's bound and the room reserved.
        gets = sum(1 for command in commands if command[0] == "GET")
        worst = gets * self._limits.max_value_bytes
        want = min(worst, self._replies.bound(size))
        granted = self._replies.reserve_read(want, context)
        allowance = batch.stale_if_error_seconds
        stale: list[pb.StaleAnswer] = []
        try:
            replies = self._stale.execute_many(
                commands,
                allowance,
                timeout=context.time_remaining(),
                max_bytes=None if worst <= granted else granted,
            )
        except Exception as exc:
            rejection = _rejection(exc, "Pipeline")
            answers = self._stale.answers(
                commands, exc, allowance, None if worst <= granted else granted
            )
            for at, index in enumerate(positions):
                answer = answers.get(at)
                if answer is not None:
                    outcomes[index] = pb.OUTCOME_VALUE
                    values[index] = answer.value
                    stale.append(pb.StaleAnswer(index=index, age_seconds=answer.age_seconds))
                    continue
                outcomes[index] = pb.OUTCOME_ERROR
                errors.append((index, code_number(rejection.code), rejection.message))
            replies = []
        for index, command, reply in zip(positions, commands, replies, strict=False):
            name = command[0]
            if isinstance(reply, CacheError):
                rejection = _rejection(reply, "Pipeline")
                outcomes[index] = pb.OUTCOME_ERROR
                errors.append((index, code_number(rejection.code), rejection.message))
            elif name == "GET":
                if reply is None:
                    outcomes[index] = pb.OUTCOME_NOT_FOUND
                elif isinstance(reply, TooLarge):
                    outcomes[index] = pb.OUTCOME_ERROR
                    message = self._replies.too_large_message(reply.size, granted < want)
                    errors.append((index, _RESOURCE_EXHAUSTED, message))
                else:
                    outcomes[index] = pb.OUTCOME_VALUE
                    values[index] = reply
            elif name == "SETEX":
                outcomes[index] = pb.OUTCOME_OK
            else:  # DEL
                outcomes[index] = pb.OUTCOME_OK if reply else pb.OUTCOME_NOT_FOUND
        errors.sort()
        response = pb.PipelineResponse(
            outcomes=outcomes,
            values=values,
            errors=[pb.OperationError(index=i, code=c, message=m) for i, c, m in errors],
            stale=stale,
        )
        return response, self._replies.settle(granted, response)

    def _get_batch(
        self, keys: list[str] | list[bytes], context: grpc.ServicerContext
    ) -> tuple[pb.PipelineResponse, int]:
        """A batch of valid gets only (the common read path): one multi-key read.

        Returns the reply and the budget bytes it holds until it is sent. One MGET
        when the batch's worst case fits the reply's bound and the budget; else a
        first read within a small share of the budget (the bounded script), and the
        values left out are read again with the room they need, as far as the
        reply's bound and the budget allow.
        """
        size = len(keys)
        bound = self._replies.bound(size)
        worst = size * self._replies.value_limit
        # One plain MGET whenever its worst case fits the reply's bound and the budget
        # has room for it right now; otherwise a first read within a small share.
        if worst <= bound and self._budget.reserve(worst * REPLY_COPIES):
            granted = worst
        else:
            granted = self._replies.reserve_read(
                min(worst, bound, self._replies.first_read), context
            )
        try:
            found = self._pool.get_many(
                keys,
                timeout=context.time_remaining(),
                max_bytes=None if worst <= granted else granted,
            )
            if type(found) is PartialRead:  # some values did not fit the first read
                if self._large_replies.acquire(timeout=self._replies.wait(context)):
                    try:
                        found, granted, by_budget = self._read_left_out(
                            keys, list(found), bound, granted, context
                        )
                        response = self._partial_reply(found, by_budget)
                    finally:
                        self._large_replies.release()
                else:
                    response = self._partial_reply(found, True)
                return response, self._replies.settle(granted, response, granted)
        except Exception as exc:
            rejection = _rejection(exc, "Pipeline")
            code, message = code_number(rejection.code), rejection.message
            response = pb.PipelineResponse(
                outcomes=[pb.OUTCOME_ERROR] * size,
                values=[b""] * size,
                errors=[
                    pb.OperationError(index=i, code=code, message=message) for i in range(size)
                ],
            )
            return response, self._replies.settle(granted, response)
        if None not in found:  # every key hit: no per-value test needed
            response = pb.PipelineResponse(outcomes=[_VALUE] * size, values=found)
        else:
            response = pb.PipelineResponse(
                outcomes=[_NOT_FOUND if v is None else _VALUE for v in found],
                values=[_EMPTY if v is None else v for v in found],
            )
        return response, self._replies.settle(granted, response)

    def _read_left_out(
        self,
        keys: list[str] | list[bytes],
        found: list[Any],
        bound: int,
        granted: int,
        context: grpc.ServicerContext,
    ) -> tuple[list[Any], int, bool]:
        """Read the values a first read left out, with the room they need as far as the
        bound and the budget allow. The values (a PartialRead if some are still left
        out), the value bytes now reserved, and whether the budget is what fell short."""
        left_out = too_large_indexes(found)
        used = sum(len(value) for value in found if isinstance(value, bytes))
        # Their sizes are known now: ask again only for those that can fit, in order.
        room = bound - used
        fitting: list[int] = []
        for index in left_out:
            size = found[index].size
            if size <= room:
                fitting.append(index)
                room -= size
        want = bound - used - room
        extra = self._replies.reserve_read(want, context)
        granted += extra
        partial = len(fitting) < len(left_out) or (extra == 0 and bool(fitting))
        if extra > 0 and fitting:
            try:
                again = self._pool.get_many(
                    [keys[i] for i in fitting], timeout=context.time_remaining(), max_bytes=extra
                )
            except BaseException:
                self._budget.release(extra * REPLY_COPIES)  # the caller settles the rest
                raise
            for index, value in zip(fitting, again, strict=True):
                found[index] = value
            partial = partial or type(again) is PartialRead
        if partial:
            return PartialRead(found), granted, extra < want
        return found, granted, False

    def _partial_reply(self, found: list[Any], by_budget: bool) -> pb.PipelineResponse:
        """A reply in which some gets may be left out: RESOURCE_EXHAUSTED for each of them."""
        outcomes = []
        values = []
        errors = []
        for index, value in enumerate(found):
            if isinstance(value, TooLarge):
                outcomes.append(pb.OUTCOME_ERROR)
                values.append(_EMPTY)
                message = self._replies.too_large_message(value.size, by_budget)
                errors.append(
                    pb.OperationError(index=index, code=_RESOURCE_EXHAUSTED, message=message)
                )
            elif value is None:
                outcomes.append(_NOT_FOUND)
                values.append(_EMPTY)
            else:
                outcomes.append(_VALUE)
                values.append(value)
        return pb.PipelineResponse(outcomes=outcomes, values=values, errors=errors)

    def _command(self, index: int, op: pb.Operation, prefix: str) -> tuple[Any, ...]:
        """The Redis command of one operation, checked against the limits."""
        where = f"operations[{index}]"
        kind = op.WhichOneof("op")
        namespace = prefix.encode()
        if kind == "get":
            return ("GET", namespace + check_key(op.get.key, self._limits, f"{where}.get.key"))
        if kind == "set_ex":
            key = check_key(op.set_ex.key, self._limits, f"{where}.set_ex.key")
            check_ttl(op.set_ex.ttl_seconds, f"{where}.set_ex.ttl_seconds")
            check_value(op.set_ex.value, self._limits, f"{where}.set_ex.value")
            return ("SETEX", namespace + key, op.set_ex.ttl_seconds, op.set_ex.value)
        if kind == "delete":
            key = check_key(op.delete.key, self._limits, f"{where}.delete.key")
            return ("DEL", namespace + key)
        raise InvalidArgumentError(where, "no operation set (one of get, set_ex, delete)")

    def _tenant(self, context: grpc.ServicerContext) -> Identity | None:
        """The caller's identity when tokens are on (AuthInterceptor resolved it)."""
        if self._tokens is None:
            return None
        identity = caller_identity()
        if identity is None:  # unreachable behind AuthInterceptor; never serve unscoped
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token")
        return identity

    def _count_batch(self, tenant: str, reply: pb.PipelineResponse) -> None:
        outcomes = list(reply.outcomes)
        hits = outcomes.count(_VALUE) - len(reply.stale)  # a stale answer read no Redis
        self._tenants.add(tenant, len(outcomes), hits, outcomes.count(_NOT_FOUND))

    @_unary
    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsResponse:
        """Every figure for an admin token or without tokens; a client token's own otherwise.

        Pool, call and Redis figures are shared by every tenant (another tenant's
        misses are in calls.misses_total), so a client token gets only what says
        nothing about others: see StatsResponse in cache.proto.
        """
        tenant = self._tenant(context)
        if tenant is not None and tenant.role != "admin":
            return self._client_stats(tenant)
        snapshot = self._pool.snapshot()  # one moment for pool, breaker and call figures
        sample = self._health()
        redis = sample.report.redis if sample.report is not None else None
        if redis is None:
            redis = RedisReport(healthy=False, error="no health probe has run yet")
        calls = snapshot.calls
        hit_rate = calls.hit_rate or 0.0  # None before any read: 0 on the wire
        return pb.StatsResponse(
            backend=snapshot.backend,
            pool=pb.PoolStats(
                max_connections=snapshot.max_connections,
                created_connections=snapshot.connections.created,
                available_connections=snapshot.connections.idle,
                in_use_connections=snapshot.connections.in_use,
                pending_requests=snapshot.pending_requests,
                wait_timeouts_total=calls.wait_timeouts_total,
            ),
            breaker=breaker_stats(snapshot.breaker),
            calls=pb.CallStats(
                calls_total=calls.calls_total,
                failures_total=calls.failures_total,
                retries_total=calls.retries_total,
                hits_total=calls.hits_total,
                misses_total=calls.misses_total,
                hit_rate=hit_rate,
            ),
            redis=pb.RedisInfo(  # unknowns (None) go as 0 / ""
                healthy=redis.healthy,
                ping_ms=redis.ping_ms or 0.0,
                version=redis.version or "",
                connected_clients=redis.connected_clients or 0,
                used_memory_human=redis.used_memory_human or "",
                hit_rate=hit_rate,  # the one hit rate, as in calls (not the probe's copy)
                error=redis.error or "",
                age_seconds=sample.age_seconds,
            ),
            worker_id=self._worker_id,
            workers=self._workers,
            tenant=self._tenant_stats(tenant),
        )

    def _client_stats(self, tenant: Identity) -> pb.StatsResponse:
        """A client token's view: no Redis call, nothing another tenant's calls move."""
        breaker = breaker_stats(self._pool.breaker.snapshot())
        return pb.StatsResponse(
            backend=self._pool.backend_kind,
            # Whether (and for how long) its calls are refused; the counters are everyone's.
            breaker=pb.BreakerStats(
                state=breaker.state, retry_after_seconds=breaker.retry_after_seconds
            ),
            worker_id=self._worker_id,
            workers=self._workers,
            tenant=self._tenant_stats(tenant),
        )

    def _tenant_stats(self, tenant: Identity | None) -> pb.TenantStats | None:
        if tenant is None:
            return None
        calls, hits, misses = self._tenants.get(tenant.tenant)
        return pb.TenantStats(
            name=tenant.tenant, calls_total=calls, hits_total=hits, misses_total=misses
        )


class TenantCounters:
    """Calls, hits and misses per tenant (a dict of small lists behind one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}

    def add(self, tenant: str, calls: int, hits: int, misses: int) -> None:
        with self._lock:
            counts = self._counts.setdefault(tenant, [0, 0, 0])
            counts[0] += calls
            counts[1] += hits
            counts[2] += misses

    def get(self, tenant: str) -> tuple[int, int, int]:
        with self._lock:
            calls, hits, misses = self._counts.get(tenant, (0, 0, 0))
            return calls, hits, misses
