"""The HTTP side port: /metrics (Prometheus text) and /health/redis (the pool's health JSON).

Built on what the standard library and prometheus_client already have: wsgiref's
server (threaded, daemon threads) and prometheus_client's `make_wsgi_app`, which
handles content negotiation (OpenMetrics) and gzip. No web framework.

    /metrics        the server's own CollectorRegistry
    /health/redis   pool.health_check() as JSON; 200 when healthy, 503 when not
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app

__all__ = ["HttpListenError", "HttpSidePort", "split_listen"]

log = logging.getLogger("cachegate.http")

_JSON = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


class HttpListenError(OSError):
    """The side port's address is taken or unusable."""


def split_listen(listen: str) -> tuple[str, int]:
    """ "host:port" or "[v6]:port" -> (host, port)."""
    host, _, port = listen.strip().rpartition(":")
    return host.strip("[]"), int(port)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape never holds up shutdown


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """wsgiref prints every request to stderr; our logs are JSON lines, so: debug logs."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", extra={"client": self.client_address[0], "line": format % args})


class HttpSidePort:
    """A started-on-demand HTTP server for one registry and one health function."""

    def __init__(
        self,
        listen: str,
        *,
        registry: CollectorRegistry,
        health: Callable[[], dict[str, Any]],
    ) -> None:
        host, port = split_listen(listen)
        self._metrics_app = make_wsgi_app(registry)
        self._health = health
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = make_server(
                host, port, self._app, server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise HttpListenError(
                f"cannot listen on {listen} (CACHEGATE_HTTP_LISTEN): {exc.strerror or exc}"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="cachegate-http",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics_app(environ, start_response)
            return body
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        if path == "/health/redis":
            report = self._health()  # never raises; it hides the password itself
            data = json.dumps(report, default=str).encode()
            status = "200 OK" if report.get("healthy") else "503 Service Unavailable"
            start_response(status, [*_JSON, ("Content-Length", str(len(data)))])
            return [data]
        if path == "/":
            data = b"cachegate: /metrics /health/redis\n"
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [data]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /health/redis\n"]
