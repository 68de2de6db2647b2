"""The stale copy (core/_stalecopy.py) on a fake clock: ages, TTLs, ordering, the byte bound."""

from __future__ import annotations

import random

import pytest

from cachegate.core import StaleCopy
from cachegate.core._stalecopy import ENTRY_OVERHEAD_BYTES, LARGEST_ENTRY_SHARE


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_write_is_served_within_the_allowance_with_its_age(clock: FakeClock) -> None:
    copy = StaleCopy(1 << 20, clock=clock)
    since = copy.begin()
    clock.advance(0.001)
    copy.wrote("k", b"v", 60, since)
    clock.advance(5)
    answer = copy.serve("k", 10)
    assert answer is not None
    assert answer.value == b"v"
    assert answer.age_seconds == pytest.approx(5.001)
    assert copy.serve("k", 5) is None  # older than this caller allows
    assert copy.serve(b"k", 6) is not None  # str and bytes keys are the same key
    assert copy.serve("other", 10) is None
    assert copy.stats().served_total == 2


def test_never_served_past_the_ttl(clock: FakeClock) -> None:
    copy = StaleCopy(1 << 20, clock=clock)
    copy.wrote("k", b"v", 2, copy.begin())
    clock.advance(1.999)
    assert copy.serve("k", 100) is not None
    clock.advance(0.001)
    assert copy.serve("k", 100) is None
    assert copy.stats().entries == 0  # dropped once found expired
    # A read learns the TTL Redis reported, counted from when the read was sent.
    since = copy.begin()
    clock.advance(0.5)
    copy.learned("r", b"v", 1.0, since)
    clock.advance(0.499)
    assert copy.serve("r", 100) is not None
    clock.advance(0.001)
    assert copy.serve("r", 100) is None


def test_a_key_without_ttl_is_bounded_by_the_allowance_alone(clock: FakeClock) -> None:
    copy = StaleCopy(1 << 20, clock=clock)
    copy.learned("k", b"v", None, copy.begin())
    clock.advance(3600)
    assert copy.serve("k", 3600) is not None
    assert copy.serve("k", 3599) is None


def test_forget_drops_the_key(clock: FakeClock) -> None:
    copy = StaleCopy(1 << 20, clock=clock)
    copy.wrote("k", b"v", 60, copy.begin())
    clock.advance(1)
    copy.forget("k")
    assert copy.serve("k", 100) is None
    assert copy.stats().bytes == 0


def test_a_read_that_overlapped_a_delete_or_write_is_not_kept(clock: FakeClock) -> None:
    copy = StaleCopy(1 << 20, clock=clock)
    read_began = copy.begin()
    clock.advance(0.01)
    copy.forget("k")  # a delete finished while the read was under way
    clock.advance(0.01)
    copy.learned("k", b"old", 60, read_began)
    assert copy.serve("k", 100) is None
    # The same after a write: the write's value stays, the read's is not kept.
    read_began = copy.begin()
    clock.advance(0.01)
    copy.wrote("k", b"new", 60, copy.begin())
    clock.advance(0.01)
    copy.learned("k", b"old", 60, read_began)
    answer = copy.serve("k", 100)
    assert answer is not None
    assert answer.value == b"new"
    # A read begun after the write finished is kept.
    clock.advance(0.01)
    copy.learned("k", b"newer", 60, copy.begin())
    answer = copy.serve("k", 100)
    assert answer is not None
    assert answer.value == b"newer"


def test_overlapping_writes_drop_the_key(clock: FakeClock) -> None:
    copy = StaleCopy(1 << 20, clock=clock)
    first = copy.begin()
    clock.advance(0.01)
    second = copy.begin()
    clock.advance(0.01)
    copy.wrote("k", b"two", 60, second)
    clock.advance(0.01)
    copy.wrote("k", b"one", 60, first)  # Redis may have applied either last
    assert copy.serve("k", 100) is None


def test_an_older_read_does_not_replace_a_newer_one(clock: FakeClock) -> None:
    copy = StaleCopy(1 << 20, clock=clock)
    older = copy.begin()
    clock.advance(0.01)
    copy.learned("k", b"newer", 60, copy.begin())
    copy.learned("k", b"older", 60, older)
    answer = copy.serve("k", 100)
    assert answer is not None
    assert answer.value == b"newer"


