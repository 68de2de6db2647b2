"""The decisions both near-cache feeds make (client/_following.py), without a stream:
what each event does to the near cache and to "live", and the backoff schedule.
The feeds themselves run against real servers in tests/integration."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cachegate.client import Invalidation, NearCache
from cachegate.client._following import BACKOFF_BASE, BACKOFF_CAP, Flag, Following
from cachegate.client._invalidations import event_of
from cachegate.v1 import invalidation_pb2 as pb


def filled(*keys: str) -> NearCache:
    near = NearCache(maxsize=10, ttl=60.0)
    for key in keys:
        near.put(key, b"v")
    return near


def held(near: NearCache) -> set[str]:
    return {key for key in ("a", "b", "c") if near.get(key) is not None}


@pytest.mark.parametrize("flag", [threading.Event, asyncio.Event])
def test_events_move_the_near_cache_and_live(flag: type[Flag]) -> None:
    near = filled("a", "b", "c")
    following = Following(near, flag())
    following._opened()
    following._apply(Invalidation("reset", reason="subscribed", tracking=True))
    assert held(near) == set()
    assert following.live
    for key in ("a", "b", "c"):
        near.put(key, b"v")
    following._apply(Invalidation("keys", ("a", "c")))
    assert held(near) == {"b"}  # only the keys named
    assert following.live
    following._apply(Invalidation("reset", reason="tracking lost: x", tracking=False))
    assert held(near) == set()
    assert not following.live  # entries age out by their TTL until tracking is back
    following._apply(Invalidation("reset", reason="tracking resumed", tracking=True))
    near.put("a", b"v")
    following._ended(None)
    assert held(near) == set()  # the end of a stream is a reset
    assert not following.live
    assert following.subscriptions == 1


def test_the_backoff_doubles_to_its_cap_and_starts_again_after_a_delivery() -> None:
    following = Following(NearCache(), threading.Event())
    ceilings = []
    for _ in range(10):  # streams that end before their first reset
        following._opened()
        ceilings.append(following._ended(None))
    for n, delay in enumerate(ceilings):
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2**n)
        assert ceiling / 2 <= delay <= ceiling, (n, delay)
    assert ceilings[-1] >= BACKOFF_CAP / 2
    following._opened()
    following._apply(Invalidation("reset", reason="subscribed", tracking=True))
    assert BACKOFF_BASE / 2 <= following._ended(None) <= BACKOFF_BASE
    following._opened()  # a stream that delivers only keys does not count as delivered
    following._apply(Invalidation("keys", ("a",)))
    assert BACKOFF_BASE <= following._ended(None) <= 2 * BACKOFF_BASE


def test_wire_messages_become_events_and_unknown_kinds_are_ignored() -> None:
    reset = pb.SubscribeResponse(
        kind=pb.INVALIDATION_KIND_RESET, reason="redis flushed", tracking=True
    )
    keys = pb.SubscribeResponse(kind=pb.INVALIDATION_KIND_KEYS, keys=["a", "b"])
    assert event_of(reset) == Invalidation("reset", reason="redis flushed", tracking=True)
    assert event_of(keys) == Invalidation("keys", ("a", "b"))
    assert event_of(pb.SubscribeResponse(kind=pb.INVALIDATION_KIND_UNSPECIFIED)) is None
