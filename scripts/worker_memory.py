"""The memory a 2-worker `cachegate-server` takes, as its cgroup counts it: at rest, and
at its peak under Pipeline reads of 1 MiB values (bounded replies, the budget in use).

The figures behind WORKER_BASE_BYTES (runtime/_memory.py; docs/performance.md, "Memory
per worker"). Needs root and a cgroup v1 `memory` hierarchy: the server runs in a
cgroup of its own, made here and removed after, with `--limit-mib` as its limit (the
budget and stale copy then follow it).

    .venv/bin/python scripts/worker_memory.py [--limit-mib 448]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cachegate.v1 import cache_pb2 as pb
from cachegate.v1 import cache_pb2_grpc
from redisprocs import free_port, start_standalone

MIB = 1 << 20
SERVER = str(Path(sys.executable).parent / "cachegate-server")
CHANNELS, ROUNDS, GETS = 4, 20, 100  # bounded: 4 x 20 x 3 batches of 100 gets


def rss_mb(group: Path) -> list[int]:
    found = []
    for pid in (group / "cgroup.procs").read_text().split():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                found.append(int(line.split()[1]) // 1024)
    return sorted(found)


def mib(group: Path, name: str) -> float:
    return int((group / name).read_text()) / MIB


def load(port: int) -> None:
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 * MIB)]
    channels = [
        grpc.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(CHANNELS)
    ]
    stubs = [cache_pb2_grpc.CacheServiceStub(channel) for channel in channels]
    grpc.channel_ready_future(channels[0]).result(timeout=20)
    for i, stub in enumerate(stubs):
        stub.SetEx(pb.SetExRequest(key=f"big{i}", value=b"x" * MIB, ttl_seconds=600), timeout=10)

    def reader(stub: cache_pb2_grpc.CacheServiceStub, i: int) -> None:
        get = pb.Operation(get=pb.GetOperation(key=f"big{i}"))
        batch = pb.PipelineRequest(operations=[get] * GETS)
        for _ in range(ROUNDS):
            for _ in stub.Pipeline(iter([batch] * 3), timeout=30):
                pass

    threads = [threading.Thread(target=reader, args=(s, i)) for i, s in enumerate(stubs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for channel in channels:
        channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-mib", type=int, default=0, help="the cgroup's limit (0: none)")
    args = parser.parse_args()
    group = Path(f"/sys/fs/cgroup/memory/cachegate-measure-{os.getpid()}")
    group.mkdir()
    try:
        if args.limit_mib:
            (group / "memory.limit_in_bytes").write_text(str(args.limit_mib * MIB))
        with tempfile.TemporaryDirectory() as tmp:
            redis = start_standalone(Path(tmp))
            port = free_port()
            env = {
                **os.environ,
                "CACHEGATE_BACKEND": "redis",
                "REDIS_URL": redis.url,
                "CACHEGATE_WORKERS": "2",
                "CACHEGATE_LISTEN": f"127.0.0.1:{port}",
                "CACHEGATE_HTTP_LISTEN": "off",
            }
            enter = (
                f"import os; open({str(group / 'cgroup.procs')!r}, 'w').write(str(os.getpid())); "
                f"os.execv({SERVER!r}, [{SERVER!r}])"
            )
            server = subprocess.Popen([sys.executable, "-c", enter], env=env)
            try:
                time.sleep(4)  # the workers start and settle
                print(f"at rest: cgroup {mib(group, 'memory.usage_in_bytes'):.0f} MiB, "
                      f"RSS MB {rss_mb(group)}")  # fmt: skip
                load(port)
                print(f"after the load: cgroup {mib(group, 'memory.usage_in_bytes'):.0f} MiB, "
                      f"peak {mib(group, 'memory.max_usage_in_bytes'):.0f} MiB, "
                      f"RSS MB {rss_mb(group)}")  # fmt: skip
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(30)
                redis.stop()
    finally:
        group.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
