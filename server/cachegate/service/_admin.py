"""AdminService: operator controls of the breaker (admin role only, see _auth)."""

from __future__ import annotations

import logging

import grpc

from cachegate.core import BreakerSnapshot, CircuitState
from cachegate.pool import RedisConnectionPool
from cachegate.v1 import admin_pb2 as admin_pb
from cachegate.v1 import admin_pb2_grpc as admin_grpc
from cachegate.v1 import cache_pb2 as pb

__all__ = ["AdminServicer", "breaker_stats"]

log = logging.getLogger("cachegate.admin")

CIRCUIT_STATES = {
    CircuitState.CLOSED: pb.CIRCUIT_STATE_CLOSED,
    CircuitState.OPEN: pb.CIRCUIT_STATE_OPEN,
    CircuitState.HALF_OPEN: pb.CIRCUIT_STATE_HALF_OPEN,
}


def breaker_stats(snapshot: BreakerSnapshot) -> pb.BreakerStats:
    return pb.BreakerStats(
        state=CIRCUIT_STATES[snapshot.state],
        consecutive_failures=snapshot.consecutive_failures,
        retry_after_seconds=snapshot.retry_after,
        opened_total=snapshot.opened_total,
        transitions_total=snapshot.transitions_total,
        rejected_total=snapshot.rejected_total,
        forced=snapshot.forced,
    )


class AdminServicer(admin_grpc.AdminServiceServicer):
    def __init__(self, pool: RedisConnectionPool) -> None:
        self._breaker = pool.breaker

    def ForceOpenBreaker(
        self, request: admin_pb.ForceOpenBreakerRequest, context: grpc.ServicerContext
    ) -> admin_pb.ForceOpenBreakerResponse:
        self._breaker.force_open()
        log.warning("breaker forced open by an operator")
        return admin_pb.ForceOpenBreakerResponse(breaker=breaker_stats(self._breaker.snapshot()))

    def ForceCloseBreaker(
        self, request: admin_pb.ForceCloseBreakerRequest, context: grpc.ServicerContext
    ) -> admin_pb.ForceCloseBreakerResponse:
        self._breaker.force_closed()
        log.warning("breaker forced closed by an operator")
        return admin_pb.ForceCloseBreakerResponse(breaker=breaker_stats(self._breaker.snapshot()))

    def ResetBreaker(
        self, request: admin_pb.ResetBreakerRequest, context: grpc.ServicerContext
    ) -> admin_pb.ResetBreakerResponse:
        self._breaker.reset()
        log.info("breaker reset by an operator")
        return admin_pb.ResetBreakerResponse(breaker=breaker_stats(self._breaker.snapshot()))
