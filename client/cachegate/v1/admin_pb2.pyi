from cachegate.v1 import cache_pb2 as _cache_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ForceOpenBreakerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ForceOpenBreakerResponse(_message.Message):
    __slots__ = ("breaker",)
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    breaker: _cache_pb2.BreakerStats
    def __init__(self, breaker: _Optional[_Union[_cache_pb2.BreakerStats, _Mapping]] = ...) -> None: ...

class ForceCloseBreakerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ForceCloseBreakerResponse(_message.Message):
    __slots__ = ("breaker",)
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    breaker: _cache_pb2.BreakerStats
    def __init__(self, breaker: _Optional[_Union[_cache_pb2.BreakerStats, _Mapping]] = ...) -> None: ...

class ResetBreakerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetBreakerResponse(_message.Message):
    __slots__ = ("breaker",)
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    breaker: _cache_pb2.BreakerStats
    def __init__(self, breaker: _Optional[_Union[_cache_pb2.BreakerStats, _Mapping]] = ...) -> None: ...
