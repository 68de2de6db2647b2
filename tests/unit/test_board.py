"""The supervisor's board, both sides in one process (no fork, no clock)."""

from __future__ import annotations

from cachegate.core import CircuitBreaker, CircuitState
from cachegate.rpc import Forced
from cachegate.runtime._board import Board, SharedBreakerCommands


def test_a_request_becomes_the_command_in_force_and_waits_for_every_live_ack() -> None:
    board = Board(workers=3)
    for worker_id, pid in ((0, 100), (1, 101), (2, 102)):
        board.forking(worker_id)
        board.started(worker_id, pid)
    one, two = board.worker(1), board.worker(2)
    seq = one.request(Forced.OPEN)
    assert one.answer(seq) is None  # the supervisor has not read it yet
    assert board.handle_requests() == [(1, Forced.OPEN, 1)]
    assert board.handle_requests() == []  # read once
    assert one.answer(seq) == 1
    assert one.in_force() == (1, Forced.OPEN)
    assert one.pending(1) == (0, 1, 2)
    one.ack(1)
    two.ack(1)
    assert one.pending(1) == (0,)
    assert board.exited(0) is False  # gone before it served: nobody waits for it
    assert one.pending(1) == ()


def test_the_supervisor_is_the_only_writer_so_two_requests_are_both_counted() -> None:
    board = Board(workers=2)
    first, second = board.worker(0), board.worker(1)
    first.request(Forced.OPEN)
    second.request(Forced.CLOSED)
    assert board.handle_requests() == [(0, Forced.OPEN, 1), (1, Forced.CLOSED, 2)]
    assert first.in_force() == (2, Forced.CLOSED)  # the last one read wins


def test_a_worker_applies_what_is_in_force_when_it_starts_and_after() -> None:
    board = Board(workers=2)
    board.worker(0).request(Forced.OPEN)
    board.handle_requests()
    breaker = CircuitBreaker()
    commands = SharedBreakerCommands(board.worker(1), breaker)
    commands.catch_up(starting=True)  # what start() does before serving
    assert breaker.snapshot().forced
    assert breaker.state is CircuitState.OPEN
    board.worker(0).request(Forced.NONE)
    board.handle_requests()
    commands.catch_up()
    assert (breaker.state, breaker.snapshot().forced) == (CircuitState.CLOSED, False)
    assert board.worker(0).pending(2) == ()  # worker 1 acked (and 0 has no pid)


def test_a_new_worker_after_a_reset_keeps_its_fresh_breaker() -> None:
    board = Board(workers=1)
    board.worker(0).request(Forced.NONE)
    board.handle_requests()
    breaker = CircuitBreaker()
    breaker.force_closed()  # stands for any state a reset at start would wrongly undo
    SharedBreakerCommands(board.worker(0), breaker).catch_up(starting=True)
    assert breaker.snapshot().forced
