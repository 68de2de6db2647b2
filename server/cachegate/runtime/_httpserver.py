"""A small HTTP/1.x server for the side port that no client can make big.

The side port runs inside the gRPC worker process, so whatever it holds it takes
from the gRPC work: threads, file descriptors, the GIL. This server (standard
library only) bounds all three:

- ONE selector thread accepts connections and reads request heads without
  blocking: an idle or slow connection costs a file descriptor and a buffer,
  never a thread;
- a connection must deliver its whole request head within `read_timeout` seconds
  counted from its accept (in all, not per byte, so a slowloris dripping one byte
  at a time cannot stretch it) and within `MAX_HEAD_BYTES`; otherwise it gets 408
  or 431 and is closed;
- at most `max_connections` connections are held at once; one more closes the one
  that has waited longest for its request head (an idle attacker's connections are
  cycled out, a scraper that sends its request at once gets in, even when its head
  arrived but was not read yet), or, when every held connection has a request being
  answered, gets 503 itself;
- `HANDLER_THREADS` fixed threads run the WSGI app (one may wait on Redis for
  /health/redis while the other serves /metrics) and write the reply, blocking, with
  `read_timeout` for the whole write;
- one request per connection (`Connection: close`): nothing to keep alive;
- the listen backlog is `socket.SOMAXCONN` (the kernel caps it at
  net.core.somaxconn), so a burst of connects never waits for a SYN retry.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote
from wsgiref.types import StartResponse, WSGIEnvironment

__all__ = ["HANDLER_THREADS", "MAX_HEAD_BYTES", "BoundedHttpServer"]

log = logging.getLogger("cachegate.http")

HANDLER_THREADS = 2
"""Threads answering requests (a fixed number: the side port's whole thread budget is 3)."""
MAX_HEAD_BYTES = 16 * 1024
"""Largest request line plus headers; a bigger head gets 431."""
_ACCEPTS_PER_TURN = 64  # accept in bursts, but let reads and timeouts run in between
_RECV = 4096

WsgiApp = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]


def _status_reply(status: str, text: str) -> bytes:
    body = f"{text}\n".encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


_TIMEOUT = _status_reply("408 Request Timeout", "the request took too long to arrive")
_TOO_BIG = _status_reply("431 Request Header Fields Too Large", "request head too large")
_BUSY = _status_reply("503 Service Unavailable", "side port busy; try again")
_BAD = _status_reply("400 Bad Request", "bad request")
_FAILED = _status_reply("500 Internal Server Error", "internal error; see the server log")


@dataclass(slots=True, eq=False)
class _Connection:
    sock: socket.socket
    peer: str
    deadline: float
    head: bytearray = field(default_factory=bytearray)


