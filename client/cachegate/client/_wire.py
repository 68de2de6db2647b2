"""The few protobuf messages the thin client reads without their generated code.

grpc.health.v1 and google.rpc.Status live in grpcio-health-checking and
googleapis-common-protos. The thin client depends on grpcio and protobuf only,
and registering second copies of those .proto files would clash with the real
ones in a process that has both, so the handful of fields we need are encoded
and decoded here by hand, from the protobuf wire format.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = [
    "HEALTH_CHECK",
    "HEALTH_WATCH",
    "STATUS_DETAILS_KEY",
    "decode_health_response",
    "encode_health_request",
    "retry_after_seconds",
]

# grpc.health.v1's method paths, written here with the rest of its by-hand copy
# (the thin client has no descriptor of it to take them from).
_HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_CHECK = f"/{_HEALTH_SERVICE}/Check"
HEALTH_WATCH = f"/{_HEALTH_SERVICE}/Watch"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs: ints for varints, bytes for length-delimited."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire_type == _LENGTH:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            yield number, data[pos : pos + length]
            pos += length
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")


def encode_health_request(service: str) -> bytes:
    """grpc.health.v1.HealthCheckRequest{service}."""
    raw = service.encode()
    return b"\x0a" + _encode_varint(len(raw)) + raw if raw else b""


def decode_health_response(data: bytes) -> int:
    """grpc.health.v1.HealthCheckResponse.status (0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 ...)."""
    status = 0
    for number, value in _fields(data):
        if number == 1 and isinstance(value, int):
            status = value
    return status


def retry_after_seconds(status_details: bytes) -> float | None:
    """RetryInfo.retry_delay from a serialized google.rpc.Status, if it carries one."""
    try:
        for number, detail in _fields(status_details):
            if number != 3 or not isinstance(detail, bytes):
                continue  # Status.details is field 3: repeated google.protobuf.Any
            parts = dict(_fields(detail))
            if parts.get(1) != RETRY_INFO_TYPE.encode():
                continue
            retry_info = parts.get(2, b"")
            if not isinstance(retry_info, bytes):
                continue
            duration = dict(_fields(retry_info)).get(1, b"")  # RetryInfo.retry_delay
            if not isinstance(duration, bytes):
                continue
            fields = dict(_fields(duration))
            seconds, nanos = fields.get(1, 0), fields.get(2, 0)
            if isinstance(seconds, int) and isinstance(nanos, int):
                return seconds + nanos / 1e9
    except ValueError:
        return None  # malformed details: no hint rather than a crash in error handling
    return None
