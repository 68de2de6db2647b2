"""host:port, parsed in one place: listen addresses, Sentinel and Cluster nodes.

    host:port       a name or an IPv4 address
    [v6]:port       an IPv6 address, in brackets (as in URLs, RFC 3986, and gRPC targets)

An IPv6 address without brackets is refused: "fe80::1:6379" could be fe80::1 port
6379 or the address fe80::1:6379 with no port. The port is 1..65535, or 0 as well
for an address to listen on (the OS picks a free port; meaningless to dial).
"""

from __future__ import annotations

from dataclasses import dataclass

from cachegate.core._errors import ConfigError

__all__ = ["Address", "parse_address", "parse_port"]

_MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class Address:
    """A host (an IPv6 address without its brackets) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        """host:port, with the brackets an IPv6 address needs: parse_address reads it back."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_port(raw: str, *, listen: bool = False) -> int:
    """A port number: 1..65535, or 0..65535 to listen on; ConfigError says what is wrong."""
    try:
        port = int(raw.strip())
    except ValueError:
        raise ConfigError("must be a whole number") from None
    lowest = 0 if listen else 1
    if port < lowest:
        raise ConfigError(f"must be >= {lowest}")
    if port > _MAX_PORT:
        raise ConfigError(f"must be <= {_MAX_PORT}")
    return port


def parse_address(raw: str, *, listen: bool = False) -> Address:
    """host:port or [v6]:port; `listen` also allows port 0. ConfigError says what is wrong."""
    text = raw.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{text!r} is not host:port")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")) or len(host) < 3:
            raise ConfigError(f"{text!r}: unbalanced brackets; an IPv6 address is [v6]:port")
        host = host[1:-1]
        if "[" in host or "]" in host:
            raise ConfigError(f"{text!r}: unbalanced brackets; an IPv6 address is [v6]:port")
    elif ":" in host:
        raise ConfigError(f"{text!r}: an IPv6 address goes in brackets, [v6]:port")
    try:
        number = parse_port(port, listen=listen)
    except ConfigError as exc:
        raise ConfigError(f"{text!r}: the port {exc}") from None
    return Address(host, number)
