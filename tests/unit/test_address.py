"""The one host:port parser (core/_address.py), and its users agree with it."""

from __future__ import annotations

import pytest

from cachegate.core import Address, ConfigError, load_config, parse_address, parse_port


@pytest.mark.parametrize(
    ("raw", "address"),
    [
        ("127.0.0.1:50051", Address("127.0.0.1", 50051)),
        ("  localhost:6379 ", Address("localhost", 6379)),
        ("[::1]:26380", Address("::1", 26380)),
        ("[::]:50051", Address("::", 50051)),
        ("[fe80::1%eth0]:1", Address("fe80::1%eth0", 1)),
        ("redis-0.redis:65535", Address("redis-0.redis", 65535)),
    ],
)
def test_host_and_port(raw: str, address: Address) -> None:
    assert parse_address(raw) == address
    assert parse_address(str(address)) == address  # str() reads back, brackets and all


def test_str_brackets_ipv6_only() -> None:
    assert str(Address("::1", 80)) == "[::1]:80"
    assert str(Address("127.0.0.1", 80)) == "127.0.0.1:80"


def test_port_zero_only_to_listen() -> None:
    assert parse_address("127.0.0.1:0", listen=True) == Address("127.0.0.1", 0)
    with pytest.raises(ConfigError, match=r"^'127.0.0.1:0': the port must be >= 1$"):
        parse_address("127.0.0.1:0")


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("nowhere", "'nowhere' is not host:port"),
        (":6379", "':6379' is not host:port"),
        ("", "'' is not host:port"),
        ("host:", "'host:': the port must be a whole number"),
        ("host:http", "'host:http': the port must be a whole number"),
        ("host:65536", "'host:65536': the port must be <= 65535"),
        ("host:-1", "'host:-1': the port must be >= 0"),  # 0 is fine to listen on
        ("::1:6379", "'::1:6379': an IPv6 address goes in brackets, [v6]:port"),
        ("[::1:6379", "'[::1:6379': unbalanced brackets; an IPv6 address is [v6]:port"),
        ("::1]:6379", "'::1]:6379': unbalanced brackets; an IPv6 address is [v6]:port"),
        ("[]:6379", "'[]:6379': unbalanced brackets; an IPv6 address is [v6]:port"),
        ("[[::1]]:6379", "'[[::1]]:6379': unbalanced brackets; an IPv6 address is [v6]:port"),
    ],
)
def test_a_bad_address_says_what_is_wrong(raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_address(raw, listen=True)
    assert str(caught.value) == says


def test_port_alone() -> None:
    assert parse_port(" 6379 ") == 6379
    assert parse_port("0", listen=True) == 0
    for raw, says in [("0", "must be >= 1"), ("70000", "must be <= 65535"), ("x", "whole")]:
        with pytest.raises(ConfigError, match=says):
            parse_port(raw)


def test_config_uses_it_and_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^CACHEGATE_LISTEN='::1:50051': '::1:50051': an IPv6"):
        load_config({"CACHEGATE_LISTEN": "::1:50051"})
    with pytest.raises(ConfigError, match=r"^CACHEGATE_HTTP_LISTEN='h:99999': 'h:99999': the port"):
        load_config({"CACHEGATE_HTTP_LISTEN": "h:99999"})
    config = load_config(
        {"CACHEGATE_BACKEND": "cluster", "REDIS_CLUSTER_NODES": "[::1]:7000, a:7001"}
    )
    assert config.redis.cluster_nodes == (Address("::1", 7000), Address("a", 7001))
    assert config.backend_target == "redis+cluster://[::1]:7000,a:7001"
    assert load_config({"CACHEGATE_LISTEN": " [::]:0 "}).server.listen == "[::]:0"
