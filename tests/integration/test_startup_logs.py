"""Start-up with Redis down: "backend not ready" is told a few times, not every check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from redisprocs import free_port, start_standalone, wait_until

SERVER = str(Path(sys.executable).parent / "cachegate-server")
DOWN_SECONDS = 3.0  # the start-up check runs every 0.5 s: six or seven checks


def records(log: Path, msg: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text().split("\n")[:-1]:  # whole lines only
        record = json.loads(line)
        if record.get("msg") == msg:
            found.append(record)
    return found


def test_backend_not_ready_is_rate_limited_and_ready_is_told_once(tmp_path: Path) -> None:
    redis = start_standalone(tmp_path / "redis")
    redis.kill()  # its port is now closed; restart() brings it back on the same one
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHEGATE_", "REDIS_"))}
    env |= {
        "CACHEGATE_BACKEND": "redis",
        "REDIS_URL": redis.url,
        "REDIS_SOCKET_TIMEOUT": "0.5",
        "CACHEGATE_LISTEN": f"127.0.0.1:{free_port()}",
        "CACHEGATE_HTTP_LISTEN": "off",
        "CACHEGATE_WORKERS": "1",
    }
    with log.open("w") as err:
        proc = subprocess.Popen([SERVER], env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(lambda: records(log, "serving"), timeout=20, what="the serving line")
        time.sleep(DOWN_SECONDS)
        not_ready = records(log, "backend not ready")
        print(f"'backend not ready' lines in {DOWN_SECONDS} s with Redis down: {len(not_ready)}")
        assert 1 <= len(not_ready) <= 4, not_ready
        assert not_ready[0]["repeats_suppressed"] == 0
        assert "Connection" in str(not_ready[0]["reason"])
        assert not records(log, "backend ready")

        redis.restart()
        wait_until(lambda: records(log, "backend ready"), timeout=15, what="backend ready")
        time.sleep(1.0)  # the checks have stopped: nothing more is told
        ready = records(log, "backend ready")
        assert len(ready) == 1, ready
        told = records(log, "backend not ready")
        # Every failed check was told or counted.
        counted = len(told) + sum(int(str(r["repeats_suppressed"])) for r in told)
        counted += int(str(ready[0]["repeats_suppressed"]))
        print(f"checks while down: {counted}, lines: {len(told)}, ready: {ready[0]}")
        assert counted > len(told)  # checks went on meanwhile: held back, and counted
        assert ready[0]["backend"] == "redis"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        redis.stop()