class BoundedHttpServer:
    """Serves a WSGI app on one address with bounded threads, connections and time."""

    def __init__(
        self,
        host: str,
        port: int,
        app: WsgiApp,
        *,
        max_connections: int,
        read_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server(
            (host, port), family=family, backlog=socket.SOMAXCONN
        )  # SO_REUSEADDR on POSIX, never SO_REUSEPORT: a taken port fails here
        self._listener.setblocking(False)
        self._app = app
        self._max_connections = max_connections
        self._read_timeout = read_timeout
        self._clock = clock
        self._host = host
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        # Connections still reading their head, oldest first (insertion order = deadline
        # order, since every deadline is accept time + the same timeout).
        self._reading: dict[socket.socket, _Connection] = {}
        self._answering = 0  # connections queued for or held by a handler thread
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[_Connection, bytes] | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve, name="cachegate-http", daemon=True),
            *(
                threading.Thread(target=self._handle_loop, name=f"cachegate-http-{i}", daemon=True)
                for i in range(HANDLER_THREADS)
            ),
        ]

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        for _ in range(HANDLER_THREADS):
            self._requests.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(self._read_timeout + 1)
        for conn in list(self._reading.values()):
            self._close(conn)
        self._reading.clear()
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    # --- the selector thread -------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                self._turn()
            except Exception:  # never let one bad connection end the side port
                log.exception("side port loop failed; going on")

    def _turn(self) -> None:
        """One select() and what it found, then the connections past their deadline."""
        timeout = None
        if self._reading:
            first = next(iter(self._reading.values()))
            timeout = max(0.0, first.deadline - self._clock())
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(64)
            else:
                conn = self._reading.get(key.fileobj)  # type: ignore[call-overload]
                if conn is not None:
                    self._read(conn)
        self._expire()

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: keep serving the rest
                log.warning("side port cannot accept", extra={"reason": str(exc)})
                return
            sock.setblocking(False)
            with self._lock:
                held = len(self._reading) + self._answering
            if held >= self._max_connections and not self._make_room():
                self._reply_and_close(sock, _BUSY)  # every held connection is being answered
                continue
            conn = _Connection(sock, str(address[0]), self._clock() + self._read_timeout)
            self._reading[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ)

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for its request head; False
        when none is waiting (every held connection has a request being answered).

        Its head may have arrived unread (a scraper that connected just before a burst
        of connects, accepted in the same turn): it is read first, and a connection
        whose head is complete is answered, not closed; the next longest waiting is.
        """
        while self._reading:
            oldest = next(iter(self._reading.values()))
            self._read(oldest)
            if oldest.sock in self._reading:  # nothing, or part of a head: it goes
                self._close(oldest)
                return True
            if oldest.sock.fileno() < 0:  # it had hung up: closed, which made room
                return True
        return False

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.head += data
        end = conn.head.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.head) > MAX_HEAD_BYTES:
                self._close(conn, _TOO_BIG)
            return
        # A complete head: hand it over (anything after it, a body, is not read).
        self._selector.unregister(conn.sock)
        del self._reading[conn.sock]
        with self._lock:
            self._answering += 1
        self._requests.put((conn, bytes(conn.head[:end])))

    def _expire(self) -> None:
        now = self._clock()
        while self._reading:
            conn = next(iter(self._reading.values()))
            if conn.deadline > now:
                return
            self._close(conn, _TIMEOUT)

    def _close(self, conn: _Connection, reply: bytes | None = None) -> None:
        if self._reading.pop(conn.sock, None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        if reply is None:
            conn.sock.close()
        else:
            self._reply_and_close(conn.sock, reply)

    @staticmethod
    def _reply_and_close(sock: socket.socket, reply: bytes) -> None:
        # Non-blocking and best effort: a short error reply fits any socket buffer.
        with contextlib.suppress(OSError):
            sock.send(reply)
        sock.close()

    # --- the handler threads -------------------------------------------------------

    def _handle_loop(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            conn, head = item
            try:
                if not self._stopping.is_set():
                    self._handle(conn, head)
            except Exception:  # a handler thread never dies of one request
                log.exception("side port request failed", extra={"client": conn.peer})
            finally:
                conn.sock.close()
                with self._lock:
                    self._answering -= 1

    def _handle(self, conn: _Connection, head: bytes) -> None:
        environ = self._environ(conn, head)
        try:
            reply = _BAD if environ is None else self._run_app(environ)
        except Exception:
            log.exception("side port request failed", extra={"client": conn.peer})
            reply = _FAILED
        conn.sock.settimeout(self._read_timeout)  # blocking, bounded in all (Python >= 3.5)
        with contextlib.suppress(OSError):
            conn.sock.sendall(reply)

    def _environ(self, conn: _Connection, head: bytes) -> WSGIEnvironment | None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return None
        method, target, version = parts
        path, _, query = target.partition("?")
        environ: WSGIEnvironment = {
            "REQUEST_METHOD": method,
            "PATH_INFO": unquote(path, encoding="latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": self._host,
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": conn.peer,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                return None
            key = name.strip().upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value.strip()
            else:
                environ[f"HTTP_{key}"] = value.strip()
        return environ

    def _run_app(self, environ: WSGIEnvironment) -> bytes:
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: object = None
        ) -> Callable[[bytes], object]:
            started[:] = [(status, headers)]
            return lambda data: None

        body = b"".join(self._app(environ, start_response))
        status, headers = started[0]
        names = {name.lower() for name, _ in headers}
        lines = [f"HTTP/1.1 {status}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() != "connection"]
        if "content-length" not in names:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        payload = b"" if environ["REQUEST_METHOD"] == "HEAD" else body
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
