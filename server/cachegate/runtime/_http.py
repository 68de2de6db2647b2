"""The HTTP side port: /metrics (Prometheus text) and /health/redis (the pool's health JSON).

Built on what the standard library and prometheus_client already have:
prometheus_client's `make_wsgi_app` (content negotiation, OpenMetrics, gzip) on a
small bounded server of our own (`_httpserver.py`: three threads in all, idle and
slow connections cost no thread, a read timeout, a normal backlog), because this
port lives inside the gRPC worker and must never take its threads. No web framework.

    /metrics        the server's own CollectorRegistry
    /health/redis   pool.health_check() as JSON; 200 when healthy, 503 when not
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app

from cachegate.core import parse_address
from cachegate.runtime._httpserver import BoundedHttpServer

__all__ = ["HttpListenError", "HttpSidePort"]

log = logging.getLogger("cachegate.http")

_JSON = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


class HttpListenError(OSError):
    """The side port's address is taken or unusable."""


class HttpSidePort:
    """A started-on-demand HTTP server for one registry and one health function."""

    def __init__(
        self,
        listen: str,
        *,
        registry: CollectorRegistry,
        health: Callable[[], dict[str, Any]],
        max_connections: int = 64,
        read_timeout: float = 5.0,
    ) -> None:
        where = parse_address(listen, listen=True)
        self._metrics_app = make_wsgi_app(registry)
        self._scraping = threading.Lock()
        self._health = health
        try:
            self._server = BoundedHttpServer(
                where.host,
                where.port,
                self._app,
                max_connections=max_connections,
                read_timeout=read_timeout,
            )
        except OSError as exc:
            raise HttpListenError(
                f"cannot listen on {listen} (CACHEGATE_HTTP_LISTEN): {exc.strerror or exc}"
            ) from exc

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            # One scrape built at a time: a scrape flood takes at most one thread's share
            # of the GIL from the gRPC work (the other handler stays free for health).
            with self._scraping:
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
