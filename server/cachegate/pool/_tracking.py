"""InvalidationTracker: one thread per server process that hears of every change to Redis.

It opens one link per Redis master (see _tracklinks.py: standalone, the master
Sentinel names, every master of a Cluster; the embedded backend in process), and
tells its listener two things: the keys that changed, and "reset" whenever it
cannot say what changed: when tracking starts (changes before it went unheard),
when Redis is flushed, and when a link is lost. A lost link closes every link;
they are opened again, with backoff, from a fresh look at the topology (the
master Sentinel names now; Cluster's masters now), and a second reset follows
once tracking is back. A heartbeat checks each link (see RedisLink.heartbeat) and,
on Cluster, that the set of masters has not changed.
"""

from __future__ import annotations

import logging
import random
import select
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import redis
from redis.sentinel import Sentinel

from cachegate.core import Address, Config
from cachegate.pool._pool import RedisConnectionPool
from cachegate.pool._tracklinks import (
    FLUSHED,
    FakeLink,
    Link,
    RedisLink,
    cluster_masters,
    link_kwargs,
)

__all__ = ["InvalidationTracker", "TrackingListener", "tracker_for"]

log = logging.getLogger("cachegate.pool")

# Seconds between heartbeats of the links (and Cluster topology checks): how long a
# tracking connection that silently went away can go unnoticed, beside the socket
# timeout of the check itself.
HEARTBEAT = 1.0
# Backoff between attempts to open the links again.
BACKOFF_BASE, BACKOFF_CAP = 0.05, 2.0


class TrackingListener(Protocol):
    def changed(self, keys: list[bytes]) -> None:
        """These Redis keys changed (full names, tenant namespace included)."""

    def reset(self, reason: str, *, tracking: bool) -> None:
        """What changed is unknown; `tracking` says whether changes are heard from now on."""


