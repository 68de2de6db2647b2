"""What a bounded read of many keys costs Redis, against the plain MGET it replaced.

A batch of gets may not ask Redis for a reply the worker will not send (issue 12), so
a run of gets past `gets x CACHEGATE_MAX_VALUE_BYTES <= the reply bound` is read by
the bounded script (cachegate/pool/_bounded.py). This prints, per key, on a real
redis-server of its own on 127.0.0.1, interleaved:

- Redis's CPU for one native MGET of the batch (the old fast path, unbounded);
- the shipped bounded script (lengths first, then the values, all fitting);
- the cheapest single-round-trip script there can be: one MGET inside Lua, with no
  bound at all (what any Lua-side check costs at least);
- a pipeline of native STRLENs followed by the MGET (two round trips: the sizes
  with no Lua);

then whether Redis itself bounds a pipeline of MGET chunks whose replies are not read
yet (it does not: its output buffer takes every reply, so chunks that each fit the
bound still need a round trip each).

    python scripts/bounded_read_cost.py --batch 100 --batch 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import hiredis
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # redisprocs
# The script the server ships; a developer tool may read the private module.
from cachegate.pool._bounded import BOUNDED_READ_LUA  # noqa: E402
from redisprocs import start_standalone  # noqa: E402

# hiredis's stub types the command as a one-element tuple; it takes any length.
pack_command = cast("Callable[[tuple[Any, ...]], bytes]", hiredis.pack_command)
MIB = 1024 * 1024
VALUE = b"v" * 32  # what `make bench` stores
MGET_IN_LUA = "return redis.call('MGET', unpack(KEYS))"


def cpu_seconds(pid: int) -> float:
    """The process's time on a CPU, in nanoseconds' precision (scheduler statistics)."""
    with open(f"/proc/{pid}/schedstat") as stats:
        return int(stats.read().split()[0]) / 1e9


def ways(
    conn: redis.Connection, keys: list[str], shas: dict[str, str]
) -> dict[str, Callable[[], object]]:
    n = len(keys)
    mget = pack_command(("MGET", *keys))
    bounded = pack_command(("EVALSHA", shas["bounded"], n, *keys, MIB))
    in_lua = pack_command(("EVALSHA", shas["in_lua"], n, *keys))
    strlens = b"".join(pack_command(("STRLEN", key)) for key in keys)

    def one(packed: bytes, replies: int = 1) -> Callable[[], object]:
        def run() -> object:
            conn.send_packed_command([packed], check_health=False)
            return [conn.read_response() for _ in range(replies)]

        return run

    def sizes_then_mget() -> object:
        one(strlens, n)()
        return one(mget)()

    return {
        "native MGET (unbounded)": one(mget),
        "bounded script (shipped)": one(bounded),
        "MGET inside Lua (no bound)": one(in_lua),
        "STRLEN pipeline, then MGET": sizes_then_mget,
    }


def output_buffer_of_unread_chunks(port: int, client: redis.Redis, chunks: int) -> int:
    """Bytes Redis holds for a connection that pipelined `chunks` MGETs of 4 x 1 MiB
    and read none of the replies yet."""
    client.set("big", b"b" * MIB)
    conn = redis.Connection(port=port, client_name="cachegate-bounded-read-probe")
    conn.connect()
    try:
        conn.send_packed_command(
            [pack_command(("MGET", "big", "big", "big", "big")) * chunks],
            check_health=False,
        )
        held = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until Redis has run every chunk
            for entry in client.client_list():
                if entry.get("name") == "cachegate-bounded-read-probe":
                    held = int(entry["omem"])
            if held >= chunks * 4 * MIB * 0.9:
                break
            time.sleep(0.05)
        return held
    finally:
        conn.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, action="append", help="keys per read (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=300_000, help="keys read per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_standalone(Path(tmp) / "redis")
        try:
            client = redis.Redis(port=server.port)
            shas = {
                "bounded": client.script_load(BOUNDED_READ_LUA),
                "in_lua": client.script_load(MGET_IN_LUA),
            }
            conn = redis.Connection(port=server.port)
            pid = int(client.info("server")["process_id"])
            print("| batch | read | Redis CPU µs per key (median of rounds) | ÷ native MGET |")
            print("|---|---|---|---|")
            for batch in args.batch or [100, 1000]:
                keys = [f"k{i}" for i in range(batch)]
                client.mset(dict.fromkeys(keys, VALUE))
                runs = ways(conn, keys, shas)
                seen: dict[str, list[float]] = {name: [] for name in runs}
                reads = max(1, args.keys // batch)
                for _ in range(args.rounds):
                    for name, run in runs.items():
                        before = cpu_seconds(pid)
                        for _ in range(reads):
                            run()
                        seen[name].append((cpu_seconds(pid) - before) / (reads * batch) * 1e6)
                native = statistics.median(seen["native MGET (unbounded)"])
                for name, figures in seen.items():
                    median = statistics.median(figures)
                    print(f"| {batch} | {name} | {median:.3f} | {median / native:.2f} |")
            conn.disconnect()
            chunks = 8
            held = output_buffer_of_unread_chunks(server.port, client, chunks)
            print(
                f"\n{chunks} pipelined MGETs of 4 x 1 MiB, none read yet: Redis holds "
                f"{held / MIB:.0f} MiB for that connection (each chunk fits 4 MiB; the "
                f"pipeline does not)"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
