"""`cachegate-server`: the entry point. The only module that reads the environment.

Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for a bad setting
(one line naming the variable), 1 when the server cannot start (port taken).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

from cachegate.core import SETTINGS, Config, ConfigError, load_config

__all__ = ["main"]

log = logging.getLogger("cachegate")

# LogRecord attributes that are not "extra" fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _help_epilog() -> str:
    width = max(len(s.name) for s in SETTINGS)
    lines = ["environment variables (default in brackets):"]
    for setting in SETTINGS:
        default = setting.default if setting.default != "" else "unset"
        lines.append(f"  {setting.name:<{width}}  {setting.help} [{default}]")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="cachegate-server",
        description="Serve the cachegate.v1 cache API over gRPC, in front of Redis. "
        "Configured by environment variables only.",
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def run(config: Config) -> int:
    """Run one server process until SIGTERM/SIGINT; returns the exit code."""
    from cachegate.service._server import AddressInUseError, create_server

    try:
        server, port = create_server(config)
    except AddressInUseError as exc:
        log.error("cannot start", extra={"reason": str(exc)})
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    log.info(
        "serving",
        extra={
            "listen": config.server.listen,
            "port": port,
            "backend": config.backend,
            "redis": config.redis.redacted_url if config.backend != "memory" else "embedded",
        },
    )
    stop.wait()
    log.info("shutting down", extra={"grace_seconds": config.server.grace_seconds})
    server.stop()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    _parser().parse_args(argv)
    try:
        config = load_config(os.environ if env is None else env)
    except ConfigError as exc:
        print(f"cachegate-server: configuration error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config.server.log_level)
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
