"""The contract of cachegate.pool._redispy: what the pool relies on in redis-py, checked.

Each test names the item of _redispy.py's docstring it holds to. They run the
installed redis-py (and hiredis) against a real redis-server, so an upgrade that
renames an attribute, changes what it means, changes a reply callback or an error's
class or text fails here, in one place, before it fails a call in production.
"""

from __future__ import annotations

import inspect
import os
import select
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import NoPermissionError, NoScriptError, OutOfMemoryError

from cachegate.pool import _redispy
from cachegate.pool._redispy import (
    PING_FAILED,
    ResponseCallbacks,
    check_health,
    fork_check,
    idle_since,
    is_lasting_refusal,
    is_wrong_type,
    new_connection_refused,
    open_connections,
    pack_command,
    read,
    ready_to_send,
    request,
    request_packed,
    reusable,
    send,
    send_many,
    stamp_idle,
    take_idle,
    why_refused,
)
from redisprocs import RedisProcess, wait_until


def _pool(url: str, **kwargs: Any) -> redis.ConnectionPool:
    # As cachegate opens them: RESP2, no CLIENT SETINFO, no retries of redis-py's own.
    settings: dict[str, Any] = {"protocol": 2, "driver_info": None, "socket_timeout": 2.0}
    return redis.ConnectionPool.from_url(url, **(settings | kwargs))


@pytest.fixture
def pool(shared_redis_url: str) -> Iterator[redis.ConnectionPool]:
    p = _pool(shared_redis_url)
    try:
        yield p
    finally:
        p.disconnect()


def _key() -> str:
    return f"{uuid.uuid4().hex}:contract"


def _pings(server: RedisProcess) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


# --- 1: send and read on a connection, with a timeout per read -----------------------------


def test_send_and_read_give_raw_replies_and_raise_error_replies(
    pool: redis.ConnectionPool,
) -> None:
    key = _key()
    conn = pool.get_connection()
    try:
        assert request(conn, ("SET", key, "v"), 1.0) == b"OK"  # raw: no callback applied
        send_many(conn, [("GET", key), ("LPUSH", key, "x"), ("STRLEN", key)])
        assert read(conn, 1.0) == b"v"
        with pytest.raises(redis.ResponseError):  # an error reply is raised, in its place
            read(conn, 1.0)
        assert read(conn, 1.0) == 1  # and the next reply is still this command's
        send(conn, "DEL", key)
        assert read(conn, 1.0) == 1
        assert request_packed(conn, pack_command(("MGET", key, key)), 1.0) == [None, None]
    finally:
        pool.release(conn)


def test_a_read_waits_its_own_timeout_then_drops_the_connection(
    pool: redis.ConnectionPool,
) -> None:
    """read_response(timeout=) bounds one read below the socket timeout, and a read that
    times out disconnects, so its late reply can never be read by the next caller."""
    conn = pool.get_connection()
    try:
        send(conn, "BLPOP", _key(), 2)  # blocks 2 s in Redis; the socket timeout is 2 s too
        start = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            read(conn, 0.2)
        assert time.monotonic() - start < 1.5
        assert not conn.is_connected
    finally:
        pool.release(conn)


