"""The supervisor's board: a little shared memory through which admin RPCs reach every worker.

An admin RPC (ForceOpenBreaker, ForceCloseBreaker, ResetBreaker) lands on ONE worker
(the kernel spreads connections), but the breaker it means is every worker's. In worker
mode the supervisor creates this board (an anonymous shared `mmap`) before it forks, so
every worker, and every worker restarted later, sees the same memory:

- word 0, written by the supervisor only: the breaker command in force,
  `generation << 2 | forced` (forced: 0 none, i.e. after a reset; 1 open; 2 closed);
- per worker, a slot of words, each written by one side only:
  pid (supervisor), serving (worker: it answered its start-up), acked generation
  (worker), request `seq << 2 | forced` (worker), answer `seq << 32 | generation`
  (supervisor).

An admin RPC posts a request in its worker's slot; the supervisor (the only writer of
word 0, so two RPCs at once cannot lose one) bumps the generation, writes the command
and answers with its generation; every worker's follower thread applies a new command
to its own breaker and acknowledges it; the RPC waits (bounded) until every live worker
acknowledged, then answers. A worker that starts applies the command in force before it
serves, so a restarted worker comes up forced too. Concurrent contradictory commands: the
last one the supervisor reads wins.

Each word is an aligned 64-bit integer read and written whole (memoryview of format
"Q"): one writer per word, so no lock is needed between processes.

One process (no supervisor) uses `LocalBreakerCommands` (rpc/_commands.py): the
command applies at once.
"""

from __future__ import annotations

import logging
import mmap
import threading
import time
from collections.abc import Callable

from cachegate.core import CircuitBreaker
from cachegate.rpc._commands import Forced, Reach

__all__ = ["FOLLOW_INTERVAL", "Board", "SharedBreakerCommands", "WorkerBoard"]

log = logging.getLogger("cachegate.board")

FOLLOW_INTERVAL = 0.05
"""How often a worker's follower looks for a new command (and the RPC for acks)."""

_WORD = 8
_HEADER = 1
_SLOT = 5
_PID, _SERVING, _ACKED, _REQUEST, _ANSWER = range(_SLOT)


class Board:
    """The shared memory itself; created by the supervisor before the first fork."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._map = mmap.mmap(-1, _WORD * (_HEADER + _SLOT * workers))  # MAP_SHARED
        self._words = memoryview(self._map).cast("Q")
        self._generation = 0
        self._handled = [0] * workers  # request seq last handled, per worker (supervisor)

    def _at(self, worker_id: int, field: int) -> int:
        return _HEADER + _SLOT * worker_id + field

    # --- the supervisor's side -----------------------------------------------------

    def forking(self, worker_id: int) -> None:
        """Before forking `worker_id`: it has neither served nor acked anything yet."""
        self._words[self._at(worker_id, _SERVING)] = 0
        self._words[self._at(worker_id, _ACKED)] = 0

    def started(self, worker_id: int, pid: int) -> None:
        self._words[self._at(worker_id, _PID)] = pid

    def exited(self, worker_id: int) -> bool:
        """`worker_id` is gone (nobody waits for its acks); whether it had served."""
        self._words[self._at(worker_id, _PID)] = 0
        return bool(self._words[self._at(worker_id, _SERVING)])

    def handle_requests(self) -> list[tuple[int, Forced, int]]:
        """Turn the workers' new requests into the command in force: (worker, forced, gen)."""
        done: list[tuple[int, Forced, int]] = []
        for worker_id in range(self.workers):
            request = self._words[self._at(worker_id, _REQUEST)]
            seq = request >> 2
            if seq == self._handled[worker_id]:
                continue
            self._handled[worker_id] = seq
            forced = Forced(request & 3)
            self._generation += 1
            self._words[0] = self._generation << 2 | forced
            self._words[self._at(worker_id, _ANSWER)] = seq << 32 | self._generation
            done.append((worker_id, forced, self._generation))
        return done

    # --- a worker's side -----------------------------------------------------------

    def worker(self, worker_id: int) -> WorkerBoard:
        return WorkerBoard(self, worker_id)


