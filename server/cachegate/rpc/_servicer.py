"""CacheService: the gRPC methods, each a thin shell over the breaker-guarded pool."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import grpc

from cachegate.core import LimitSettings, StaleCopy, StaleValue
from cachegate.pool import RedisConnectionPool, RedisReport
from cachegate.rpc._admin import breaker_stats
from cachegate.rpc._auth import Identity, TokenTable, caller_identity
from cachegate.rpc._batches import BatchRunner
from cachegate.rpc._budget import REQUEST_COPIES, MemoryBudget
from cachegate.rpc._bulkreply import EncodedReply, PipelineReply
from cachegate.rpc._decode import Undecodable, undecodable_message
from cachegate.rpc._endcall import end_call
from cachegate.rpc._health import HealthSample
from cachegate.rpc._limits import check_key, check_ttl, check_value
from cachegate.rpc._replies import ReplyBudget
from cachegate.rpc._sendwatch import SendWatch
from cachegate.rpc._stale import StaleReads
from cachegate.rpc._status import (
    InvalidArgumentError,
    Rejection,
    ShuttingDownError,
    TooBusyError,
    abort,
    rejection_for,
)
from cachegate.rpc._streams import StreamGate, caller_of, status_closer
from cachegate.rpc._tenants import TenantCounters
from cachegate.rpc._wire import MessageTooLarge
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc as pb_grpc

__all__ = ["CacheServicer"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_VALUE, _NOT_FOUND = pb.OUTCOME_VALUE, pb.OUTCOME_NOT_FOUND

# Less time than this left on a call's deadline once a batch has run: its reply could
# not reach the caller in time.
_NO_TIME_LEFT_S = 0.001
_DEADLINE_PASSED = Rejection(
    grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed while its batch ran"
)


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
            abort(context, rejection_for(exc, name))
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
        # Each batch is counted, parsed and run there (see _batches.py).
        self._batches = BatchRunner(pool, limits, self._stale, self._budget, self._replies)

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
    ) -> Iterator[PipelineReply]:  # encoded by _bulkreply.wire
        tenant = self._tenant(context)
        caller = caller_of(context.peer(), tenant.tenant if tenant else None)
        try:
            stream = self._streams.admit(caller, status_closer(context))
        except TooBusyError as exc:
            abort(context, rejection_for(exc, "Pipeline"))
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
                    self._batches.check_count(data)  # before any memory is taken for it
                    if not self._budget.reserve(
                        len(data) * REQUEST_COPIES, self._replies.wait(context)
                    ):
                        raise TooBusyError(self._replies.full_message("batch"))
                    held = len(data) * REQUEST_COPIES
                    parsed = self._batches.parse(data)
                    if isinstance(parsed, list):  # gets only: the fast path
                        keys = [namespace + key for key in parsed] if namespace else parsed
                        reply, kept = self._batches.get_only(keys, context)
                    else:
                        reply, kept = self._batches.run(parsed, context, prefix)
                except (InvalidArgumentError, ShuttingDownError, TooBusyError) as exc:
                    abort(context, rejection_for(exc, "Pipeline"))
                finally:
                    self._budget.release(held)
                if context.time_remaining() < _NO_TIME_LEFT_S:
                    # The caller has stopped waiting: the stream ends DEADLINE_EXCEEDED,
                    # as a unary call would, rather than with a reply of per-operation
                    # errors that might still reach the caller before its own timer fires.
                    self._budget.release(kept)
                    abort(context, _DEADLINE_PASSED)
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

    def _tenant(self, context: grpc.ServicerContext) -> Identity | None:
        """The caller's identity when tokens are on (AuthInterceptor resolved it)."""
        if self._tokens is None:
            return None
        identity = caller_identity()
        if identity is None:  # unreachable behind AuthInterceptor; never serve unscoped
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token")
        return identity

    def _count_batch(self, tenant: str, reply: PipelineReply) -> None:
        if type(reply) is EncodedReply:
            reply = reply.message
        assert isinstance(reply, pb.PipelineResponse)
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
