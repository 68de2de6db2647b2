"""Server TLS and mTLS credentials that follow certificate files without a restart.

grpc asks `fetch` before each new handshake; it returns a new configuration only
when a file changed, so renewed certificates (cert-manager, Let's Encrypt)
apply to new connections while established ones continue.

grpc cannot tell us whether it could use what `fetch` hands it: a truncated
certificate, or a key that belongs to another certificate, is dropped inside
grpc while the old certificate stays in use. So every new set of files is first
loaded by the standard library's TLS (OpenSSL: every PEM block parses, the key
matches the certificate, the client CA holds certificates), from the very bytes
grpc will get. Files that pass are handed over ("certificate reloaded"); files
that fail keep the old certificate, are logged as a warning naming the file and
why, and are reported to the listener (the server counts both outcomes in
`cachegate_tls_reloads_total`). Each change of the files is judged once: a bad
file is not re-read, nor re-logged, at every handshake; files rewritten with the
bytes already in use are no reload at all.

The key is a secret: it is checked through a memory file (memfd) where the
platform has one, and no message ever quotes a file's content.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

from cachegate.core import SecuritySettings

__all__ = [
    "ReloadListener",
    "ReloadResult",
    "TlsFileError",
    "TlsFiles",
    "read_tls_files",
    "server_credentials",
]

log = logging.getLogger("cachegate.tls")

ReloadResult = Literal["applied", "rejected"]
# Told the outcome of each judged change of the files (e.g. a metrics counter).
ReloadListener = Callable[[ReloadResult], None]

# OpenSSL's messages end with the C source line that raised them: noise for an operator.
_SOURCE_LINE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


class TlsFileError(ValueError):
    """A certificate, key or client CA file that cannot serve; names the file, never its content."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The bytes of one checked set of files, exactly as grpc gets them."""

    cert: bytes
    key: bytes
    client_ca: bytes | None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.cert)], root_certificates=self.client_ca
        )


class _EncryptedKeyError(Exception):
    """OpenSSL asked for a password: the key is encrypted (grpc cannot use it)."""


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for a password.
    raise _EncryptedKeyError


def _reason(exc: Exception) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return _SOURCE_LINE.sub("", text)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(path, exc.strerror or str(exc)) from None


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path that reads as `data`; in memory where the platform allows (the key is secret)."""
    if sys.platform == "linux" and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("cachegate-tls", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as file:
                file.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="cachegate-tls-") as folder:  # mode 0700
        path = Path(folder) / "pem"
        path.touch(mode=0o600)
        path.write_bytes(data)
        yield str(path)


def _check_certificates(path: str, data: bytes, what: str) -> None:
    """Every PEM block of `data` parses and at least one certificate is there."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with _memory_file(data) as name:
        try:
            context.load_verify_locations(cafile=name)
        except (ssl.SSLError, ValueError) as exc:
            raise TlsFileError(path, f"not a complete PEM {what} ({_reason(exc)})") from None
    if context.cert_store_stats()["x509"] == 0:
        raise TlsFileError(path, f"not a complete PEM {what} (no certificate in it)")


def _check_pair(cert_path: str, cert: bytes, key_path: str, key: bytes) -> None:
    """The key parses, is not encrypted, and belongs to the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with _memory_file(cert) as cert_name, _memory_file(key) as key_name:
        try:
            context.load_cert_chain(cert_name, key_name, password=_no_password)
        except _EncryptedKeyError:
            why = "the key is encrypted; grpc needs an unencrypted key"
            raise TlsFileError(key_path, why) from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                why = f"the key does not belong to the certificate in {cert_path}"
            else:
                why = f"not a readable PEM private key ({_reason(exc)})"
            raise TlsFileError(key_path, why) from None


def read_tls_files(security: SecuritySettings) -> TlsFiles:
    """Read and check the TLS files; TlsFileError names the first one that cannot serve."""
    if security.tls_cert is None or security.tls_key is None:
        raise ValueError("TLS needs both CACHEGATE_TLS_CERT and CACHEGATE_TLS_KEY")
    cert, key = _read(security.tls_cert), _read(security.tls_key)
    client_ca = _read(security.tls_client_ca) if security.tls_client_ca else None
    _check_certificates(security.tls_cert, cert, "certificate chain")
    _check_pair(security.tls_cert, cert, security.tls_key, key)
    if security.tls_client_ca and client_ca is not None:
        _check_certificates(security.tls_client_ca, client_ca, "CA bundle")
    return TlsFiles(cert, key, client_ca)


# What identifies one version of a file: a rename (new inode), a write (mtime,
# size) or a chmod (ctime) makes a new one; None while the file is missing.
_Stamp = tuple[int, int, int, int] | None


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def server_credentials(
    security: SecuritySettings, on_reload: ReloadListener | None = None
) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`; raises TlsFileError naming a file that cannot serve.

    `on_reload` hears "applied" or "rejected" once per judged change of the files.
    """
    paths = [p for p in (security.tls_cert, security.tls_key, security.tls_client_ca) if p]
    lock = threading.Lock()

    def stamp() -> tuple[_Stamp, ...]:
        return tuple(_stamp(p) for p in paths)

    judged = [stamp()]  # before reading: a change made while we read is seen next time
    in_use = [read_tls_files(security)]

    def report(result: ReloadResult) -> None:
        if on_reload is None:
            return
        try:
            on_reload(result)
        except Exception:  # a listener's bug must not break handshakes
            log.exception("certificate reload listener failed")

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        with lock:
            now = stamp()
            if now == judged[0]:
                return None
            judged[0] = now  # judged once: a bad file is not re-read at every handshake
            try:
                files = read_tls_files(security)
            except TlsFileError as exc:  # mid-rotation or a bad file: keep the old one
                log.warning(
                    "certificate reload rejected; keeping the old certificate",
                    extra={"file": exc.path, "why": exc.why},
                )
                report("rejected")
                return None
            except Exception:
                log.exception("certificate reload failed; keeping the old certificate")
                report("rejected")
                return None
            if files == in_use[0]:  # rewritten with the same bytes: nothing to apply
                return None
            in_use[0] = files
            log.info(
                "certificate reloaded",
                extra={"cert": security.tls_cert, "key": security.tls_key},
            )
            report("applied")
            return files.configuration()

    return grpc.dynamic_ssl_server_credentials(
        in_use[0].configuration(),
        fetch,  # type: ignore[arg-type]  # grpc-stubs omit that None means "unchanged"
        require_client_authentication=security.tls_client_ca is not None,
    )