class InvalidationTracker:
    """Tracks every change under `prefixes` ("" or none: every key); see the module."""

    def __init__(
        self,
        config: Config,
        prefixes: Sequence[str],
        listener: TrackingListener,
        *,
        fake_connection: tuple[type[redis.Connection], dict[str, Any]] | None = None,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self._config = config
        self._prefixes = [p for p in prefixes if p]
        self._listener = listener
        self._fake = fake_connection
        self._heartbeat = heartbeat
        self._kwargs = link_kwargs(config)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._links: list[Link] = []
        self._tracking = False
        self._masters: list[Address] = []

    @property
    def tracking(self) -> bool:
        return self._tracking

    def start(self) -> None:
        """Start tracking (idempotent); the listener hears a reset once it is on."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="invalidations", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 1.0) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # --- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        ever = False
        while not self._stop.is_set():
            try:
                links = self._open()
            except Exception as exc:  # Redis down, a failover under way, refused
                failures += 1
                level = logging.WARNING if failures in (1, 10) else logging.DEBUG
                log.log(level, "cannot start invalidation tracking; retrying", exc_info=exc)
                self._stop.wait(self._backoff(failures))
                continue
            failures = 0
            self._links = links
            self._tracking = True
            log.info("invalidation tracking on", extra={"links": [link.name for link in links]})
            self._listener.reset("tracking resumed" if ever else "subscribed", tracking=True)
            ever = True
            reason = "server stopping"
            try:
                self._pump(links)
            except Exception as exc:
                reason = f"tracking lost: {exc}"
                log.warning("invalidation tracking lost; opening it again", exc_info=exc)
            finally:
                self._tracking = False
                self._links = []
                for link in links:
                    link.close()
            self._listener.reset(reason, tracking=False)
            if not self._stop.is_set():
                failures = 1
                self._stop.wait(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures, 16))
        return random.uniform(ceiling / 2, ceiling)

    def _open(self) -> list[Link]:
        if self._fake is not None:
            connection_class, kwargs = self._fake
            return [FakeLink(connection_class, kwargs)]
        settings = self._config.redis
        backend = self._config.backend
        if backend == "cluster":
            self._masters = self._discover_masters()
            addresses = self._masters
        elif backend == "sentinel":
            addresses = [self._sentinel_master()]
        else:
            addresses = [Address(settings.host, settings.port)]
        # Cluster has one database; elsewhere the links SELECT the configured one on connect.
        kwargs = {**self._kwargs, "db": 0} if backend == "cluster" else self._kwargs
        links: list[Link] = []
        try:
            for address in addresses:
                links.append(RedisLink(address, kwargs, settings.tls, self._prefixes))
        except BaseException:
            for link in links:
                link.close()
            raise
        return links

    def _sentinel_master(self) -> Address:
        settings, pool = self._config.redis, self._config.pool
        sentinel = Sentinel(
            [(a.host, a.port) for a in settings.sentinels],
            sentinel_kwargs={
                "socket_timeout": pool.socket_timeout,
                "socket_connect_timeout": pool.connect_timeout,
            },
        )
        try:
            host, port = sentinel.discover_master(settings.sentinel_master)
        finally:
            for client in sentinel.sentinels:
                client.close()
        return Address(str(host), int(port))

    def _discover_masters(self) -> list[Address]:
        """Cluster's masters, asked of the known masters first, then the startup nodes."""
        settings = self._config.redis
        seeds = [*self._masters]
        for node in settings.cluster_nodes:
            seeds.append(Address(node.host, node.port))
        if not settings.cluster_nodes:
            seeds.append(Address(settings.host, settings.port))
        failure: Exception | None = None
        for seed in dict.fromkeys(seeds):
            conn = redis.Connection(host=seed.host, port=seed.port, **self._kwargs)
            try:
                conn.connect()
                conn.send_command("CLUSTER", "NODES")
                masters = cluster_masters(bytes(conn.read_response()).decode())
            except redis.RedisError as exc:
                failure = exc
                continue
            finally:
                conn.disconnect()
            if masters:
                return masters
        raise redis.ConnectionError(f"no cluster node named its masters: {failure}")

    def _pump(self, links: list[Link]) -> None:
        """Read every link until the tracker stops; raise when a link fails."""
        next_beat = time.monotonic() + self._heartbeat
        sockets = [link.fileno() for link in links]
        while not self._stop.is_set():
            for link in links:
                while link.pending():
                    self._deliver(link)
            now = time.monotonic()
            if now >= next_beat:
                self._beat(links)
                next_beat = now + self._heartbeat
                continue
            wait = min(next_beat - now, 0.25)  # the stop flag is read this often
            if None in sockets:  # the in-process link has no socket: it blocks itself
                links[0].wait(wait)
            else:
                select.select([s for s in sockets if s is not None], [], [], wait)

    def _deliver(self, link: Link) -> None:
        reply = link.read()
        if reply is FLUSHED:
            self._listener.reset("redis flushed", tracking=True)
        elif reply:
            assert isinstance(reply, list)
            self._listener.changed(reply)

    def _beat(self, links: list[Link]) -> None:
        for link in links:
            link.heartbeat()
        if self._config.backend == "cluster" and self._fake is None:
            first = links[0]
            assert isinstance(first, RedisLink)
            now = cluster_masters(bytes(first.command("CLUSTER", "NODES")).decode())
            if now != self._masters:
                raise redis.ConnectionError(f"cluster masters changed: {', '.join(map(str, now))}")


def tracker_for(
    pool: RedisConnectionPool, prefixes: Sequence[str], listener: TrackingListener
) -> InvalidationTracker:
    """A tracker beside `pool`: the same Redis, or the same in-process fakeredis server."""
    fake = None
    if pool.backend_kind == "memory":
        client = pool.backend.client
        assert isinstance(client, redis.Redis)
        connections = client.connection_pool
        fake = (connections.connection_class, dict(connections.connection_kwargs))
    return InvalidationTracker(pool.config, prefixes, listener, fake_connection=fake)
