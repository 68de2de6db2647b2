"""The cluster backend: redis-py's RedisCluster (slot routing, MOVED/ASK, failover).

RedisCluster has no per-call read timeout and routes each command itself, so this
backend goes through its public API only: REDIS_SOCKET_TIMEOUT bounds each read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from cachegate.core import Config
from cachegate.pool._backend import (
    Command,
    PoolCounts,
    ServerInfo,
    connection_kwargs,
    human_bytes,
    value_and_ttl,
)
from cachegate.pool._bounded import read_known, worst_case_fits
from cachegate.pool._redispy import is_wrong_type, open_connections

__all__ = ["ClusterBackend"]


class ClusterBackend:
    """Redis Cluster through redis-py's RedisCluster (slot routing, MOVED/ASK, failover)."""

    kind = "cluster"

    def __init__(self, config: Config) -> None:
        settings = config.redis
        nodes = settings.cluster_nodes or ((settings.host, settings.port),)
        kwargs = connection_kwargs(config)
        kwargs.pop("retry")  # RedisCluster refuses it in kwargs; it takes its own below
        kwargs.pop("db")  # a cluster has only db 0
        if settings.tls:
            kwargs["ssl"] = True
        self._client = RedisCluster(
            startup_nodes=[ClusterNode(str(n[0]), int(n[1])) for n in _pairs(nodes)],
            max_connections=config.pool.max_connections,
            # Cluster retries are how RedisCluster follows MOVED replies and failovers:
            # they stay on, bounded by our attempts and backoff.
            retry=Retry(
                ExponentialWithJitterBackoff(
                    cap=config.retry.backoff_cap, base=config.retry.backoff_base
                ),
                config.retry.attempts,
            ),
            **kwargs,
        )
        self._value_limit = config.limits.max_value_bytes

    @property
    def client(self) -> RedisCluster:
        return self._client

    def run(self, command: Command, timeout: float) -> Any:
        # RedisCluster has no per-call read timeout: REDIS_SOCKET_TIMEOUT bounds each read.
        return self._client.execute_command(*command)

    def run_batch(
        self, commands: Sequence[Command], timeout: float, max_bytes: int | None = None
    ) -> list[Any]:
        gets = sum(1 for command in commands if command[0] == "GET")
        if max_bytes is not None and not worst_case_fits(gets, self._value_limit, max_bytes):
            return self._run_segments(commands, max_bytes)
        return self._pipeline(commands)

    def run_each(self, commands: Sequence[Command], timeout: float) -> list[Any]:
        # Not used by the pool (auto-batching stays off on Cluster: see _sharedtrips.py); a
        # ClusterPipeline sends each command as itself, one pipeline per node.
        return self._pipeline(commands)

    def _run_segments(self, commands: Sequence[Command], max_bytes: int) -> list[Any]:
        """The commands before each run of gets as one pipeline, then the run read in
        chunks within what is left of the bound (a run's keys span slots: no script)."""
        results: list[Any] = []
        pending: list[Command] = []
        run: list[Any] = []
        room = max_bytes
        for command in [*commands, ("END",)]:
            if command[0] == "GET":
                if pending:
                    results.extend(self._pipeline(pending))
                    pending = []
                run.append(command[1])
                continue
            if run:
                values = self.get_many(run, 0.0, room)
                room -= sum(len(v) for v in values if isinstance(v, bytes))
                results.extend(values)
                run = []
            if command[0] != "END":
                pending.append(command)
        if pending:
            results.extend(self._pipeline(pending))
        return results

    def _pipeline(self, commands: Sequence[Command]) -> list[Any]:
        # ClusterPipeline splits the batch by slot and sends one pipeline per node.
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for reply in replies:  # a node that could not be reached fails the whole batch
            if isinstance(reply, Exception) and not isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def get_with_ttl(self, key: str | bytes, timeout: float) -> tuple[Any, Any]:
        # One key, one slot: a transaction on the node that owns it.
        pipe = self._client.pipeline(transaction=True)
        pipe.execute_command("GET", key)
        pipe.execute_command("PTTL", key)
        return value_and_ttl([pipe.execute(raise_on_error=False)])

    def get_many(
        self, keys: Sequence[str | bytes], timeout: float, max_bytes: int | None = None
    ) -> list[Any]:
        # One MGET per slot, sent as a pipeline per node (a plain MGET would be CROSSSLOT).
        if worst_case_fits(len(keys), self._value_limit, max_bytes) or max_bytes is None:
            result: list[Any] = self._client.mget_nonatomic(list(keys))
            return result

        distinct = list(dict.fromkeys(keys))
        pipe = self._client.pipeline(transaction=False)
        for key in distinct:
            pipe.strlen(key)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and not is_wrong_type(reply):
                raise reply  # NOPERM, an unreachable node: never read as misses
        sizes = {
            key: -1 if isinstance(reply, Exception) else int(reply)
            for key, reply in zip(distinct, replies, strict=True)
        }
        return read_known(
            keys,
            [sizes[key] for key in keys],
            max_bytes,
            self._value_limit,
            lambda chunk: list(self._client.mget_nonatomic(list(chunk))),
        )

    def _pools(self) -> list[redis.ConnectionPool]:
        return [
            node.redis_connection.connection_pool
            for node in self._client.get_nodes()
            if node.redis_connection is not None
        ]

    def reap_idle(self, max_idle: float) -> int:
        return 0  # RedisCluster's per-node pools are its own business

    def counts(self) -> PoolCounts:
        idle = in_use = 0
        for pool in self._pools():
            i, u = open_connections(pool)
            idle, in_use = idle + i, in_use + u
        return PoolCounts(created=idle + in_use, idle=idle, in_use=in_use)

    def info(self, timeout: float) -> ServerInfo:
        per_node: dict[str, Any] = self._client.info(target_nodes=RedisCluster.PRIMARIES)
        if per_node and "redis_version" in per_node:  # a single node answers flat
            per_node = {"node": per_node}
        nodes = list(per_node.values())
        first = nodes[0] if nodes else {}
        return ServerInfo(
            version=str(first.get("redis_version", "")),
            connected_clients=sum(int(n.get("connected_clients", 0)) for n in nodes),
            used_memory_human=human_bytes(sum(int(n.get("used_memory", 0)) for n in nodes)),
            keyspace_hits=sum(int(n.get("keyspace_hits", 0)) for n in nodes),
            keyspace_misses=sum(int(n.get("keyspace_misses", 0)) for n in nodes),
        )

    def close(self) -> None:
        self._client.close()


def _pairs(nodes: Sequence[Any]) -> list[tuple[str, int]]:
    return [(n.host, n.port) if hasattr(n, "host") else (str(n[0]), int(n[1])) for n in nodes]
