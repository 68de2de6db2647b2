"""gRPC server reflection under grpc.reflection.v1 and v1alpha, with the proto's comments.

grpcio-reflection serves only v1alpha, and from the descriptor pool, where the
generated _pb2 modules put their files without source info: `grpcurl describe`
then shows no documentation and a v1-only client (`buf curl --reflect-protocol
grpc-v1`) finds nothing. So cachegate answers reflection itself, from an index of
serialized files:

- cachegate's own files come from the FileDescriptorSet that scripts/gen_protos.py
  writes beside the generated code with `--include_source_info` (its --check keeps
  the set and the code in step, so the comments describe the types the server runs);
- the other served files (grpc.health.v1, grpc.reflection.v1alpha) from the pool;
- grpc.reflection.v1 is v1alpha under another package (the v1 .proto copied its
  messages field for field): its file is derived from the v1alpha one by renaming,
  and one servicer logic answers both, each in its own message classes.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from cachegate.rpc._decode import add_service

__all__ = [
    "DESCRIPTOR_SET",
    "REFLECTION_SERVICES",
    "DescriptorIndex",
    "ReflectionServicer",
    "enable_reflection",
    "reflection_descriptors",
]

# Written by scripts/gen_protos.py into the contract's package (client/cachegate/v1/).
DESCRIPTOR_SET = "cachegate.binpb"
_V1ALPHA = "grpc.reflection.v1alpha"
_V1 = "grpc.reflection.v1"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, derived from the v1alpha file: the same
    messages and service under the v1 package."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = _V1
    old, new = f".{_V1ALPHA}.", f".{_V1}."  # type references are fully qualified

    def renamed(type_name: str) -> str:
        return new + type_name.removeprefix(old) if type_name.startswith(old) else type_name

    def rename(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for field in message.field:
                if field.HasField("type_name"):  # set only where set: presence counts here
                    field.type_name = renamed(field.type_name)
            rename(message.nested_type)

    rename(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    return proto


def _v1_service() -> ServiceDescriptor:
    """The v1 ServerReflection service, from a private pool (the default one is left
    alone, so a grpcio-reflection that ships v1 one day cannot clash with it)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_v1_file())
    return pool.FindServiceByName(f"{_V1}.ServerReflection")


REFLECTION_SERVICES = (f"{_V1}.ServerReflection", f"{_V1ALPHA}.ServerReflection")


@functools.cache
def reflection_descriptors() -> tuple[ServiceDescriptor, ServiceDescriptor]:
    """The two reflection services served: v1 and v1alpha (REFLECTION_SERVICES' order)."""
    return _v1_service(), reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]


def _symbols(file: descriptor_pb2.FileDescriptorProto) -> Iterator[str]:
    """Every name the file declares: services and their methods, messages and their
    fields, enums and their values (which, as in C++, live beside their enum)."""
    prefix = f"{file.package}." if file.package else ""

    def enums(types: Iterable[descriptor_pb2.EnumDescriptorProto], scope: str) -> Iterator[str]:
        for enum in types:
            yield f"{scope}{enum.name}"
            yield from (f"{scope}{value.name}" for value in enum.value)

    def messages(types: Iterable[descriptor_pb2.DescriptorProto], scope: str) -> Iterator[str]:
        for message in types:
            name = f"{scope}{message.name}"
            yield name
            yield from (f"{name}.{field.name}" for field in message.field)
            yield from enums(message.enum_type, f"{name}.")
            yield from messages(message.nested_type, f"{name}.")

    for service in file.service:
        yield f"{prefix}{service.name}"
        yield from (f"{prefix}{service.name}.{method.name}" for method in service.method)
    yield from messages(file.message_type, prefix)
    yield from enums(file.enum_type, prefix)


