"""Certificate reloads: a bad file keeps the old certificate, says why, and is counted.

Real certificates (tests/certs.py), a server built as `cachegate-server` builds it
(metrics registry, HTTP side port), real TLS handshakes on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cachegate.core import load_config
from cachegate.rpc import ServerStartError
from cachegate.runtime import Service, build_service
from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from certs import Authority, Pair

METRIC = "cachegate_tls_reloads_total"


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.stop(grace=0)


def rotate(path: Path, data: bytes) -> None:
    """Replace a file as rotation tools do: write a new file, rename it over the old one."""
    staging = path.with_name(path.name + ".new")
    staging.write_bytes(data)
    os.replace(staging, path)


def presented(port: int) -> bytes:
    """The certificate (DER) a fresh TLS connection to `port` is shown."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we compare the bytes ourselves
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(pair: Pair) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pair.cert_pem.decode())


def get_code(port: int, root: bytes) -> grpc.StatusCode:
    """A unary Get over a fresh TLS channel trusting only `root`."""
    channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root))
    try:
        cache_pb2_grpc.CacheServiceStub(channel).Get(pb.GetRequest(key="k"), timeout=5)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    finally:
        channel.close()
    return grpc.StatusCode.OK


def reloads(service: Service) -> dict[str, float]:
    registry = service.metrics.registry
    return {
        result: registry.get_sample_value(METRIC, {"result": result, "worker": "0"}) or 0.0
        for result in ("applied", "rejected")
    }


def tls_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    records = [r for r in caplog.records if r.name == "cachegate.tls"]
    caplog.clear()
    return records


def test_bad_certificate_reloads_keep_the_old_one_and_say_why(
    services: list[Service],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cachegate.tls")
    main, renewed_by = Authority(tmp_path / "main", "main"), Authority(tmp_path / "next", "next")
    first = main.issue("first", server=True)
    stranger = renewed_by.issue("stranger", server=True)  # its key is never installed
    third = renewed_by.issue("third", server=True)
    live = Pair(tmp_path / "live.crt", tmp_path / "live.key")
    rotate(live.cert, first.cert_pem)
    rotate(live.key, first.key_pem)
    service = build_service(
        load_config(
            {
                "CACHEGATE_LISTEN": "127.0.0.1:0",
                "CACHEGATE_HTTP_LISTEN": "127.0.0.1:0",
                "CACHEGATE_TLS_CERT": str(live.cert),
                "CACHEGATE_TLS_KEY": str(live.key),
            }
        )
    )
    services.append(service)
    service.start()
    assert service.server.health.wait_ready(10)
    port = service.port
    assert presented(port) == der(first)
    assert reloads(service) == {"applied": 0, "rejected": 0}
    tls_log(caplog)

    # 1. A truncated certificate: rejected, the old one stays.
    rotate(live.cert, first.cert_pem[: len(first.cert_pem) // 2])
    assert presented(port) == der(first)
    assert get_code(port, main.ca_pem) is grpc.StatusCode.OK
    truncated = tls_log(caplog)
    print("truncated:", [(r.levelname, r.getMessage(), vars(r).get("why")) for r in truncated])
    assert [(r.levelname, r.getMessage()) for r in truncated] == [
        ("WARNING", "certificate reload rejected; keeping the old certificate")
    ]
    assert vars(truncated[0])["file"] == str(live.cert)
    assert "not a complete PEM certificate chain" in vars(truncated[0])["why"]
    assert reloads(service) == {"applied": 0, "rejected": 1}

    # 2. A certificate whose key is not the one in the key file: rejected.
    rotate(live.cert, stranger.cert_pem)
    assert presented(port) == der(first)
    assert get_code(port, main.ca_pem) is grpc.StatusCode.OK
    mismatched = tls_log(caplog)
    print("mismatched:", [(r.levelname, r.getMessage(), vars(r).get("why")) for r in mismatched])
    assert [(r.levelname, r.getMessage()) for r in mismatched] == [
        ("WARNING", "certificate reload rejected; keeping the old certificate")
    ]
    assert vars(mismatched[0])["file"] == str(live.key)
    assert (
        vars(mismatched[0])["why"] == f"the key does not belong to the certificate in {live.cert}"
    )
    assert reloads(service) == {"applied": 0, "rejected": 2}

    # Judged once per change: more handshakes re-read nothing and log nothing.
    assert presented(port) == der(first)
    assert tls_log(caplog) == []
    assert reloads(service)["rejected"] == 2

    # 3. A good new pair: applied, and only now "certificate reloaded".
    rotate(live.key, third.key_pem)
    rotate(live.cert, third.cert_pem)
    assert presented(port) == der(third)
    assert get_code(port, renewed_by.ca_pem) is grpc.StatusCode.OK
    assert get_code(port, main.ca_pem) is grpc.StatusCode.UNAVAILABLE
    applied = tls_log(caplog)
    assert [(r.levelname, r.getMessage()) for r in applied] == [("INFO", "certificate reloaded")]
    assert reloads(service) == {"applied": 1, "rejected": 2}

    # The same bytes written again (a re-synced secret) are no reload at all.
    rotate(live.cert, third.cert_pem)
    assert presented(port) == der(third)
    assert tls_log(caplog) == []
    assert reloads(service) == {"applied": 1, "rejected": 2}

    # The side port serves the same counter, and no log line quotes a key.
    assert service.http is not None
    url = f"http://127.0.0.1:{service.http.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    assert f'{METRIC}{{result="rejected",worker="0"}} 2.0' in text
    assert f'{METRIC}{{result="applied",worker="0"}} 1.0' in text
    logged = "".join(f"{r.getMessage()} {vars(r)}" for r in truncated + mismatched + applied)
    for pair in (first, stranger, third):
        body = pair.key_pem.decode().splitlines()[1]
        assert body not in logged


def _encrypted(pair: Pair, folder: Path) -> Path:
    key = load_pem_private_key(pair.key_pem, None)
    path = folder / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"not-for-grpc"),
        )
    )
    return path


def test_unusable_tls_files_stop_startup_naming_the_file(tmp_path: Path) -> None:
    authority = Authority(tmp_path / "main", "main")
    one, two = authority.issue("one", server=True), authority.issue("two", server=True)
    truncated_ca = tmp_path / "truncated-ca.pem"
    truncated_ca.write_bytes(authority.ca_pem[:100])
    cases = [
        ({"CACHEGATE_TLS_KEY": str(two.key)}, f"{two.key}: the key does not belong"),
        ({"CACHEGATE_TLS_KEY": str(_encrypted(one, tmp_path))}, "the key is encrypted"),
        (
            {"CACHEGATE_TLS_CLIENT_CA": str(truncated_ca)},
            f"{truncated_ca}: not a complete PEM CA bundle",
        ),
    ]
    for env, message in cases:
        config = load_config(
            {
                "CACHEGATE_LISTEN": "127.0.0.1:0",
                "CACHEGATE_TLS_CERT": str(one.cert),
                "CACHEGATE_TLS_KEY": str(one.key),
                **env,
            }
        )
        with pytest.raises(ServerStartError) as caught:
            build_service(config)
        assert message in str(caught.value)
        assert one.key_pem.decode().splitlines()[1] not in str(caught.value)
