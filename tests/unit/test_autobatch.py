"""The AutoBatcher's threads (pool/_autobatch.py) over plain functions standing for the
pool's two paths: who sends what, every caller's own reply or error, no caller left
waiting. Redis itself is in tests/integration/test_auto_batch.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cachegate.core import Deadline
from cachegate.pool import CommandError, RedisTimeoutError, RedisUnavailableError
from cachegate.pool._autobatch import AutoBatcher
from cachegate.pool._batchqueue import Command

WAIT = 5.0  # a bound on every wait here; the tests take milliseconds


class Paths:
    """The pool's two paths: `alone` blocks until `release` while `hold` is set."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.alone_calls: list[Command] = []
        self.shared_calls: list[list[Command]] = []
        self.shared_error: BaseException | None = None

    def alone(self, command: Command, deadline: Deadline) -> Any:
        self.alone_calls.append(command)
        if self.hold.is_set():
            self.entered.set()
            assert self.release.wait(WAIT)
        return ("alone", command[1])

    def shared(self, commands: list[Command], deadline: Deadline) -> list[Any]:
        self.shared_calls.append(list(commands))
        if self.shared_error is not None:
            raise self.shared_error
        return [
            CommandError("WRONGTYPE") if command[1] == "bad" else ("shared", command[1])
            for command in commands
        ]


def run(batcher: AutoBatcher, key: str, timeout: float | None, out: dict[str, Any]) -> None:
    try:
        out[key] = batcher.call(("GET", key), Deadline.after(timeout))
    except Exception as exc:
        out[key] = exc


def queue_behind_a_held_call(
    batcher: AutoBatcher, paths: Paths, keys: list[tuple[str, float | None]]
) -> tuple[dict[str, Any], list[threading.Thread]]:
    out: dict[str, Any] = {}
    paths.hold.set()
    threads = [threading.Thread(target=run, args=(batcher, "first", None, out))]
    threads[0].start()
    assert paths.entered.wait(WAIT)
    paths.hold.clear()
    for key, timeout in keys:
        threads.append(threading.Thread(target=run, args=(batcher, key, timeout, out)))
        threads[-1].start()
    deadline = time.monotonic() + WAIT
    while batcher.queued < len(keys) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert batcher.queued == len(keys)
    return out, threads


def finish(paths: Paths, threads: list[threading.Thread]) -> None:
    paths.release.set()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)


def test_a_call_alone_takes_the_single_path_at_once() -> None:
    paths = Paths()
    batcher = AutoBatcher(paths.alone, paths.shared, patience=WAIT)
    assert batcher.call(("GET", "k"), Deadline.after(None)) == ("alone", "k")
    assert batcher.call(("GET", "j"), Deadline.after(1.0)) == ("alone", "j")
    assert paths.shared_calls == []
    assert not batcher.busy


def test_calls_queued_behind_a_round_trip_go_as_one_each_with_its_own_reply() -> None:
    paths = Paths()
    batcher = AutoBatcher(paths.alone, paths.shared, patience=WAIT)
    out, threads = queue_behind_a_held_call(batcher, paths, [("a", None), ("bad", None), ("c", 9)])
    finish(paths, threads)
    assert out["first"] == ("alone", "first")
    assert len(paths.shared_calls) == 1
    assert sorted(command[1] for command in paths.shared_calls[0]) == ["a", "bad", "c"]
    assert out["a"] == ("shared", "a")
    assert out["c"] == ("shared", "c")
    assert isinstance(out["bad"], CommandError)  # only its own caller's error
    assert not batcher.busy


def test_a_failed_round_trip_fails_every_caller_with_their_own_copy() -> None:
    paths = Paths()
    paths.shared_error = RedisUnavailableError("Redis is unavailable: refused")
    batcher = AutoBatcher(paths.alone, paths.shared, patience=WAIT)
    out, threads = queue_behind_a_held_call(batcher, paths, [("a", None), ("b", 9), ("c", 9)])
    finish(paths, threads)
    errors = [out[key] for key in "abc"]
    assert all(isinstance(error, RedisUnavailableError) for error in errors)
    assert len({id(error) for error in errors}) == 3  # each raised its own
    assert {str(error) for error in errors} == {"Redis is unavailable: refused"}


def test_a_queued_deadline_ends_that_wait_only_and_is_never_sent() -> None:
    paths = Paths()
    batcher = AutoBatcher(paths.alone, paths.shared, patience=WAIT)
    out, threads = queue_behind_a_held_call(batcher, paths, [("short", 0.05), ("long", 9)])
    threads[1].join(WAIT)
    assert isinstance(out["short"], RedisTimeoutError)
    assert batcher.queued == 1
    finish(paths, threads)
    assert out["long"] == ("shared", "long")
    assert paths.shared_calls == [[("GET", "long")]]  # the expired call was never sent


def test_past_its_patience_a_queued_call_goes_alone() -> None:
    paths = Paths()
    batcher = AutoBatcher(paths.alone, paths.shared, patience=0.05)
    out, threads = queue_behind_a_held_call(batcher, paths, [("late", None)])
    threads[1].join(WAIT)
    assert out["late"] == ("alone", "late")  # while the first call still hangs
    assert batcher.queued == 0
    finish(paths, threads)
    assert paths.shared_calls == []


def test_an_interrupted_leader_leaves_no_caller_waiting() -> None:
    paths = Paths()
    paths.shared_error = KeyboardInterrupt()
    batcher = AutoBatcher(paths.alone, paths.shared, patience=WAIT)
    out: dict[str, Any] = {}

    def run_any(key: str) -> None:
        try:
            out[key] = batcher.call(("GET", key), Deadline.after(None))
        except BaseException as exc:  # the leader's KeyboardInterrupt lands here
            out[key] = exc

    paths.hold.set()
    threads = [threading.Thread(target=run_any, args=("first",))]
    threads[0].start()
    assert paths.entered.wait(WAIT)
    for key in ("a", "b"):
        threads.append(threading.Thread(target=run_any, args=(key,)))
        threads[-1].start()
    deadline = time.monotonic() + WAIT
    while batcher.queued < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    finish(paths, threads)
    kinds = sorted(type(out[key]).__name__ for key in ("a", "b"))
    assert kinds == ["KeyboardInterrupt", "RedisUnavailableError"]  # leader, the other
    assert not batcher.busy


@pytest.mark.parametrize("callers", [2, 16])
def test_many_rounds_of_concurrent_callers_all_get_their_own_reply(callers: int) -> None:
    lock = threading.Lock()
    sent: list[int] = []

    def alone(command: Command, deadline: Deadline) -> Any:
        with lock:
            sent.append(1)
        time.sleep(0.0005)
        return command[1]

    def shared(commands: list[Command], deadline: Deadline) -> list[Any]:
        with lock:
            sent.append(len(commands))
        time.sleep(0.0005)
        return [command[1] for command in commands]

    batcher = AutoBatcher(alone, shared, patience=WAIT)
    wrong: list[Any] = []

    def work(n: int) -> None:
        for i in range(50):
            key = f"{n}:{i}"
            reply = batcher.call(("GET", key), Deadline.after(WAIT))
            if reply != key:
                wrong.append((key, reply))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 4)
    assert not any(thread.is_alive() for thread in threads)
    assert wrong == []
    assert sum(sent) == callers * 50
    assert not batcher.busy
    assert batcher.queued == 0
