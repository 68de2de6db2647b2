from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InvalidationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVALIDATION_KIND_UNSPECIFIED: _ClassVar[InvalidationKind]
    INVALIDATION_KIND_KEYS: _ClassVar[InvalidationKind]
    INVALIDATION_KIND_RESET: _ClassVar[InvalidationKind]
INVALIDATION_KIND_UNSPECIFIED: InvalidationKind
INVALIDATION_KIND_KEYS: InvalidationKind
INVALIDATION_KIND_RESET: InvalidationKind

class SubscribeRequest(_message.Message):
    __slots__ = ("keys", "prefixes")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    prefixes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ..., prefixes: _Optional[_Iterable[str]] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("kind", "keys", "reason", "tracking")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    kind: InvalidationKind
    keys: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    tracking: bool
    def __init__(self, kind: _Optional[_Union[InvalidationKind, str]] = ..., keys: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., tracking: _Optional[bool] = ...) -> None: ...
