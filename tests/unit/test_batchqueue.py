"""Auto-batching's pure decisions (pool/_batchqueue.py) on a fake clock: who goes when,
who leads a round trip, deadlines and patience in the queue, and single-flight."""

from __future__ import annotations

import pytest

from cachegate.pool._batchqueue import BatchQueue, State, Ticket, plan

PATIENCE = 1.0


def ticket(key: str, expires: float | None = None, arrived: float = 0.0) -> Ticket:
    return Ticket(("GET", key.encode()), expires, arrived)


def send_next(queue: BatchQueue, now: float) -> list[Ticket]:
    """What the next round trip carries (the leader's thread taking it at `now`)."""
    leader, _ = queue.returned(now)
    if leader is None:
        return []
    batch, _ = queue.take(leader, now)
    return batch


def test_a_call_alone_goes_at_once_and_the_next_ones_queue() -> None:
    queue = BatchQueue(8, PATIENCE)
    first = ticket("a")
    assert queue.arrive(first) is True  # nothing in flight: no wait, no window
    assert first.state is State.SENT
    later = [ticket(k, arrived=n) for n, k in enumerate("bcd")]
    assert [queue.arrive(t) for t in later] == [False, False, False]
    assert queue.queued == 3
    assert queue.busy
    leader, expired = queue.returned(now=0.001)
    assert expired == []
    assert leader is later[0]  # no deadlines: the oldest leads
    assert leader.state is State.LEADS
    assert queue.queued == 2  # the others wait for the leader's thread to take them
    late = ticket("e", arrived=5)
    assert queue.arrive(late) is False  # the round trip is not sent yet: it joins
    batch, expired = queue.take(leader, now=0.002)
    assert batch == [*later, late]  # arrival order kept
    assert expired == []
    assert {t.state for t in batch if t is not leader} == {State.SENT}
    assert queue.queued == 0
    assert queue.busy  # the next round trip is in flight now
    assert queue.returned(now=0.003) == (None, [])
    assert not queue.busy  # idle: the next call goes at once again
    assert queue.arrive(ticket("f")) is True


def test_a_round_trip_carries_at_most_max_batch_calls() -> None:
    queue = BatchQueue(2, PATIENCE)
    queue.arrive(ticket("x"))
    for n, key in enumerate("abcde"):
        queue.arrive(ticket(key, arrived=n))
    sizes = []
    while batch := send_next(queue, now=0.0):
        sizes.append(len(batch))
    assert sizes == [2, 2, 1]


def test_the_leader_is_the_call_with_the_latest_deadline_and_carries_none_later() -> None:
    queue = BatchQueue(8, PATIENCE)
    queue.arrive(ticket("x"))
    short, none, long_ = ticket("a", 5.0, 1), ticket("b", None, 3), ticket("c", 9.0, 2)
    for t in (short, long_, none):
        queue.arrive(t)
    assert send_next(queue, now=0.0) == [short, long_, none]  # no deadline: the latest
    assert send_next(queue, now=0.0) == []
    queue.arrive(ticket("y"))
    d, e, f = ticket("d", 3.0, 1), ticket("e", 7.0, 2), ticket("f", 4.0, 3)
    for t in (d, e, f):
        queue.arrive(t)
    leader, _ = queue.returned(now=0.0)
    assert leader is e
    later = ticket("g", 8.0, 4)  # queued before e's thread runs, with a later deadline
    queue.arrive(later)
    batch, _ = queue.take(e, now=0.0)
    assert batch == [d, e, f]  # g would outlive the round trip's sender: the next one
    assert send_next(queue, now=0.0) == [later]


def test_a_queued_call_whose_deadline_passed_is_never_sent() -> None:
    queue = BatchQueue(8, PATIENCE)
    queue.arrive(ticket("x"))
    gone, live = ticket("a", expires=0.5), ticket("b", expires=5.0)
    queue.arrive(gone)
    queue.arrive(live)
    leader, expired = queue.returned(now=0.6)
    assert expired == [gone]
    assert gone.state is State.EXPIRED
    assert leader is live
    soon = ticket("c", expires=0.7)
    queue.arrive(soon)
    batch, expired = queue.take(live, now=0.8)  # it expired before the leader ran
    assert batch == [live]
    assert expired == [soon]
    # Only expired calls queued: nothing to send, the queue is idle.
    queue.returned(now=0.9)
    queue.arrive(ticket("y"))
    late = ticket("d", expires=1.0)
    queue.arrive(late)
    assert queue.returned(now=2.0) == (None, [late])
    assert not queue.busy


def test_waiting_is_bounded_by_the_deadline_and_by_patience_while_queued() -> None:
    queue = BatchQueue(8, PATIENCE)
    queue.arrive(ticket("x"))
    soon, unbounded = ticket("a", expires=0.3, arrived=0.0), ticket("b", arrived=0.1)
    queue.arrive(soon)
    queue.arrive(unbounded)
    assert queue.wait_limit(soon, now=0.1) == pytest.approx(0.2)
    assert queue.wait_limit(unbounded, now=0.1) == pytest.approx(PATIENCE)
    # A timer that fires early changes nothing.
    assert queue.timed_out(soon, now=0.2) is State.QUEUED
    assert queue.timed_out(soon, now=0.3) is State.EXPIRED
    assert queue.queued == 1  # it left the queue
    # Past its patience a queued call goes on its own connection.
    assert queue.timed_out(unbounded, now=0.1 + PATIENCE) is State.ALONE
    assert queue.queued == 0
    assert queue.returned(now=1.2) == (None, [])


def test_a_sent_call_waits_only_for_its_deadline_and_then_stops_waiting() -> None:
    queue = BatchQueue(8, PATIENCE)
    queue.arrive(ticket("x"))
    member, leader_ticket = ticket("a", expires=0.5), ticket("b", expires=3.0)
    queue.arrive(member)
    queue.arrive(leader_ticket)
    leader, _ = queue.returned(now=0.0)
    assert leader is leader_ticket
    queue.take(leader, now=0.0)
    assert member.state is State.SENT
    assert queue.wait_limit(member, now=0.1) == pytest.approx(0.4)  # no patience once sent
    assert queue.timed_out(member, now=2.0) is State.EXPIRED
    unbounded = ticket("c")
    unbounded.state = State.SENT
    assert queue.wait_limit(unbounded, now=5.0) is None  # its round trip wakes it
    assert queue.timed_out(unbounded, now=50.0) is State.SENT


def test_single_flight_shares_identical_gets_until_a_write_of_the_key() -> None:
    commands = [
        ("GET", b"a"),
        ("GET", "a"),  # the same key as Redis sees it
        ("GET", b"b"),
        ("SETEX", b"a", 60, b"v"),
        ("GET", b"a"),  # after the write: read again
        ("GET", b"b"),
        ("DEL", b"b"),
        ("GET", b"b"),
        ("GET", b"a"),
    ]
    wire, at = plan(commands)
    assert wire == [
        ("GET", b"a"),
        ("GET", b"b"),
        ("SETEX", b"a", 60, b"v"),
        ("GET", b"a"),
        ("DEL", b"b"),
        ("GET", b"b"),
    ]
    assert at == [0, 0, 1, 2, 3, 1, 4, 5, 3]
    assert [commands[i] for i in range(len(commands))] == commands  # input untouched


def test_single_flight_of_n_identical_gets_is_one_read() -> None:
    wire, at = plan([("GET", b"k")] * 10)
    assert wire == [("GET", b"k")]
    assert at == [0] * 10


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchQueue(0, PATIENCE)
