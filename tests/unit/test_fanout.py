"""The invalidation hub's rules: tenant scoping, filters, bounded queues, resets."""

from __future__ import annotations

from cachegate.client import NearCache
from cachegate.rpc._fanout import MAX_KEYS_PER_EVENT, Batch, InvalidationHub, Subscriber


def hub(tenants: set[str] | None = None, limit: int = 100) -> InvalidationHub:
    made = InvalidationHub(tenants, limit, 1024, start=lambda: None)
    made.reset("subscribed", tracking=True)
    return made


def subscribed(h: InvalidationHub, *args: object, **kwargs: object) -> Subscriber:
    """A subscriber that has taken its first reset (a pending reset covers every key)."""
    made = h.subscribe(*args, **kwargs)  # type: ignore[arg-type]
    assert made.take(0) == Batch((), "subscribed", True)
    return made


def drain(subscriber: Subscriber) -> list[Batch]:
    taken = []
    while (batch := subscriber.take(0)) is not None:
        taken.append(batch)
    return taken


def test_a_tenant_hears_only_its_own_keys_without_its_namespace() -> None:
    h = hub({"alice", "bob"})
    closed: list[str] = []
    alice = subscribed(h, "alice", (), (), closed.append)
    bob = subscribed(h, "bob", (), (), closed.append)
    assert h.prefixes == ["alice:", "bob:"]
    h.changed([b"alice:k1", b"bob:k2", b"carol:k3", b"nonamespace", b"alice:x:y"])
    assert drain(alice) == [Batch(("k1", "x:y"))]
    assert drain(bob) == [Batch(("k2",))]
    assert not closed


def test_without_tokens_every_key_reaches_every_subscriber_as_is() -> None:
    h = hub(None)
    everyone = subscribed(h, None, (), (), lambda _: None)
    assert h.prefixes == []
    h.changed([b"alice:k1", b"k2", b"\xff\xfe", b""])  # not UTF-8, empty: no Get names them
    assert drain(everyone) == [Batch(("alice:k1", "k2"))]


def test_keys_and_prefixes_filter_and_repeats_coalesce() -> None:
    h = hub(None)
    some = subscribed(h, None, ["a", "b"], ["user:"], lambda _: None)
    h.changed([b"a", b"c", b"user:1", b"a", b"userx", b"b"])
    assert drain(some) == [Batch(("a", "user:1", "b"))]


def test_events_are_batched_to_a_bounded_size() -> None:
    h = hub(None, limit=10_000)
    s = subscribed(h, None, (), (), lambda _: None)
    h.changed([f"k{i}".encode() for i in range(MAX_KEYS_PER_EVENT * 2 + 1)])
    sizes = [len(batch.keys) for batch in drain(s)]
    assert sizes == [MAX_KEYS_PER_EVENT, MAX_KEYS_PER_EVENT, 1]


def test_a_subscriber_that_falls_behind_gets_a_reset_then_is_closed() -> None:
    h = hub(None, limit=3)
    closed: list[str] = []
    s = subscribed(h, None, (), (), closed.append)
    h.changed([b"1", b"2", b"3", b"4"])  # one past the bound: a reset instead of keys
    h.changed([b"5"])  # a pending reset covers later keys too
    assert not closed
    assert drain(s) == [Batch((), "fell behind", True)]
    h.changed([b"1", b"2", b"3", b"4"])  # behind again, and it reads no more:
    h.changed([b"5", b"6", b"7"])
    assert not closed
    h.changed([b"8"])  # as many keys again as the bound, unread
    assert len(closed) == 1
    assert "CACHEGATE_INVALIDATION_QUEUE" in closed[0]
    assert s.ended is not None
    assert s.take(0) is None


def test_resets_say_whether_the_server_tracks() -> None:
    h = hub(None)
    s = subscribed(h, None, (), (), lambda _: None)
    h.reset("tracking lost: gone", tracking=False)
    assert drain(s) == [Batch((), "tracking lost: gone", False)]
    h.reset("tracking resumed", tracking=True)
    assert drain(s) == [Batch((), "tracking resumed", True)]
    late = h.subscribe(None, (), (), lambda _: None)
    assert late.take(0) == Batch((), "subscribed", True)


def test_no_first_reset_until_tracking_starts_and_a_reset_replaces_queued_keys() -> None:
    h = InvalidationHub(None, 100, 1024, start=lambda: None)
    s = h.subscribe(None, (), (), lambda _: None)
    assert s.take(0) is None  # not tracking yet: nothing promised
    h.reset("subscribed", tracking=True)
    assert drain(s) == [Batch((), "subscribed", True)]
    h.changed([b"k"])
    h.reset("redis flushed", tracking=True)  # replaces the queued keys
    assert drain(s) == [Batch((), "redis flushed", True)]
    h.unsubscribe(s)
    assert h.count() == 0


def test_end_all_wakes_every_stream() -> None:
    h = hub(None)
    s = h.subscribe(None, (), (), lambda _: None)
    h.end_all("shutting down")
    assert s.take(5) is None
    assert s.ended == "shutting down"


def test_near_cache_never_keeps_a_read_that_raced_a_change() -> None:
    near = NearCache()

    def load_while_changed() -> bytes:
        near.invalidate_many(["k"])  # the change is heard while the read is in flight
        return b"old"

    assert near.get_or_load("k", load_while_changed) == b"old"
    assert near.get("k") is None  # returned, not kept
    assert near.get_or_load("k", lambda: b"new") == b"new"
    assert near.get("k") == b"new"
    near.invalidate_many(["k", "absent"])  # counts the entries it dropped

    def load_while_reset() -> bytes:
        near.clear()
        return b"older"

    assert near.get_or_load("j", load_while_reset) == b"older"
    assert near.get("j") is None
    stats = near.stats()
    assert stats.resets == 1
    assert stats.invalidations == 1
