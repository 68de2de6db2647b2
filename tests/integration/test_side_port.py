"""The HTTP side port's bounds, on real sockets: head size, read timeout, connection cap."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest
from prometheus_client import CollectorRegistry, Gauge

from cachegate.runtime._http import HttpSidePort
from cachegate.runtime._httpserver import MAX_HEAD_BYTES, BoundedHttpServer


@pytest.fixture
def side_port() -> Iterator[HttpSidePort]:
    registry = CollectorRegistry()
    Gauge("drill_up", "a gauge", registry=registry).set(1)
    port = HttpSidePort(
        "127.0.0.1:0",
        registry=registry,
        health=lambda: {"healthy": True},
        max_connections=3,
        read_timeout=0.5,
    )
    port.start()
    yield port
    port.stop()


def _connect(port: HttpSidePort) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port.port), timeout=5)
    sock.settimeout(5)
    return sock


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_scrape_gets_metrics_and_the_connection_closes(side_port: HttpSidePort) -> None:
    with _connect(side_port) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = _reply(sock)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close" in reply
    assert b"drill_up 1.0" in reply


def test_a_head_that_never_ends_gets_408_after_the_read_timeout(side_port: HttpSidePort) -> None:
    with _connect(side_port) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line
        assert _reply(sock).startswith(b"HTTP/1.1 408 ")


def test_an_oversized_head_gets_431(side_port: HttpSidePort) -> None:
    with _connect(side_port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10))
        assert _reply(sock).startswith(b"HTTP/1.1 431 ")


def test_one_connection_over_the_cap_closes_the_longest_waiting(side_port: HttpSidePort) -> None:
    idle = [_connect(side_port) for _ in range(3)]  # the cap: 3, all waiting for a head
    try:
        with _connect(side_port) as sock:
            sock.sendall(b"GET /health/redis HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _reply(sock).startswith(b"HTTP/1.1 200 OK")
        assert idle[0].recv(1) == b""  # closed without a reply, before its read timeout
    finally:
        for sock in idle:
            sock.close()


def test_a_head_that_arrived_unread_is_answered_not_closed_for_room() -> None:
    # The race of drill 18's first scrape, made deterministic: a scraper connects and
    # sends its request, then more connections than the cap arrive, and the server's
    # first look (one selector turn, driven here by hand) accepts them all at once.
    # The scraper is the longest waiting, but its head is there: it must be answered.
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"metrics\n"]

    server = BoundedHttpServer("127.0.0.1", 0, app, max_connections=2, read_timeout=5)
    scraper = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
    try:
        scraper.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # the request is in the server's socket buffer
        server._turn()  # accepts all three: one over the cap
        server.start()  # the handler threads answer what that turn queued
        assert _reply(scraper).startswith(b"HTTP/1.1 200 OK")
        assert idle[0].recv(1) == b""  # the next longest waiting made the room
    finally:
        server.stop()
        for sock in (scraper, *idle):
            sock.close()
