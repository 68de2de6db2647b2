"""`cachegate-healthcheck`: one grpc.health.v1 Check, for container HEALTHCHECKs.

    cachegate-healthcheck [--target HOST:PORT] [--service NAME] [--timeout S]

Exit 0 when the status is SERVING, 1 for anything else (NOT_SERVING, unknown
service, nothing listening, no answer within --timeout), 2 for a usage error.
Prints the status (or the error) on one line: Docker keeps it in `docker inspect`.

It uses the thin client only (grpcio + protobuf), so the image needs no
grpc_health_probe binary. The default service "" is the process, which stays
SERVING through a Redis outage; "cachegate.v1.CacheService" follows the breaker.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from cachegate.client._channel import DEFAULT_TARGET, SERVICE_NAME
from cachegate.client._client import CacheClient
from cachegate.client._errors import CacheClientError

__all__ = ["EXIT_NOT_SERVING", "EXIT_SERVING", "EXIT_USAGE", "main"]

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_USAGE = 2  # argparse's own code for a usage error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachegate-healthcheck",
        description="Ask a cachegate server's grpc.health.v1 service for one status. "
        "Exit 0 when SERVING, 1 otherwise, 2 on a usage error.",
    )
    parser.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"host:port (default {DEFAULT_TARGET})"
    )
    parser.add_argument(
        "--service",
        default="",
        help=f'health service name: "" = the process (default), {SERVICE_NAME} = the cache',
    )
    parser.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to wait for the answer (default 2)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    if not args.timeout > 0:  # also rejects NaN
        parser.error("--timeout must be > 0")
    # No channel retries: a probe answers for this moment, and --timeout bounds it whole.
    client = CacheClient(args.target, timeout=args.timeout, retries=False)
    try:
        status = client.health(args.service)
    except CacheClientError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:  # the health service knows no such name
            print(f"SERVICE_UNKNOWN: {args.service!r} at {args.target}", file=sys.stderr)
        else:
            print(f"cachegate-healthcheck: {args.target}: {exc.code.name}: {exc}", file=sys.stderr)
        return EXIT_NOT_SERVING
    finally:
        client.close()
    print(status)
    return EXIT_SERVING if status == "SERVING" else EXIT_NOT_SERVING


if __name__ == "__main__":
    sys.exit(main())