@dataclass(frozen=True, slots=True)
class DescriptorIndex:
    """Serialized FileDescriptorProtos by file name, and the file of every symbol."""

    files: Mapping[str, bytes]
    dependencies: Mapping[str, tuple[str, ...]]
    symbols: Mapping[str, str]

    @classmethod
    def of(cls, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> DescriptorIndex:
        by_name = {file.name: file for file in files}
        return cls(
            files={name: file.SerializeToString() for name, file in by_name.items()},
            dependencies={name: tuple(file.dependency) for name, file in by_name.items()},
            symbols={symbol: name for name, file in by_name.items() for symbol in _symbols(file)},
        )

    @classmethod
    def load(cls) -> DescriptorIndex:
        """cachegate's files with their comments, plus the other files served."""
        data = importlib.resources.files("cachegate.v1").joinpath(DESCRIPTOR_SET).read_bytes()
        ours = list(descriptor_pb2.FileDescriptorSet.FromString(data).file)
        theirs = [_proto_of(health_pb2.DESCRIPTOR), _proto_of(reflection_pb2.DESCRIPTOR)]
        return cls.of([*ours, *theirs, _v1_file()])

    def with_dependencies(self, name: str) -> list[bytes]:
        """The file first, then every file it imports, transitively, each once."""
        order: list[str] = []
        pending = [name]
        while pending:
            current = pending.pop()
            if current in order or current not in self.files:
                continue
            order.append(current)
            pending.extend(self.dependencies[current])
        return [self.files[file] for file in order]


def _proto_of(file: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto


class ReflectionServicer:
    """ServerReflectionInfo over an index, for one version of the reflection service.

    v1 and v1alpha messages have the same field names and numbers: the logic is one,
    only the reply's class (the service's output type) differs.
    """

    def __init__(
        self, index: DescriptorIndex, services: Iterable[str], service: ServiceDescriptor
    ) -> None:
        self._index = index
        self._services = tuple(sorted(set(services)))
        output = service.methods_by_name["ServerReflectionInfo"].output_type
        self._reply_class: Any = message_factory.GetMessageClass(output)

    def ServerReflectionInfo(  # noqa: N802  # the RPC's name in reflection.proto
        self, requests: Iterable[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        for request in requests:
            yield self.answer(request)

    def answer(self, request: Any) -> Any:
        """The reply to one request (a ServerReflectionRequest of this version)."""
        reply = self._reply_class(valid_host=request.host, original_request=request)
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            listing = reply.list_services_response
            listing.SetInParent()  # an empty list is still an answer
            for name in self._services:
                listing.service.add(name=name)
        elif kind == "file_by_filename":
            self._files(reply, request.file_by_filename)
        elif kind == "file_containing_symbol":
            self._files(reply, self._index.symbols.get(request.file_containing_symbol))
        elif kind == "all_extension_numbers_of_type":
            # None of the served files declares an extension: a known type has none.
            if request.all_extension_numbers_of_type in self._index.symbols:
                reply.all_extension_numbers_response.base_type_name = (
                    request.all_extension_numbers_of_type
                )
            else:
                _error(reply, grpc.StatusCode.NOT_FOUND, "no such type")
        elif kind == "file_containing_extension":
            _error(reply, grpc.StatusCode.NOT_FOUND, "no extensions are declared")
        else:
            _error(reply, grpc.StatusCode.INVALID_ARGUMENT, "no request kind set")
        return reply

    def _files(self, reply: Any, name: str | None) -> None:
        if name is None or name not in self._index.files:
            _error(reply, grpc.StatusCode.NOT_FOUND, "no such file or symbol")
            return
        reply.file_descriptor_response.file_descriptor_proto.extend(
            self._index.with_dependencies(name)
        )


def _error(reply: Any, code: grpc.StatusCode, message: str) -> None:
    reply.error_response.error_code = code.value[0]
    reply.error_response.error_message = message


def enable_reflection(services: Iterable[str], server: grpc.Server) -> None:
    """Serve reflection on `server` under v1 and v1alpha, listing `services` and both
    reflection services."""
    index = DescriptorIndex.load()
    listed = (*services, *REFLECTION_SERVICES)
    for service in reflection_descriptors():
        servicer = ReflectionServicer(index, listed, service)
        add_service(server, service, {"ServerReflectionInfo": servicer.ServerReflectionInfo})