def test_the_byte_bound_holds_and_the_least_recently_used_go_first(clock: FakeClock) -> None:
    capacity = 64 * 1024
    copy = StaleCopy(capacity, clock=clock)
    rng = random.Random(16)
    for n in range(5000):
        clock.advance(0.001)
        size = rng.randrange(0, capacity // LARGEST_ENTRY_SHARE - ENTRY_OVERHEAD_BYTES - 8)
        copy.wrote(f"k{n}", bytes(size), 600, copy.begin())
        assert copy.stats().bytes <= capacity
        if n % 7 == 0:
            copy.serve(f"k{rng.randrange(n + 1)}", 1e9)  # touches move keys to the end
    stats = copy.stats()
    assert stats.evicted_total > 0
    assert 0 < stats.bytes <= capacity
    # Small entries: the oldest go first, a recently served one stays.
    copy = StaleCopy(10 * (ENTRY_OVERHEAD_BYTES + 2 + 1), clock=clock)
    for n in range(10):
        copy.wrote(f"k{n}", b"v", 600, copy.begin())
        clock.advance(0.001)
    assert copy.serve("k0", 100) is not None
    copy.wrote("kx", b"v", 600, copy.begin())
    assert copy.serve("k0", 100) is not None
    assert copy.serve("k1", 100) is None
    assert copy.stats().entries == 10


def tenant(key: bytes) -> bytes:
    return key.partition(b":")[0]


@pytest.mark.parametrize("fair", [True, False])
def test_a_tenant_writing_without_pause_never_pushes_out_one_that_holds_less(
    clock: FakeClock, fair: bool
) -> None:
    entry = ENTRY_OVERHEAD_BYTES + 1024 + 16
    capacity = 40 * entry
    copy = StaleCopy(capacity, owner_of=tenant if fair else None, clock=clock)
    for n in range(8):  # the victim: a fifth of the copy
        copy.wrote(f"bob:k{n}", b"b" * 1024, 600, copy.begin())
        clock.advance(0.001)
    for n in range(5000):  # the attacker: 125 times the copy, never read back
        copy.wrote(f"eve:k{n:05}", b"e" * 1024, 600, copy.begin())
        clock.advance(0.001)
        assert copy.stats().bytes <= capacity
    kept = [copy.serve(f"bob:k{n}", 1e9) is not None for n in range(8)]
    if fair:
        assert all(kept)
        # ... and the attacker still had the room the victim left.
        held = sum(copy.serve(f"eve:k{n:05}", 1e9) is not None for n in range(5000))
        assert held == copy.stats().entries - 8 >= 30
    else:  # one LRU order for all: the writer wins (this is what `owner_of` changes)
        assert not any(kept)


def test_a_tenant_alone_may_use_the_whole_copy_and_loses_its_own_oldest(
    clock: FakeClock,
) -> None:
    entry = ENTRY_OVERHEAD_BYTES + 100 + 16
    copy = StaleCopy(20 * entry, owner_of=tenant, clock=clock)
    for n in range(25):
        copy.wrote(f"ann:k{n:03}", b"a" * 100, 600, copy.begin())
        clock.advance(0.001)
    assert copy.stats().entries == 20
    assert copy.serve("ann:k004", 1e9) is None  # its own oldest went first
    assert copy.serve("ann:k005", 1e9) is not None
    # A second tenant arrives: room is taken from the one holding the most.
    copy.wrote("bob:k", b"b" * 100, 600, copy.begin())
    assert copy.serve("bob:k", 1e9) is not None
    assert copy.serve("ann:k005", 1e9) is not None  # served just now: not the oldest
    assert copy.serve("ann:k006", 1e9) is None
    copy.forget("bob:k")
    assert copy.stats().entries == 19


def test_an_entry_too_large_for_its_share_is_not_kept(clock: FakeClock) -> None:
    capacity = 8 * 1024
    copy = StaleCopy(capacity, clock=clock)
    copy.wrote("k", b"small", 60, copy.begin())
    clock.advance(0.01)
    copy.wrote("k", bytes(capacity // LARGEST_ENTRY_SHARE), 60, copy.begin())
    assert copy.serve("k", 100) is None  # and the old value is not served in its place
    assert copy.stats().bytes == 0


def test_zero_bytes_disables_it(clock: FakeClock) -> None:
    copy = StaleCopy(0, clock=clock)
    assert not copy.enabled
    copy.wrote("k", b"v", 60, copy.begin())
    copy.learned("k", b"v", 60, copy.begin())
    assert copy.serve("k", 100) is None
    assert copy.stats().entries == 0
    with pytest.raises(ValueError, match="capacity_bytes"):
        StaleCopy(-1)
