"""AdminService: operator controls of the breaker (admin role only, see _auth)."""

from __future__ import annotations

import logging

import grpc

from cachegate.core import BreakerSnapshot, CircuitState
from cachegate.pool import RedisConnectionPool
from cachegate.rpc._commands import BreakerCommands, Forced, LocalBreakerCommands
from cachegate.v1 import admin_pb2 as admin_pb
from cachegate.v1 import admin_pb2_grpc as admin_grpc
from cachegate.v1 import cache_pb2 as pb

__all__ = ["CIRCUIT_STATE_TO_PROTO", "REACH_TIMEOUT", "AdminServicer", "breaker_stats"]

log = logging.getLogger("cachegate.admin")

REACH_TIMEOUT = 5.0
"""Seconds an admin RPC waits for every live worker to apply its command (or its deadline)."""

# The server's one map from the breaker's states to the wire's (the client's way back is
# cachegate.client._compat.CIRCUIT_STATE_FROM_PROTO; tests/unit/test_circuit_states.py
# checks that the two agree and cover every state).
CIRCUIT_STATE_TO_PROTO: dict[CircuitState, pb.CircuitState] = {
    CircuitState.CLOSED: pb.CIRCUIT_STATE_CLOSED,
    CircuitState.OPEN: pb.CIRCUIT_STATE_OPEN,
    CircuitState.HALF_OPEN: pb.CIRCUIT_STATE_HALF_OPEN,
}


def breaker_stats(snapshot: BreakerSnapshot) -> pb.BreakerStats:
    return pb.BreakerStats(
        state=CIRCUIT_STATE_TO_PROTO[snapshot.state],
        consecutive_failures=snapshot.consecutive_failures,
        retry_after_seconds=snapshot.retry_after,
        opened_total=snapshot.opened_total,
        transitions_total=snapshot.transitions_total,
        rejected_total=snapshot.rejected_total,
        forced=snapshot.forced,
    )


class AdminServicer(admin_grpc.AdminServiceServicer):
    """The breaker controls. In worker mode `commands` carries each one to every worker
    (see _board.py) and the RPC answers once all live workers applied it, or fails
    DEADLINE_EXCEEDED naming those that did not within `REACH_TIMEOUT` (the command
    stays in force: they apply it when they next look, or when they restart)."""

    def __init__(self, pool: RedisConnectionPool, commands: BreakerCommands | None = None) -> None:
        self._breaker = pool.breaker
        self._commands = commands or LocalBreakerCommands(pool.breaker)

    def _command(self, forced: Forced, name: str, context: grpc.ServicerContext) -> pb.BreakerStats:
        remaining = context.time_remaining()
        timeout = REACH_TIMEOUT if remaining is None else max(0.0, min(REACH_TIMEOUT, remaining))
        reach = self._commands.command(forced, timeout)
        fields: dict[str, object] = {"generation": reach.generation, "workers": reach.workers}
        if not reach.complete:
            log.error(
                f"{name}: not every worker applied it", extra={**fields, "pending": reach.pending}
            )
            context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{name}: workers {list(reach.pending)} of {reach.workers} did not apply it "
                f"within {timeout:g}s; it stays in force and they apply it when they next "
                "check or restart",
            )
        log.warning(name + " by an operator", extra=fields)
        return breaker_stats(self._breaker.snapshot())

    def ForceOpenBreaker(
        self, request: admin_pb.ForceOpenBreakerRequest, context: grpc.ServicerContext
    ) -> admin_pb.ForceOpenBreakerResponse:
        stats = self._command(Forced.OPEN, "breaker forced open", context)
        return admin_pb.ForceOpenBreakerResponse(breaker=stats)

    def ForceCloseBreaker(
        self, request: admin_pb.ForceCloseBreakerRequest, context: grpc.ServicerContext
    ) -> admin_pb.ForceCloseBreakerResponse:
        stats = self._command(Forced.CLOSED, "breaker forced closed", context)
        return admin_pb.ForceCloseBreakerResponse(breaker=stats)

    def ResetBreaker(
        self, request: admin_pb.ResetBreakerRequest, context: grpc.ServicerContext
    ) -> admin_pb.ResetBreakerResponse:
        stats = self._command(Forced.NONE, "breaker reset", context)
        return admin_pb.ResetBreakerResponse(breaker=stats)
