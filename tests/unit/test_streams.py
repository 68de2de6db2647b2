"""StreamGate and caller_of (rpc/_streams.py): admission, shares, idleness; a fake clock."""

from __future__ import annotations

import pytest

from cachegate.core import ConfigError, load_config
from cachegate.rpc._status import TooBusyError
from cachegate.rpc._streams import StreamGate, caller_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gate(
    max_streams: int = 4, share: float = 0.5, idle: float = 10.0
) -> tuple[StreamGate, FakeClock, list[str]]:
    clock = FakeClock()
    closed: list[str] = []
    return StreamGate(max_streams, share, idle, clock=clock, watchdog=False), clock, closed


@pytest.mark.parametrize(
    ("peer", "tenant", "caller"),
    [
        ("ipv4:127.0.0.1:51234", None, "127.0.0.1"),
        ("ipv4:127.0.0.1:40000", None, "127.0.0.1"),  # another connection, same caller
        ("ipv6:[::1]:51234", None, "[::1]"),
        ("ipv6:%5B::1%5D:51234", None, "%5B::1%5D"),
        ("unix:/tmp/cachegate.sock", None, "unix:/tmp/cachegate.sock"),
        ("", None, "unknown peer"),
        ("ipv4:10.0.0.7:51234", "alice", "tenant alice"),  # tokens: the tenant, not the address
    ],
)
def test_caller_of(peer: str, tenant: str | None, caller: str) -> None:
    assert caller_of(peer, tenant) == caller


def test_a_caller_gets_its_share_and_others_the_rest() -> None:
    streams, _, closed = gate(max_streams=4, share=0.5)
    assert streams.per_caller == 2
    mine = [streams.admit("a", closed.append) for _ in range(2)]
    with pytest.raises(TooBusyError, match=r"a holds 2 .*CACHEGATE_STREAM_SHARE=0\.5"):
        streams.admit("a", closed.append)
    theirs = [streams.admit("b", closed.append) for _ in range(2)]
    with pytest.raises(TooBusyError, match="CACHEGATE_MAX_STREAMS"):
        streams.admit("c", closed.append)
    streams.release(mine[0])
    streams.release(mine[0])  # a second release changes nothing
    assert streams.open_streams("a") == 1
    assert streams.open_streams() == 3
    streams.admit("a", closed.append)
    for stream in theirs:
        streams.release(stream)
    assert streams.open_streams("b") == 0


@pytest.mark.parametrize(
    ("max_streams", "share", "per_caller"),
    [(100, 0.25, 25), (2, 0.25, 1), (1, 0.25, 1), (10, 1.0, 10), (7, 0.5, 3)],
)
def test_every_caller_may_hold_at_least_one_stream(
    max_streams: int, share: float, per_caller: int
) -> None:
    assert StreamGate(max_streams, share, 0, watchdog=False).per_caller == per_caller


def test_idle_streams_are_taken_once_and_serving_stops_the_clock() -> None:
    streams, clock, closed = gate(idle=10.0)
    quiet = streams.admit("a", closed.append)
    busy = streams.admit("b", closed.append)
    batches = busy.watch(iter(["batch 1", "batch 2"]))
    clock.now += 5
    assert next(batches) == "batch 1"  # being served: no idle clock
    clock.now += 9.9
    assert streams.take_idle(clock.now) == [quiet]
    assert quiet.idle_closed
    assert streams.take_idle(clock.now) == []  # closed once only
    clock.now += 100  # a long batch is still no idleness
    assert streams.take_idle(clock.now) == []
    assert next(batches) == "batch 2"  # the clock restarted when batch 2 was asked for
    clock.now += 9.9
    assert streams.take_idle(clock.now) == []
    assert next(batches, None) is None  # waiting again, for a batch that never comes
    clock.now += 10
    assert streams.take_idle(clock.now) == [busy]


def test_sweep_closes_with_the_idle_message() -> None:
    streams, clock, closed = gate(idle=2.0)
    streams.admit("a", closed.append)
    clock.now += 2
    assert streams.sweep() == 1
    assert closed == [streams.idle_message]
    assert "no batch for 2 s (CACHEGATE_STREAM_IDLE_SECONDS)" in closed[0]


def test_no_idle_timeout_when_it_is_zero() -> None:
    streams, clock, closed = gate(idle=0)
    streams.admit("a", closed.append)
    clock.now += 1e9
    assert streams.sweep() == 0


@pytest.mark.parametrize("raw", ["0", "1.5", "-0.1", "nan", "half"])
def test_stream_share_must_be_a_fraction(raw: str) -> None:
    with pytest.raises(ConfigError, match="CACHEGATE_STREAM_SHARE"):
        load_config({"CACHEGATE_STREAM_SHARE": raw})


def test_fair_stream_defaults() -> None:
    limits = load_config({}).limits
    assert (limits.stream_share, limits.stream_idle_seconds) == (0.25, 30.0)