class _CountingSocket:
    """A connection's real socket, counting the `settimeout` calls made on it."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.settimeouts = 0

    def settimeout(self, value: float | None) -> None:
        self.settimeouts += 1
        self._sock.settimeout(value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_a_read_at_the_sockets_own_timeout_leaves_the_socket_alone(
    pool: redis.ConnectionPool,
) -> None:
    """Each `settimeout` is a system call that lets go of the GIL: a call without a
    deadline of its own (the read timeout is the socket timeout) makes none."""
    conn = pool.get_connection()
    try:
        own = conn.socket_timeout
        assert isinstance(own, float)
        counting = _CountingSocket(conn._sock)
        held: Any = conn  # the socket is swapped where redis-py reads it
        held._sock = held._parser._sock = counting
        assert request(conn, ("PING",), own) == b"PONG"
        assert counting.settimeouts == 0
        assert request(conn, ("PING",), 0.5) == b"PONG"  # a shorter deadline: set, restored
        assert counting.settimeouts == 2
        assert counting.gettimeout() == own
    finally:
        pool.release(conn)


# --- 2: the health PING's schedule and text --------------------------------------------------


def test_check_health_false_skips_the_ping_and_reads_move_its_schedule(
    redis_server: RedisProcess,
) -> None:
    pool = _pool(redis_server.url, health_check_interval=30)
    try:
        conn = pool.get_connection()
        redis_server.client().config_resetstat()
        conn.next_health_check = 0  # due now (a monotonic time long past)
        send(conn, "GET", _key())  # check_health=False: no PING of redis-py's own
        read(conn, 1.0)
        assert _pings(redis_server) == 0
        # A read moves the next check one interval on: nothing is due now.
        assert conn.next_health_check > time.monotonic() + 25
        check_health(conn, 1.0)
        assert _pings(redis_server) == 0
        conn.next_health_check = 0
        check_health(conn, 1.0)  # due: one PING, within our timeout
        assert _pings(redis_server) == 1
        conn.next_health_check = 0
        request(conn, ("GET", _key()), 1.0)  # request() PINGs first when due
        assert _pings(redis_server) == 2
        pool.release(conn)
    finally:
        pool.disconnect()
    assert conn.health_check_interval == 30
    # The text we raise for a bad PONG is redis-py's own.
    assert PING_FAILED in inspect.getsource(redis.connection)


# --- 3: the checkout test, and what release looks at ----------------------------------------


def test_ready_to_send_and_reusable_follow_the_connection(pool: redis.ConnectionPool) -> None:
    conn = pool.get_connection()
    try:
        assert conn.pid == os.getpid()
        assert ready_to_send(conn)
        assert reusable(pool, conn)
        send(conn, "PING")  # a reply waits unread: not ready for another command
        wait_until(lambda: not ready_to_send(conn), timeout=5, what="the PONG to arrive")
        read(conn, 1.0)
        assert ready_to_send(conn)
        conn.mark_for_reconnect()
        assert not reusable(pool, conn)
        conn.reset_should_reconnect()
        conn.disconnect()
        assert not reusable(pool, conn)
    finally:
        pool.release(conn)


# --- 4: the fork check resets the pool through reset() ----------------------------------------


def test_the_fork_check_calls_reset_as_init_does(shared_redis_url: str) -> None:
    resets: list[int] = []

    class Counting(redis.ConnectionPool):
        def reset(self) -> None:
            super().reset()
            resets.append(self.pid)

    pool = Counting.from_url(shared_redis_url, protocol=2)
    assert resets == [os.getpid()]  # __init__ calls reset()
    fork_check(pool)
    assert resets == [os.getpid()]  # same process: nothing to do
    pool.pid = -1  # as a child sees its parent's pool after a fork
    fork_check(pool)
    assert resets == [os.getpid(), os.getpid()]
    assert _redispy.fork_check is redis.ConnectionPool._checkpid


# --- 5, 6: the idle list, the open count and their report -----------------------------------


def test_idle_connections_are_a_lifo_under_the_lock_and_counted(
    pool: redis.ConnectionPool,
) -> None:
    first, second = pool.get_connection(), pool.get_connection()
    assert open_connections(pool) == (0, 2)
    [(_, idle_attributes), (_, used_attributes)] = pool.get_connection_count()
    assert isinstance(idle_attributes, dict)
    assert isinstance(used_attributes, dict)
    pool.release(first)
    pool.release(second)
    assert open_connections(pool) == (2, 0)
    assert pool._available_connections == [first, second]
    assert pool._created_connections == 2
    again = pool.get_connection()
    assert again is second  # the most recently released comes out first
    pool.release(again)
    assert idle_since(first, -1.0) == -1.0
    stamp_idle(first, 5.0)  # a connection object takes our stamp
    assert idle_since(first, -1.0) == 5.0
    taken = take_idle(pool, lambda conn: idle_since(conn, 99.0) < 10.0)
    assert taken == [first]
    first.disconnect()
    assert pool._created_connections == 1
    assert open_connections(pool) == (1, 0)
    assert hasattr(pool._lock, "acquire")


# --- 7, 9: a refused new connection, and asking Redis why -------------------------------------


class _SaidSomethingFirst(redis.Connection):
    """A connection that, once connected, waits (up to a second) until Redis has written
    on it. Redis refuses a connection by writing its error just after the TCP handshake,
    and redis-py checks for such data right after connecting (twice: it reconnects
    once), so on a busy host the error can arrive after both checks, in every try."""

    def connect(self) -> None:
        super().connect()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        if self._sock is not None:
            select.select([self._sock], [], [], 1.0)


def test_a_refused_connection_is_recognised_and_redis_names_the_reason(
    redis_server: RedisProcess,
) -> None:
    admin = redis_server.client()
    admin.ping()
    admin.config_set("maxclients", 1)  # the admin connection only
    pool = _pool(redis_server.url, connection_class=_SaidSomethingFirst)
    try:
        refusals: list[redis.ConnectionError] = []
        for _ in range(20):  # Redis's error may arrive after redis-py's check: try again
            try:
                conn = pool.get_connection()
            except redis.ConnectionError as exc:
                refusals.append(exc)
                break
            pool.release(conn)
            pool.disconnect()
            time.sleep(0.05)
        assert refusals, "redis-py never reported the refused connection as such"
        assert new_connection_refused(refusals[0]), str(refusals[0])
        reason = why_refused(pool)
        assert reason is not None
        assert "max number of clients" in reason
    finally:
        pool.disconnect()
        admin.config_set("maxclients", 10000)
    assert not new_connection_refused(redis.ConnectionError("Connection refused"))


# --- 8: reply callbacks, as execute_command applies them ---------------------------------------


def test_callbacks_turn_raw_replies_into_what_execute_command_returns(
    pool: redis.ConnectionPool,
) -> None:
    client = redis.Redis(connection_pool=pool)
    callbacks = ResponseCallbacks(client)
    key = _key()
    commands: list[tuple[Any, ...]] = [
        ("SET", key, "v"),
        ("SETEX", key, 60, "v"),
        ("GET", key),
        ("MGET", key, _key()),
        ("EXISTS", key),
        ("TTL", key),
        ("EXPIRE", key, 60),
        ("PING",),
        ("INFO",),
        ("CONFIG", "GET", "maxmemory"),
        ("DEL", _key()),  # a key that is not there: 0 both times
    ]
    conn = pool.get_connection()
    try:
        for command in commands:
            raw = request(conn, command, 1.0)
            if command[0] == "CONFIG":  # as redis-py's config_get() sends it: "CONFIG GET"
                expected = client.execute_command(f"{command[0]} {command[1]}", *command[2:])
            else:
                expected = client.execute_command(*command)
            parsed = callbacks.parse(command, raw)
            if command[0] == "INFO":  # figures move between the two calls; the shape does not
                assert isinstance(parsed, dict)
                assert parsed.keys() == expected.keys()
            elif command[0] == "TTL":
                assert isinstance(parsed, int)
                assert abs(parsed - expected) <= 1
            else:
                assert parsed == expected, command
    finally:
        pool.release(conn)


# --- 10: Redis's error texts, as redis-py raises them -------------------------------------------


def test_error_replies_arrive_as_the_classes_and_texts_we_match(
    redis_server: RedisProcess,
) -> None:
    admin = redis_server.client()
    key = _key()
    admin.lpush(key, "x")
    admin.acl_setuser("noscripts", enabled=True, passwords=["+pw"], keys="*", commands=["+get"])
    pool = _pool(redis_server.url)
    limited = _pool(redis_server.url, username="noscripts", password="pw")
    try:
        conn = pool.get_connection()
        try:
            with pytest.raises(redis.ResponseError) as wrong_type:
                request(conn, ("GET", key), 1.0)
            assert is_wrong_type(wrong_type.value)
            assert not is_lasting_refusal(wrong_type.value)
            with pytest.raises(redis.ResponseError) as unknown:
                request(conn, ("NOSUCHCOMMAND",), 1.0)
            assert is_lasting_refusal(unknown.value)
            assert not is_wrong_type(unknown.value)
            with pytest.raises(NoScriptError):
                request(conn, ("EVALSHA", "0" * 40, 0), 1.0)
            admin.config_set("maxmemory", 1)
            with pytest.raises(OutOfMemoryError) as oom:
                request(conn, ("SET", _key(), "v" * 1000), 1.0)
            assert not is_lasting_refusal(oom.value)  # a passing refusal
        finally:
            admin.config_set("maxmemory", 0)
            pool.release(conn)
        denied = limited.get_connection()
        try:
            with pytest.raises(NoPermissionError) as noperm:
                request(denied, ("EVALSHA", "0" * 40, 0), 1.0)
            assert str(noperm.value).startswith("NOPERM") or "permission" in str(noperm.value)
            assert is_lasting_refusal(noperm.value)
        finally:
            limited.release(denied)
    finally:
        pool.disconnect()
        limited.disconnect()


# --- 11: hiredis packs a command of any length ---------------------------------------------------


def test_hiredis_packs_a_command_as_redis_py_does(pool: redis.ConnectionPool) -> None:
    command = ("MGET", "a", b"b", "\u00e9", 7)
    conn = pool.get_connection()
    try:
        assert pack_command(command) == b"".join(conn.pack_command(*command))
    finally:
        pool.release(conn)
