"""Server TLS and mTLS credentials that follow certificate files without a restart.

grpc asks `fetch` before each new handshake; it returns a new configuration only
when a file changed, so renewed certificates (cert-manager, Let's Encrypt)
apply to new connections while established ones continue.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc

from cachegate.core import SecuritySettings

__all__ = ["server_credentials"]

log = logging.getLogger("cachegate.tls")


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(security: SecuritySettings) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`; raises OSError naming a file it cannot read."""
    if security.tls_cert is None or security.tls_key is None:
        raise ValueError("TLS needs both CACHEGATE_TLS_CERT and CACHEGATE_TLS_KEY")
    paths = [p for p in (security.tls_cert, security.tls_key, security.tls_client_ca) if p]
    lock = threading.Lock()

    def stamp() -> tuple[tuple[int, int], ...]:
        return tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths)

    def load() -> grpc.ServerCertificateConfiguration:
        key, cert = _read(security.tls_key or ""), _read(security.tls_cert or "")
        ca = _read(security.tls_client_ca) if security.tls_client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    current = [stamp()]
    initial = load()

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        with lock:
            try:
                now = stamp()
                if now == current[0]:
                    return None
                config = load()
            except OSError as exc:  # mid-rotation: keep serving the old certificate
                log.warning(
                    "certificate reload failed; keeping the old one", extra={"why": str(exc)}
                )
                return None
            current[0] = now
            log.info("certificate reloaded", extra={"cert": security.tls_cert})
            return config

    return grpc.dynamic_ssl_server_credentials(
        initial,
        fetch,  # type: ignore[arg-type]  # grpc-stubs omit that None means "unchanged"
        require_client_authentication=security.tls_client_ca is not None,
    )
