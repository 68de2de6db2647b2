"""What reading a value with its TTL costs Redis, three ways: GET and PTTL pipelined
(not atomic), GET and PTTL in MULTI/EXEC, and one EVALSHA doing both.

A read with a stale-if-error allowance needs the value and its TTL from the same
instant; this measures what each atomic way adds over the plain pipeline (Redis
`INFO commandstats` time and Redis process CPU per read, client wall time per round
trip), interleaved, on a real redis-server of its own on 127.0.0.1.

    python scripts/stale_read_cost.py --reads 40000 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hiredis
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # redisprocs
from redisprocs import start_standalone  # noqa: E402

SCRIPT = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"
OWN = ("cmdstat_config|resetstat", "cmdstat_info", "cmdstat_config")


def cpu_seconds(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_standalone(Path(tmp) / "redis")
        try:
            client = redis.Redis(port=server.port)
            client.set("k", b"x" * 100, ex=600)
            sha = client.script_load(SCRIPT)
            ways: dict[str, list[tuple[Any, ...]]] = {
                "GET, PTTL pipelined": [("GET", "k"), ("PTTL", "k")],
                "MULTI/EXEC": [("MULTI",), ("GET", "k"), ("PTTL", "k"), ("EXEC",)],
                "EVALSHA": [("EVALSHA", sha, 1, "k")],
            }
            conn = redis.Connection(port=server.port)
            print("| way | round | Redis commandstats µs/read | Redis CPU µs/read | wall µs/read |")
            print("|---|---|---|---|---|")
            for round_number in range(args.rounds):
                for name, commands in ways.items():
                    packed = b"".join(hiredis.pack_command(c) for c in commands)
                    client.config_resetstat()
                    cpu = cpu_seconds(client)
                    start = time.perf_counter()
                    for _ in range(args.reads):
                        conn.send_packed_command([packed], check_health=False)
                        for _ in commands:
                            conn.read_response()
                    wall = time.perf_counter() - start
                    cpu = cpu_seconds(client) - cpu
                    stats = client.info("commandstats")
                    # EXEC's and EVALSHA's time include the GET and PTTL they ran.
                    outer = [k for k in stats if k in ("cmdstat_exec", "cmdstat_evalsha")]
                    own = [k for k in stats if k not in OWN and (not outer or k in outer)]
                    usec = sum(float(stats[k]["usec"]) for k in own) + (
                        float(stats["cmdstat_multi"]["usec"]) if "cmdstat_multi" in stats else 0
                    )
                    per = 1e6 / args.reads
                    print(
                        f"| {name} | {round_number} | {usec / args.reads:.2f} | "
                        f"{cpu * per:.2f} | {wall * per:.1f} |"
                    )
            conn.disconnect()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
