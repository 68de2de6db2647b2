"""`make soak`: ten minutes of mixed load; server memory and Redis connections, every second.

Draws both series in docs/soak.png, writes the samples to docs/soak.json, and
fails when the server's resident memory grew more than 10% from the first
minute (after warm-up) to the last, or Redis ever saw more connections than
REDIS_MAX_CONNECTIONS. Everything on 127.0.0.1; the load stops by itself.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import children, server_env  # noqa: E402
from cachegate.client import (  # noqa: E402
    CacheClient,
    CacheClientError,
    Delete,
    Get,
    Operation,
    SetEx,
)
from redisprocs import free_port, start_standalone  # noqa: E402

SERVER = str(Path(sys.executable).parent / "cachegate-server")
MAX_CONNECTIONS = 8


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def load(target: str, stop: threading.Event, seed: int, counts: dict[str, int]) -> None:
    rng = random.Random(seed)
    client = CacheClient(target, timeout=2, options=[("grpc.use_local_subchannel_pool", 1)])
    while not stop.is_set():
        key = f"soak:{rng.randrange(5000)}"
        try:
            roll = rng.random()
            if roll < 0.6:
                client.get(key)
            elif roll < 0.85:
                client.set_ex(key, rng.randbytes(rng.randrange(16, 2048)), rng.randrange(5, 120))
            elif roll < 0.95:
                ops: list[Operation] = [Get(f"soak:{rng.randrange(5000)}") for _ in range(50)]
                ops += [SetEx(f"soak:{rng.randrange(5000)}", b"x" * 64, 30) for _ in range(10)]
                client.pipeline(ops)
            else:
                client.pipeline([Delete(key), Get(key)])
            counts["ok"] += 1
        except CacheClientError:
            counts["errors"] += 1
    client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    seconds = max(60.0, args.minutes * 60)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory(prefix="cachegate-soak-")
    redis_proc = start_standalone(Path(scratch.name) / "redis")
    port = free_port()
    env = server_env(redis_proc.url, port, REDIS_MAX_CONNECTIONS=str(MAX_CONNECTIONS))
    server = subprocess.Popen([SERVER], env=env)
    samples: list[dict[str, float]] = []
    counts = {"ok": 0, "errors": 0}
    stop = threading.Event()
    try:
        target = f"127.0.0.1:{port}"
        probe = CacheClient(target, retries=False, timeout=1)
        for _ in range(100):
            try:
                if probe.health() == "SERVING":
                    break
            except CacheClientError:
                pass
            time.sleep(0.2)
        threads = [
            threading.Thread(target=load, args=(target, stop, n, counts), daemon=True)
            for n in range(args.threads)
        ]
        for t in threads:
            t.start()
        admin = redis_proc.client()
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            pids = [server.pid, *children(server.pid)]
            clients = int(admin.info("clients")["connected_clients"]) - 1  # not this one
            samples.append(
                {
                    "t": round(elapsed, 1),
                    "rss_mb": rss_bytes(pids) / 2**20,
                    "redis_clients": clients,
                    "ok": counts["ok"],
                    "errors": counts["errors"],
                }
            )
            line = (
                f"\r{elapsed:6.0f}s  rss {samples[-1]['rss_mb']:7.1f} MB  "
                f"redis clients {clients:3}  calls {counts['ok']:>9}  errors {counts['errors']}"
            )
            if sys.stdout.isatty():
                print(line, end="", flush=True)
            elif len(samples) % 30 == 1:  # a log, not a terminal: a line every 30 s
                print(line.lstrip("\r"), flush=True)
            time.sleep(1.0)
        print()
        stop.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        stop.set()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        redis_proc.stop()
        scratch.cleanup()

    warm = [s for s in samples if 30 <= s["t"] < 90]
    last = [s for s in samples if s["t"] >= samples[-1]["t"] - 60]
    first_rss = statistics.median(s["rss_mb"] for s in warm)
    last_rss = statistics.median(s["rss_mb"] for s in last)
    growth = (last_rss - first_rss) / first_rss
    peak_clients = max(s["redis_clients"] for s in samples)
    summary = {
        "seconds": seconds,
        "calls": counts["ok"],
        "errors": counts["errors"],
        "rss_first_minute_mb": round(first_rss, 1),
        "rss_last_minute_mb": round(last_rss, 1),
        "rss_growth": round(growth, 4),
        "redis_clients_peak": peak_clients,
        "max_connections": MAX_CONNECTIONS,
    }
    (out / "soak.json").write_text(json.dumps({"summary": summary, "samples": samples}) + "\n")
    _plot(samples, out / "soak.png", summary)
    print(json.dumps(summary, indent=2))
    ok = growth <= 0.10 and peak_clients <= MAX_CONNECTIONS and counts["errors"] == 0
    print("soak:", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


def _plot(samples: list[dict[str, float]], path: Path, summary: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [s["t"] / 60 for s in samples]
    figure, (rss, conns) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    rss.plot(times, [s["rss_mb"] for s in samples], color="tab:blue")
    rss.set_ylabel("server RSS (MB)")
    rss.set_title(
        f"cachegate soak: {summary['calls']:,} calls, {summary['errors']} errors, "
        f"RSS growth {summary['rss_growth']:+.1%}"
    )
    rss.set_ylim(bottom=0)
    conns.plot(times, [s["redis_clients"] for s in samples], color="tab:orange")
    conns.axhline(MAX_CONNECTIONS, color="grey", linestyle="--", label="REDIS_MAX_CONNECTIONS")
    conns.set_ylabel("Redis connections")
    conns.set_xlabel("minutes")
    conns.set_ylim(bottom=0, top=MAX_CONNECTIONS + 2)
    conns.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
