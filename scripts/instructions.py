"""Instructions per unary Get, counted by callgrind: a figure that noise does not move.

On a shared 2-vCPU VM a CPU-time A/B of a few per cent drowns in the neighbours'
noise (`make bench` runs move by +-10%). callgrind counts the instructions the
server executes for a fixed number of calls instead, repeatable to ~0.1%: run this
before and after a change to the hot path. Kernel time (syscalls, context switches)
is not counted, so it complements `make bench`, never replaces it.

    .venv/bin/python scripts/instructions.py            # 3,000 Gets, one server process
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # redisprocs: real redis-server processes
sys.path.insert(0, str(ROOT / "scripts"))

import grpc  # noqa: E402

from bench import SERVER, VALUE, grpc_body, server_env  # noqa: E402
from cachegate.v1 import cache_pb2 as pb  # noqa: E402
from redisprocs import free_port, start_standalone  # noqa: E402


def h2load(port: int, body: Path, calls: int) -> None:
    subprocess.run(
        [
            "h2load", "-n", str(calls), "-c", "8", "-m", "1", "-t", "1", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://127.0.0.1:{port}/cachegate.v1.CacheService/Get",
        ],
        capture_output=True, timeout=600, check=True,
    )  # fmt: skip


def wait_ready(port: int, deadline: float) -> None:
    while True:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = channel.unary_unary(
                    "/cachegate.v1.CacheService/Stats",
                    request_serializer=None,
                    response_deserializer=None,
                )
                stub(pb.StatsRequest().SerializeToString(), timeout=5)
                return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise RuntimeError("cachegate-server under callgrind did not start") from None
            time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load", "redis-server"):
        if shutil.which(tool) is None:
            print(f"instructions: {tool} is missing (Debian: valgrind, nghttp2-client)")
            return 1
    with tempfile.TemporaryDirectory(prefix="cachegate-callgrind-") as scratch:
        folder = Path(scratch)
        redis_proc = start_standalone(folder / "redis")
        redis_proc.client().set("k7", VALUE)
        body = folder / "get.bin"
        body.write_bytes(grpc_body(pb.GetRequest(key="k7")))
        port = free_port()
        # A fixed hash seed: dict and set layouts (and so their probing) move the count
        # by ~1% from one process to the next otherwise.
        env = {**server_env(redis_proc.url, port), "PYTHONHASHSEED": "0"}
        out = folder / "callgrind.out"
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "-q",
             sys.executable, SERVER],
            env=env, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_ready(port, time.monotonic() + 180)
            h2load(port, body, 500)  # warm: threads started, connections made
            subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True)
            h2load(port, body, args.calls)
            subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True)
        finally:
            server.terminate()
            server.wait(timeout=120)
            redis_proc.stop()
        dumps = sorted(folder.glob("callgrind.out.*"))  # the -d dump: just the measured calls
        if not dumps:
            print("instructions: callgrind wrote no dump")
            return 1
        totals = re.search(r"^totals:\s+(\d+)", dumps[0].read_text(), re.MULTILINE)
        if totals is None:
            print("instructions: no totals in the callgrind dump")
            return 1
        print(f"instructions per unary Get: {int(totals.group(1)) / args.calls:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
