"""Slots, the pool's connection gate: first come first served, with a direct hand-off.

Real threads; every expectation is an order of events or a count, never a duration
(the only timed waits are a waiter's own short timeout, which only has to pass).
`Slots(n, overtake_share=0.0)` hands every freed slot over as soon as someone waits;
the grace before that (OVERTAKE_SHARE of a waiter's timeout) is driven by a fake clock.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cachegate.pool._slots import OVERTAKE_SHARE, Slots

WAIT = 5.0  # seconds any single expectation may take before the test fails


def handing_over(size: int) -> Slots:
    """A gate that reserves every freed slot for the longest waiter at once (no grace)."""
    return Slots(size, overtake_share=0.0)


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


class Waiter:
    """A thread that queues for a slot, records when it got one, and holds it until told."""

    def __init__(self, slots: Slots, name: str, got: list[str], timeout: float = WAIT) -> None:
        self.slots, self.name, self.got = slots, name, got
        self.timeout = timeout
        self.result: bool | None = None
        self.let_go = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        self.result = self.slots.acquire(self.timeout)
        if self.result:
            self.got.append(self.name)
            self.let_go.wait(WAIT)
            self.slots.release()

    def queue(self) -> Waiter:
        """Start and return once this waiter is queued behind the ones before it."""
        before = self.slots.pending
        self.thread.start()
        eventually(lambda: self.slots.pending == before + 1, f"{self.name} to queue")
        return self

    def finish(self) -> bool | None:
        self.let_go.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), f"{self.name} is still waiting"
        return self.result


def test_uncontended_slots_are_taken_and_given_back() -> None:
    slots = Slots(2)
    assert slots.acquire(0)
    assert slots.acquire(0)
    assert slots.held == 2
    assert not slots.acquire(0)  # full, and no wait asked for
    slots.release()
    slots.release()
    assert (slots.held, slots.pending, slots.wait_seconds_total) == (0, 0, 0.0)
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        slots.release()


def test_a_released_slot_is_reserved_for_the_waiter_not_taken_back() -> None:
    slots = handing_over(1)
    got: list[str] = []
    assert slots.acquire(0)
    waiter = Waiter(slots, "waiter", got).queue()
    slots.release()
    # The releasing thread calls again at once, before the woken waiter had a chance
    # to run: the slot is the waiter's already.
    assert not slots.acquire(0)
    assert waiter.finish() is True
    assert got == ["waiter"]
    assert (slots.held, slots.pending) == (0, 0)


def test_within_its_grace_a_waiter_may_be_overtaken_and_after_it_not() -> None:
    now = [0.0]
    slots = Slots(1, overtake_share=0.5, clock=lambda: now[0])
    got: list[str] = []
    assert slots.acquire(0)
    waiter = Waiter(slots, "waiter", got).queue()  # its grace: half its 5 s, on the fake clock
    slots.release()  # within the grace: back to the tokens, and the waiter is woken for it
    overtaken = slots.acquire(0)  # the releasing thread may come first
    if overtaken:
        assert slots.pending == 1  # still queued, first in line
        now[0] = WAIT * 0.5  # its grace is over
        slots.release()
        assert not slots.acquire(0)  # reserved for it now
    assert waiter.finish() is True
    assert got == ["waiter"]
    assert (slots.held, slots.pending) == (0, 0)
    print(f"overtaken within the grace: {overtaken}")


def test_once_its_grace_is_over_every_freed_slot_is_reserved_for_the_waiter() -> None:
    now = [0.0]
    slots = Slots(2, overtake_share=0.5, clock=lambda: now[0])
    got: list[str] = []
    assert slots.acquire(0)
    assert slots.acquire(0)
    first = Waiter(slots, "first", got).queue()
    now[0] = 1.0
    second = Waiter(slots, "second", got).queue()  # grace until 3.5
    now[0] = 2.5  # first's grace is over, second's is not
    slots.release()
    assert not slots.acquire(0)  # handed to `first`
    eventually(lambda: got == ["first"], "first to get the slot")
    slots.release()  # second is within its grace: back to the tokens, and it is woken for it
    assert second.finish() is True
    assert first.finish() is True
    assert got == ["first", "second"]
    assert (slots.held, slots.pending) == (0, 0)


@pytest.mark.parametrize("share", [0.0, OVERTAKE_SHARE])
def test_waiters_get_slots_in_the_order_they_came(share: float) -> None:
    slots = Slots(1, overtake_share=share)
    got: list[str] = []
    assert slots.acquire(0)
    waiters = [Waiter(slots, f"w{n}", got).queue() for n in range(6)]
    slots.release()
    for waiter in waiters:
        assert waiter.finish() is True
    assert got == [w.name for w in waiters]
    assert (slots.held, slots.pending) == (0, 0)


def test_a_waiter_that_times_out_leaves_the_queue_and_the_next_one_is_served() -> None:
    slots = Slots(1)
    got: list[str] = []
    assert slots.acquire(0)
    quitter = Waiter(slots, "quitter", got, timeout=0.01).queue()
    quitter.thread.join(WAIT)
    assert quitter.result is False
    assert slots.pending == 0
    patient = Waiter(slots, "patient", got).queue()
    slots.release()
    assert patient.finish() is True
    assert got == ["patient"]  # the slot never went to the caller that gave up
    assert (slots.held, slots.pending) == (0, 0)
    assert slots.wait_seconds_total > 0


def test_a_waiter_in_the_middle_that_times_out_is_skipped() -> None:
    slots = Slots(1)
    got: list[str] = []
    assert slots.acquire(0)
    first = Waiter(slots, "first", got).queue()
    quitter = Waiter(slots, "quitter", got, timeout=0.01)
    quitter.thread.start()
    quitter.thread.join(WAIT)
    assert quitter.result is False
    last = Waiter(slots, "last", got).queue()
    assert slots.pending == 2
    slots.release()
    assert first.finish() is True
    assert last.finish() is True
    assert got == ["first", "last"]
    assert (slots.held, slots.pending) == (0, 0)


def test_a_timed_out_waiter_leaves_no_slot_behind_when_nobody_else_waits() -> None:
    slots = Slots(1)
    assert slots.acquire(0)
    assert not slots.acquire(0.01)
    slots.release()
    assert (slots.held, slots.pending) == (0, 0)
    assert slots.acquire(0)  # free, not handed to the caller that gave up
    slots.release()


class WaitInterruptedError(Exception):
    pass


@pytest.fixture
def interrupt_main() -> Iterator[list[Callable[[], None]]]:
    """SIGUSR1 raises WaitInterruptedError in the main thread, after running the actions listed."""
    actions: list[Callable[[], None]] = []

    def handler(signum: int, frame: object) -> None:
        for action in actions:
            action()
        raise WaitInterruptedError

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        yield actions
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _signal_main_once_queued(slots: Slots, queued: int) -> threading.Thread:
    main = threading.main_thread().ident
    assert main is not None

    def send() -> None:
        eventually(lambda: slots.pending == queued, f"{queued} callers to queue")
        signal.pthread_kill(main, signal.SIGUSR1)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


def test_an_interrupted_waiter_leaves_the_queue(
    interrupt_main: list[Callable[[], None]],
) -> None:
    slots = Slots(1)
    got: list[str] = []
    assert slots.acquire(0)
    sender = _signal_main_once_queued(slots, 1)
    with pytest.raises(WaitInterruptedError):
        slots.acquire(WAIT)
    sender.join(WAIT)
    assert slots.pending == 0
    patient = Waiter(slots, "patient", got).queue()
    slots.release()
    assert patient.finish() is True
    assert got == ["patient"]
    assert (slots.held, slots.pending) == (0, 0)


def test_a_slot_handed_to_a_waiter_as_it_is_interrupted_goes_to_the_next(
    interrupt_main: list[Callable[[], None]],
) -> None:
    slots = handing_over(1)
    got: list[str] = []
    assert slots.acquire(0)
    # The main thread queues first; `next` queues behind it.
    nxt = Waiter(slots, "next", got)

    def queue_behind_main() -> None:
        eventually(lambda: slots.pending == 1, "main to queue")
        nxt.thread.start()

    starter = threading.Thread(target=queue_behind_main, daemon=True)
    starter.start()
    sender = _signal_main_once_queued(slots, 2)
    # The slot is handed to the main thread's wait, then the wait is interrupted.
    interrupt_main.append(slots.release)
    with pytest.raises(WaitInterruptedError):
        slots.acquire(WAIT)
    sender.join(WAIT)
    starter.join(WAIT)
    assert nxt.finish() is True
    assert got == ["next"]
    assert (slots.held, slots.pending) == (0, 0)


@pytest.mark.parametrize("share", [0.0, OVERTAKE_SHARE])
def test_many_callers_with_timeouts_never_exceed_the_size_nor_lose_a_slot(share: float) -> None:
    size, callers, rounds = 3, 12, 300
    slots = Slots(size, overtake_share=share)
    lock = threading.Lock()
    holding = [0]
    peak = [0]
    served = [0]
    refused = [0]

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(rounds):
            if not slots.acquire(rng.choice((0.0, 0.0005, 0.002, WAIT))):
                with lock:
                    refused[0] += 1
                continue
            with lock:
                holding[0] += 1
                peak[0] = max(peak[0], holding[0])
                served[0] += 1
            if rng.random() < 0.3:
                time.sleep(0)  # let others run while the slot is held
            with lock:
                holding[0] -= 1
            slots.release()

    threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 6)
    assert not any(thread.is_alive() for thread in threads)
    assert served[0] + refused[0] == callers * rounds
    assert served[0] > 0
    assert peak[0] <= size
    assert (slots.held, slots.pending) == (0, 0)
    for _ in range(size):  # every slot is free again
        assert slots.acquire(0)
    assert not slots.acquire(0)