class WorkerBoard:
    """One worker's view of the board (its own slot, and everyone's pid and ack)."""

    def __init__(self, board: Board, worker_id: int) -> None:
        self._board = board
        self._words = board._words
        self.worker_id = worker_id
        self._lock = threading.Lock()  # requests of concurrent admin RPCs, one at a time

    def _at(self, worker_id: int, field: int) -> int:
        return _HEADER + _SLOT * worker_id + field

    def in_force(self) -> tuple[int, Forced]:
        word = self._words[0]
        return word >> 2, Forced(word & 3)

    def ack(self, generation: int) -> None:
        self._words[self._at(self.worker_id, _ACKED)] = generation

    def serving(self) -> None:
        self._words[self._at(self.worker_id, _SERVING)] = 1

    def request(self, forced: Forced) -> int:
        """Post a request; its sequence number (see `answer`)."""
        with self._lock:
            at = self._at(self.worker_id, _REQUEST)
            seq = (self._words[at] >> 2) + 1
            self._words[at] = seq << 2 | forced
            return seq

    def answer(self, seq: int) -> int | None:
        """The generation the supervisor gave request `seq`, once it has."""
        word = self._words[self._at(self.worker_id, _ANSWER)]
        return word & 0xFFFFFFFF if word >> 32 == seq else None

    def pending(self, generation: int) -> tuple[int, ...]:
        """Live workers that have not acknowledged `generation` yet."""
        return tuple(
            worker_id
            for worker_id in range(self._board.workers)
            if self._words[self._at(worker_id, _PID)] != 0
            and self._words[self._at(worker_id, _ACKED)] < generation
        )

    @property
    def workers(self) -> int:
        return self._board.workers


class SharedBreakerCommands:
    """Worker mode: commands go through the board; a follower thread applies them here."""

    def __init__(
        self,
        board: WorkerBoard,
        breaker: CircuitBreaker,
        *,
        interval: float = FOLLOW_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._board = board
        self._breaker = breaker
        self._interval = interval
        self._clock = clock
        self._applied = 0
        self._applying = threading.Lock()  # the follower and an admin RPC may both catch up
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="cachegate-board", daemon=True)

    def catch_up(self, *, starting: bool = False) -> None:
        """Apply the command in force (if newer than the last applied) and acknowledge it.

        `starting`: this worker's breaker is new, so a released command (a reset) has
        nothing to undo; only a forced state is applied.
        """
        with self._applying:
            generation, forced = self._board.in_force()
            if generation == self._applied:
                return
            if not (starting and forced is Forced.NONE):
                forced.apply(self._breaker)
                log.warning(
                    "breaker command applied",
                    extra={"forced": forced.name.lower(), "generation": generation},
                )
            self._applied = generation
            self._board.ack(generation)

    def start(self) -> None:
        """Before serving: apply what is in force, then follow new commands."""
        self.catch_up(starting=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        while not self._stop.wait(self._interval):
            self.catch_up()

    def command(self, forced: Forced, timeout: float) -> Reach:
        deadline = self._clock() + timeout
        seq = self._board.request(forced)
        generation: int | None = None
        while generation is None:
            generation = self._board.answer(seq)
            if generation is None:
                if self._clock() >= deadline:
                    # The supervisor never took it (it is gone): nothing applied anywhere.
                    return Reach(0, self._board.workers, tuple(range(self._board.workers)))
                time.sleep(self._interval)
        self.catch_up()  # our own worker at once, without waiting for the follower
        pending = self._board.pending(generation)
        while pending and self._clock() < deadline:
            time.sleep(self._interval)
            pending = self._board.pending(generation)
        return Reach(generation, self._board.workers, pending)
