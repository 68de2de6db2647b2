"""The committed FileDescriptorSet (served by reflection) is the generated code's contract
plus the .proto's comments, and those comments document every message and field."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from cachegate.rpc._reflection import DescriptorIndex
from cachegate.v1 import admin_pb2, cache_pb2

GENERATED: dict[str, FileDescriptor] = {
    cache_pb2.DESCRIPTOR.name: cache_pb2.DESCRIPTOR,
    admin_pb2.DESCRIPTOR.name: admin_pb2.DESCRIPTOR,
}


def served(name: str) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(DescriptorIndex.load().files[name])


def without_json_names(types: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    """protoc's descriptor set spells out each field's json_name, which the generated
    code leaves to the default (the same lowerCamelCase): compare without them."""
    for message in types:
        for field in message.field:
            field.ClearField("json_name")
        without_json_names(message.nested_type)


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_served_file_is_the_generated_one_with_comments(name: str) -> None:
    file = served(name)
    assert file.source_code_info.location, "served without source info"
    generated = descriptor_pb2.FileDescriptorProto()
    GENERATED[name].CopyToProto(generated)
    file.ClearField("source_code_info")
    without_json_names(file.message_type)
    assert file == generated


def undocumented(file: descriptor_pb2.FileDescriptorProto) -> Iterator[str]:
    """Messages, fields, enums, values, services and methods with no leading comment."""
    commented = {
        tuple(location.path)
        for location in file.source_code_info.location
        if location.leading_comments.strip()
    }

    def enums(
        types: list[descriptor_pb2.EnumDescriptorProto], path: tuple[int, ...], kind: int
    ) -> Iterator[str]:
        for i, enum in enumerate(types):
            if (*path, kind, i) not in commented:
                yield enum.name
            for j, value in enumerate(enum.value):
                if (*path, kind, i, 2, j) not in commented:
                    yield f"{enum.name}.{value.name}"

    def messages(
        types: list[descriptor_pb2.DescriptorProto], path: tuple[int, ...], kind: int
    ) -> Iterator[str]:
        for i, message in enumerate(types):
            here = (*path, kind, i)
            if here not in commented:
                yield message.name
            for j, field in enumerate(message.field):
                if (*here, 2, j) not in commented:
                    yield f"{message.name}.{field.name}"
            yield from messages(list(message.nested_type), here, 3)
            yield from enums(list(message.enum_type), here, 4)

    # Paths: 4 message_type, 5 enum_type, 6 service (2 method) in FileDescriptorProto.
    yield from messages(list(file.message_type), (), 4)
    yield from enums(list(file.enum_type), (), 5)
    for i, service in enumerate(file.service):
        if (6, i) not in commented:
            yield service.name
        for j, method in enumerate(service.method):
            if (6, i, 2, j) not in commented:
                yield f"{service.name}.{method.name}"


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_message_and_field_is_documented(name: str) -> None:
    assert list(undocumented(served(name))) == []
