"""Real ``redis-server`` processes for tests: standalone, Sentinel and Cluster.

Why this exists: the gateway's whole value is how it behaves when Redis misbehaves (dies,
stalls, fails over). Mocks and in-process fakes cannot stall a socket or lose a master, so
the tests drive real servers and inject faults with real signals (SIGKILL, SIGSTOP, ...).

Ground rules, each of which prevents a class of flaky or dangerous test:

* Everything listens on 127.0.0.1 only, on ports we picked as free (never 6379: a system
  Redis that is not ours may live there).
* A process is only ever signalled through its own PID (``Popen.send_signal``), never by
  name, so a test can never touch a server it did not start.
* Every wait is a bounded poll that raises :class:`WaitTimeoutError` (or
  :class:`RedisStartError` with the tail of the server log) instead of hanging.
* No persistence (``--save "" --appendonly no``): a killed server comes back empty, which
  keeps restarts fast and tests independent.

When no ``redis-server`` binary exists, standalone servers come from Docker through
testcontainers (imported lazily). Sentinel and Cluster need the binaries. With neither, a
:class:`RedisUnavailableError` says exactly how to get a server: tests never skip silently.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "HOST",
    "ClusterNodeInfo",
    "ClusterSetup",
    "PortInUseError",
    "RedisProcess",
    "RedisStartError",
    "RedisUnavailableError",
    "SentinelProcess",
    "SentinelSetup",
    "WaitTimeoutError",
    "docker_available",
    "find_redis_cli",
    "find_redis_server",
    "free_port",
    "free_port_block",
    "start_cluster",
    "start_sentinel_setup",
    "start_standalone",
    "stop_all",
    "wait_until",
]

HOST = "127.0.0.1"
"""The only interface anything here listens on: tests must never be reachable from outside."""

START_TIMEOUT = 10.0
"""Seconds a fresh server gets to answer PING; far above the ~20 ms it normally needs."""

STOP_TIMEOUT = 5.0
"""Seconds a server gets to exit after SIGTERM before it is SIGKILLed."""

RESTART_BIND_TIMEOUT = 5.0
"""Seconds ``restart()`` keeps retrying when the old port is still busy (e.g. TIME_WAIT)."""

DOCKER_IMAGE = os.environ.get("REDIS_TEST_IMAGE", "redis:7")
"""Image for the Docker fallback; overridable so CI can pin or mirror it."""

_SEARCH_DIRS = ("/usr/bin", "/usr/local/bin")
_CLUSTER_BUS_OFFSET = 10000  # Redis Cluster's bus listens on port + 10000.
_MAX_PORT = 65535
_PORT_ATTEMPTS = 5  # New ports tried when a picked "free" port was grabbed before we bound it.
_LOG_TAIL_LINES = 40

_INSTALL_HINT = (
    "Get a Redis server for the tests in one of these ways:\n"
    "  1. install the binaries: `sudo apt-get install redis-server` "
    "(provides redis-server, redis-cli and Sentinel);\n"
    "  2. set REDIS_URL=redis://127.0.0.1:PORT/0 to an existing throwaway Redis "
    "(only for tests that just need *a* server: the shared_redis_url fixture);\n"
    "  3. run a Docker engine (`docker info` must answer) and "
    "`pip install 'testcontainers[redis]'`; standalone servers then run in containers."
)
_BINARY_ONLY_HINT = (
    "Sentinel and Cluster setups need the redis-server and redis-cli binaries "
    "(REDIS_URL and Docker only cover standalone servers): `sudo apt-get install redis-server`."
)

T = TypeVar("T")


# --------------------------------------------------------------------------- errors


class RedisUnavailableError(RuntimeError):
    """No way to run a Redis server here; the message says how to get one."""


class RedisStartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


class PortInUseError(RedisStartError):
    """The server could not bind its port; callers may retry (same or another port)."""


class WaitTimeoutError(TimeoutError):
    """A bounded wait ran out; the message says what was awaited and what was last seen."""


# --------------------------------------------------------------------------- discovery


def _find_binary(name: str) -> str | None:
    """Look on PATH first (respects the developer's choice), then the usual install dirs."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SEARCH_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_redis_server() -> str:
    """Return the path of ``redis-server`` or raise :class:`RedisUnavailableError`."""
    found = _find_binary("redis-server")
    if found is None:
        raise RedisUnavailableError(
            "redis-server not found on PATH, /usr/bin or /usr/local/bin.\n" + _INSTALL_HINT
        )
    return found


def find_redis_cli() -> str:
    """Return the path of ``redis-cli`` (needed to create clusters) or raise."""
    found = _find_binary("redis-cli")
    if found is None:
        raise RedisUnavailableError(
            "redis-cli not found on PATH, /usr/bin or /usr/local/bin.\n" + _BINARY_ONLY_HINT
        )
    return found


@functools.cache
def docker_available() -> bool:
    """True when a Docker engine answers ``docker info``; cached because it takes ~1 s."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info"], capture_output=True, timeout=15, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


# --------------------------------------------------------------------------- ports

_port_lock = threading.Lock()
# Ports handed out by this process. bind(0) may return a port again as soon as our probe
# socket is closed, so remembering them stops two servers of one setup racing for a port.
_issued_ports: set[int] = set()


def _can_bind(port: int) -> bool:
    """True if 127.0.0.1:port can be bound right now (without SO_REUSEADDR: be strict)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _ephemeral_port() -> int:
    """Let the kernel pick a port that is free on 127.0.0.1 at this instant."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def free_port(*, cluster_bus: bool = False, attempts: int = 200) -> int:
    """Return a currently free 127.0.0.1 port not handed out before by this process.

    With ``cluster_bus=True`` port + 10000 must be free as well, because a cluster node
    binds its gossip bus there and would otherwise fail to start. There is an unavoidable
    race between this check and the server's bind; :func:`start_standalone` and
    :func:`start_cluster` handle it by retrying on :class:`PortInUseError`.
    """
    with _port_lock:
        for _ in range(attempts):
            port = _ephemeral_port()
            wanted = [port, port + _CLUSTER_BUS_OFFSET] if cluster_bus else [port]
            if wanted[-1] > _MAX_PORT or any(p in _issued_ports for p in wanted):
                continue
            if cluster_bus and not _can_bind(wanted[-1]):
                continue
            _issued_ports.update(wanted)
            return port
    raise RuntimeError(f"no free 127.0.0.1 port found in {attempts} attempts")


def free_port_block(count: int, *, attempts: int = 200) -> int:
    """Return a port p with p .. p+count-1 all free on 127.0.0.1 and not handed out before.

    For a server that binds a port per worker from one base (CACHEGATE_HTTP_LISTEN's
    port + worker number). The block is taken below the kernel's range for outgoing
    connections' local ports (ip_local_port_range), where bind(0) picks: there a port
    next to a free one could be taken at any moment by any client's connect, and the
    server's later bind would fail.
    """
    low, high = _ephemeral_range()
    # Below the range where there is room for it, else above it.
    first, last = (
        (max(1024, low - 12_000), low - count)
        if low - count > 2048
        else (high + 1, _MAX_PORT - count)
    )
    with _port_lock:
        for _ in range(attempts):
            base = random.randrange(first, last)
            block = range(base, base + count)
            if any(port in _issued_ports for port in block):
                continue
            if all(_can_bind(port) for port in block):
                _issued_ports.update(block)
                return base
    raise RuntimeError(f"no block of {count} free 127.0.0.1 ports found in {attempts} attempts")


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default if unknown)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


# --------------------------------------------------------------------------- waiting


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something other than None/False; return that.

    Redis and OS errors raised by ``condition`` count as "not yet" (a server that is
    starting or failing over refuses connections for a while); the last one is reported
    if the deadline passes. ``diagnostics`` adds context (e.g. log tails) to that error.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        else:
            if result is not None and result is not False:
                return result
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:.1f}s waiting for {what}"
            if last_error is not None:
                message += f" (last error: {last_error!r})"
            if diagnostics is not None:
                with contextlib.suppress(Exception):  # diagnostics must not mask the timeout
                    message += "\n" + diagnostics()
            raise WaitTimeoutError(message)
        time.sleep(interval)


def _probe_client(port: int, password: str | None = None, timeout: float = 1.0) -> redis.Redis:
    """A short-timeout, no-retry client for polling: a poll must fail fast, not retry."""
    return redis.Redis(
        host=HOST,
        port=port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    """``INFO <section>`` as the dict redis-py parses it into (typed for mypy)."""
    result = client.info(section)
    if not isinstance(result, dict):  # only an asyncio client would return an awaitable
        raise TypeError(f"INFO {section} returned {type(result).__name__}, not a dict")
    return result


def _kv_lines(text: str) -> dict[str, str]:
    """Parse ``key:value`` lines (CLUSTER INFO) ourselves: no dependence on client parsers."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _as_dict(reply: Any) -> dict[str, str]:
    """A Sentinel record as a dict: a map under RESP3 (redis-py 8's default protocol),
    a flat ``[k1, v1, k2, v2, ...]`` array under RESP2."""
    if isinstance(reply, Mapping):
        return {str(key): str(value) for key, value in reply.items()}
    return {str(reply[i]): str(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}


def _tail(path: Path, offset: int, lines: int) -> str:
    """The last ``lines`` lines of ``path`` written after byte ``offset`` ('' if none)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _proc_state(pid: int) -> str | None:
    """Linux scheduler state letter of ``pid`` ('T' = stopped), None if unknowable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[0] if fields else None


def _conf_quote(value: str) -> str:
    """Quote a value for a redis.conf line, so paths with spaces or quotes survive."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# --------------------------------------------------------------------------- backends


class _Backend(Protocol):
    """How a :class:`RedisProcess` actually runs: a local process or a Docker container."""

    def spawn(self) -> None: ...
    def pid(self) -> int | None: ...
    def has_exited(self) -> bool: ...
    def send_signal(self, sig: signal.Signals) -> None: ...
    def wait_exit(self, timeout: float) -> bool: ...
    def port_conflict(self) -> bool: ...
    def log_tail(self, lines: int) -> str: ...
    def close(self) -> None: ...


class _LocalBackend:
    """A ``redis-server`` child process, signalled only through its own PID."""

    def __init__(self, argv: list[str], workdir: Path, logfile: Path) -> None:
        self._argv = argv
        self._workdir = workdir
        self._logfile = logfile
        # Config errors are printed to stdout/stderr before the logfile is opened.
        self._outfile = logfile.with_suffix(".out")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._out_offset = 0

    def spawn(self) -> None:
        # Redis appends to its log across restarts; remember where this run starts so
        # error reports show this run's lines, not a previous run's.
        self._log_offset = _file_size(self._logfile)
        self._out_offset = _file_size(self._outfile)
        with self._outfile.open("ab") as out:
            self._proc = subprocess.Popen(
                self._argv,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def has_exited(self) -> bool:
        return self._proc is None or self._proc.poll() is not None

    def send_signal(self, sig: signal.Signals) -> None:
        # Popen.send_signal refuses to signal a reaped PID, so a recycled PID is never hit.
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)
            if sig in (signal.SIGSTOP, signal.SIGCONT):
                self._await_stop_state(stopped=sig == signal.SIGSTOP)

    def _await_stop_state(self, *, stopped: bool) -> None:
        """Signals are asynchronous; make pause()/resume() effective when they return."""
        pid = self.pid()
        if pid is None or _proc_state(pid) is None:
            return  # not Linux /proc: nothing to observe, the signal is delivered promptly.

        def reached() -> bool:
            state = _proc_state(pid)
            return state is None or (state in ("T", "t")) == stopped

        wait_until(reached, timeout=5.0, interval=0.005, what=f"pid {pid} stopped={stopped}")

    def wait_exit(self, timeout: float) -> bool:
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def port_conflict(self) -> bool:
        text = _tail(self._logfile, self._log_offset, 1000) + _tail(
            self._outfile, self._out_offset, 1000
        )
        return "Address already in use" in text

    def log_tail(self, lines: int) -> str:
        parts = []
        for label, path, offset in (
            ("log", self._logfile, self._log_offset),
            ("stdout/stderr", self._outfile, self._out_offset),
        ):
            text = _tail(path, offset, lines)
            if text:
                parts.append(f"--- {label} ({path}), last lines ---\n{text}")
        return "\n".join(parts) or f"(no output in {self._logfile} or {self._outfile})"

    def close(self) -> None:
        self._proc = None


def _testcontainers_redis() -> Any:
    # testcontainers 4.10+ moved the Redis module under `community`; older ones have it top-level.
    try:
        return importlib.import_module("testcontainers.community.redis")
    except ImportError:
        return importlib.import_module("testcontainers.redis")


class _DockerBackend:
    """The fallback when no binary exists: a ``redis`` container via testcontainers.

    The host port is bound explicitly on 127.0.0.1 (not a random mapping) so the server
    keeps its port across restart(), like a local process does.
    """

    def __init__(self, port: int, password: str | None, extra_args: Sequence[str]) -> None:
        self._port = port
        self._password = password
        self._extra_args = list(extra_args)
        self._tc: Any = None  # testcontainers RedisContainer, typed Any: lazily imported.

    def _command(self) -> list[str]:
        # Inside the container it must listen on all interfaces for Docker's port forward;
        # the host side is bound to 127.0.0.1 only.
        argv = ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no"]
        argv += ["--save", "", "--appendonly", "no", "--enable-debug-command", "yes"]
        if self._password is not None:
            argv += ["--requirepass", self._password]
        return argv + self._extra_args

    def spawn(self) -> None:
        if self._tc is not None:
            self._tc.get_wrapped_container().start()  # restart after kill: same container.
            return
        try:
            module: Any = _testcontainers_redis()
        except ImportError as exc:
            raise RedisUnavailableError(
                "Docker is available but testcontainers is not installed: "
                "`pip install 'testcontainers[redis]'`.\n" + _INSTALL_HINT
            ) from exc
        container = module.RedisContainer(DOCKER_IMAGE, password=self._password)
        container = container.with_bind_ports(6379, (HOST, self._port))
        container = container.with_command(self._command())
        try:
            container.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                container.stop()
            text = str(exc).lower()
            if "already in use" in text or "already allocated" in text:
                raise PortInUseError(f"port {self._port} busy for Docker: {exc}") from exc
            raise RedisStartError(f"Redis container failed to start: {exc}") from exc
        self._tc = container

    def _state(self) -> dict[str, Any]:
        wrapped = self._tc.get_wrapped_container()
        wrapped.reload()
        state: dict[str, Any] = wrapped.attrs["State"]
        return state

    def pid(self) -> int | None:
        if self._tc is None:
            return None
        return int(self._state().get("Pid") or 0) or None

    def has_exited(self) -> bool:
        return self._tc is None or not self._state().get("Running", False)

    def send_signal(self, sig: signal.Signals) -> None:
        if self._tc is None:
            return
        wrapped = self._tc.get_wrapped_container()
        # Docker's freezer is the container equivalent of SIGSTOP/SIGCONT.
        if sig == signal.SIGSTOP:
            wrapped.pause()
        elif sig == signal.SIGCONT:
            wrapped.unpause()
        else:
            wrapped.kill(signal=sig.name)

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.has_exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def port_conflict(self) -> bool:
        return False  # Docker reports bind conflicts from spawn() itself.

    def log_tail(self, lines: int) -> str:
        if self._tc is None:
            return "(no container)"
        raw: bytes = self._tc.get_wrapped_container().logs(tail=lines)
        return "--- container log ---\n" + raw.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._tc is not None:
            with contextlib.suppress(Exception):
                self._tc.stop()  # removes the container
            self._tc = None


# --------------------------------------------------------------------------- RedisProcess

_live_lock = threading.Lock()
_live: set[RedisProcess] = set()


def _stop_leftovers() -> None:
    """Last-resort cleanup at interpreter exit, for a fixture that never ran its teardown."""
    with _live_lock:
        leftovers = list(_live)
    stop_all(leftovers, timeout=2.0)


atexit.register(_stop_leftovers)


class RedisProcess:
    """One Redis server on 127.0.0.1:``port``, started by the constructor.

    The server has no persistence and DEBUG enabled (``DEBUG SLEEP`` simulates a slow
    server). Fault injection: :meth:`kill` (crash), :meth:`pause`/:meth:`resume` (a hung
    server whose sockets stay open), :meth:`restart` (comes back empty on the same port).
    """

    _docker_allowed = True  # Subclasses that need the real binary (Sentinel) switch it off.

    def __init__(
        self,
        workdir: Path,
        port: int,
        *,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self._workdir = Path(workdir).resolve()
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._port = port
        self._password = password
        self._extra_args = list(extra_args)
        self._start_timeout = start_timeout
        self._paused = False
        self._last_pid: int | None = None
        self._backend = self._make_backend()
        self._start(bind_retry_timeout=0.0)

    # -- construction ----------------------------------------------------------------

    def _command_line(self, server: str) -> list[str]:
        """The argv; subclasses (Sentinel) override it."""
        return [
            server,
            "--port", str(self._port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._workdir),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--enable-debug-command", "yes",
            "--logfile", str(self.logfile),
            *(["--requirepass", self._password] if self._password is not None else []),
            *self._extra_args,
        ]  # fmt: skip

    def _make_backend(self) -> _Backend:
        try:
            server = find_redis_server()
        except RedisUnavailableError:
            if not self._docker_allowed:
                raise RedisUnavailableError(
                    "redis-server not found on PATH, /usr/bin or /usr/local/bin.\n"
                    + _BINARY_ONLY_HINT
                ) from None
            if not docker_available():
                raise
            return _DockerBackend(self._port, self._password, self._extra_args)
        return _LocalBackend(self._command_line(server), self._workdir, self.logfile)

    # -- lifecycle -------------------------------------------------------------------

    def _start(self, *, bind_retry_timeout: float) -> None:
        """Spawn and wait for PING; retry while the port is busy, up to the given time."""
        deadline = time.monotonic() + bind_retry_timeout
        while True:
            try:
                self._backend.spawn()
                self._last_pid = self._backend.pid()
                with _live_lock:
                    _live.add(self)
                self._wait_ready()
                return
            except PortInUseError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def _wait_ready(self) -> None:
        """Bounded wait for PING; on any failure the process is killed and the log shown."""
        deadline = time.monotonic() + self._start_timeout
        last_error: BaseException | None = None
        with _probe_client(self._port, self._password, timeout=0.5) as probe:
            while True:
                if self._backend.has_exited():
                    self._discard()
                    detail = self._backend.log_tail(_LOG_TAIL_LINES)
                    if self._backend.port_conflict():
                        raise PortInUseError(f"{self!r}: port {self._port} is busy\n{detail}")
                    raise RedisStartError(f"{self!r} exited during startup\n{detail}")
                try:
                    if probe.ping():
                        return
                except (redis.RedisError, OSError) as exc:
                    last_error = exc
                if time.monotonic() >= deadline:
                    self._discard()
                    raise RedisStartError(
                        f"{self!r} did not answer PING within {self._start_timeout:.1f}s "
                        f"(last error: {last_error!r})\n{self._backend.log_tail(_LOG_TAIL_LINES)}"
                    )
                time.sleep(0.02)

    def _discard(self) -> None:
        """Kill a server that failed to start, so a raising constructor leaks nothing."""
        self._backend.send_signal(signal.SIGKILL)
        self._backend.wait_exit(STOP_TIMEOUT)
        with _live_lock:
            _live.discard(self)

    # -- properties ------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self._port)

    @property
    def pid(self) -> int:
        """PID of the current (or, after a kill, the last) server process."""
        pid = self._backend.pid() or self._last_pid
        if pid is None:
            raise RuntimeError(f"{self!r} has no process")
        return pid

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def logfile(self) -> Path:
        return self._workdir / f"redis-{self._port}.log"

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``; contains the password, unlike repr()."""
        auth = f":{quote(self._password, safe='')}@" if self._password is not None else ""
        return f"redis://{auth}{HOST}:{self._port}/0"

    @property
    def is_paused(self) -> bool:
        return self._paused

    def __repr__(self) -> str:
        # Never the password: reprs end up in pytest output and CI logs.
        state = "paused" if self._paused else ("running" if self.is_running() else "stopped")
        auth = " auth=yes" if self._password is not None else ""
        return (
            f"<{type(self).__name__} {HOST}:{self._port} pid={self._last_pid} {state}{auth} "
            f"log={self.logfile}>"
        )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The server's latest log lines, for error messages."""
        return self._backend.log_tail(lines)

    # -- clients ---------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A direct admin client (bytes replies by default) for setting up and checking.

        It does not retry and has finite timeouts, so a test that killed or paused the
        server sees the error at once instead of redis-py's default retries; ``kwargs``
        override any option.
        """
        options: dict[str, Any] = {
            "host": HOST,
            "port": self._port,
            "password": self._password,
            "decode_responses": False,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 2.0,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kwargs)
        return redis.Redis(**options)

    # -- fault injection -------------------------------------------------------------

    def is_running(self) -> bool:
        """True while the process exists (also when paused)."""
        return not self._backend.has_exited()

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown, connections reset) and wait for the exit."""
        if not self.is_running():
            return
        self._backend.send_signal(signal.SIGKILL)
        self._paused = False
        if not self._backend.wait_exit(STOP_TIMEOUT):
            raise WaitTimeoutError(f"{self!r} still alive {STOP_TIMEOUT}s after SIGKILL")
        with _live_lock:
            _live.discard(self)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (graceful shutdown) and wait; raises if it does not exit in time."""
        if not self.is_running():
            return
        self.resume()  # a stopped process would not act on SIGTERM until continued
        self._backend.send_signal(signal.SIGTERM)
        if not self._backend.wait_exit(timeout):
            raise WaitTimeoutError(f"{self!r} still alive {timeout}s after SIGTERM")
        with _live_lock:
            _live.discard(self)

    def pause(self) -> None:
        """SIGSTOP: the server hangs with its sockets open; clients see timeouts, not errors."""
        if not self.is_running():
            raise RuntimeError(f"cannot pause {self!r}: not running")
        self._backend.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT: undo :meth:`pause`; the server answers the queued commands."""
        if self._paused and self.is_running():
            self._backend.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """Start again on the SAME port with the same args (killing it first if alive).

        The data is gone (no persistence). Binding is retried for a few seconds because
        the port can briefly still be taken after a crash.
        """
        self.kill()
        self._start(bind_retry_timeout=RESTART_BIND_TIMEOUT)

    def stop(self) -> None:
        """Clean shutdown (resume, SIGTERM, then SIGKILL if needed); idempotent."""
        stop_all([self])

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_all(processes: Iterable[RedisProcess], timeout: float = STOP_TIMEOUT) -> None:
    """Stop many servers in parallel: SIGTERM all first, then wait, then SIGKILL stragglers.

    Doing it in two phases makes tearing down a 6-node cluster cost one shutdown, not six.
    Never raises for an already-stopped process.
    """
    procs = list(processes)
    live = [p for p in procs if p.is_running()]
    for proc in live:
        proc.resume()
        proc._backend.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in live:
        if not proc._backend.wait_exit(deadline - time.monotonic()):
            proc._backend.send_signal(signal.SIGKILL)
            proc._backend.wait_exit(STOP_TIMEOUT)
    for proc in procs:
        proc._backend.close()
        with _live_lock:
            _live.discard(proc)


def _start_on_free_port(factory: Callable[[int], T], *, cluster_bus: bool = False) -> T:
    """Call ``factory(port)`` with fresh free ports until one is not stolen before bind."""
    last: PortInUseError | None = None
    for _ in range(_PORT_ATTEMPTS):
        try:
            return factory(free_port(cluster_bus=cluster_bus))
        except PortInUseError as exc:
            last = exc
    raise RedisStartError(f"could not bind a free port in {_PORT_ATTEMPTS} attempts") from last


def start_standalone(
    workdir: Path, *, password: str | None = None, extra_args: Sequence[str] = ()
) -> RedisProcess:
    """Start one standalone server on a free port (a container if there is no binary)."""
    return _start_on_free_port(
        lambda port: RedisProcess(workdir, port, password=password, extra_args=extra_args)
    )


# --------------------------------------------------------------------------- Sentinel


class SentinelProcess(RedisProcess):
    """A ``redis-server <conf> --sentinel`` process.

    Each sentinel gets its own config file because Sentinel rewrites it at runtime
    (discovered peers, epochs); sharing one would corrupt it.
    """

    _docker_allowed = False

    def __init__(
        self,
        workdir: Path,
        port: int,
        *,
        master_name: str,
        master_port: int,
        quorum: int = 2,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        self.master_name = master_name
        self.config_file = workdir / f"sentinel-{port}.conf"
        lines = [
            f"port {port}",
            f"bind {HOST}",
            "protected-mode no",
            "daemonize no",
            f"dir {_conf_quote(str(workdir))}",
            f"logfile {_conf_quote(str(workdir / f'redis-{port}.log'))}",
            # We monitor by IP; no DNS lookups that could stall on an odd resolver.
            "sentinel resolve-hostnames no",
            f"sentinel monitor {master_name} {HOST} {master_port} {quorum}",
            # Short timings so a failover takes seconds, not the default minutes.
            f"sentinel down-after-milliseconds {master_name} 1000",
            f"sentinel failover-timeout {master_name} 3000",
            f"sentinel parallel-syncs {master_name} 1",
        ]
        self.config_file.write_text("\n".join(lines) + "\n")
        super().__init__(workdir, port, start_timeout=start_timeout)

    def _command_line(self, server: str) -> list[str]:
        return [server, str(self.config_file), "--sentinel"]

    def master_address(self) -> tuple[str, int] | None:
        """This sentinel's idea of the master (``SENTINEL get-master-addr-by-name``)."""
        with _probe_client(self.port) as client:
            reply = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not reply:
            return None
        return (str(reply[0]), int(reply[1]))


# Replicas otherwise wait 5 s (Redis 7 default) for more replicas before a diskless sync.
_FAST_SYNC_ARGS = ("--repl-diskless-sync-delay", "0")


def _role(proc: RedisProcess) -> str | None:
    with _probe_client(proc.port, proc.password) as client:
        role = _info(client, "replication").get("role")
    return None if role is None else str(role)


def _replica_link_up(proc: RedisProcess) -> bool:
    with _probe_client(proc.port, proc.password) as client:
        return _info(client, "replication").get("master_link_status") == "up"


class SentinelSetup:
    """One master, one replica and three sentinels watching ``master_name``.

    ``master`` and ``replica`` follow failovers made through
    :meth:`kill_master_and_wait_failover`: afterwards ``master`` is the promoted node and
    ``replica`` the killed old master (restart it and Sentinel turns it into a replica).
    """

    def __init__(
        self,
        master: RedisProcess,
        replica: RedisProcess,
        sentinels: Sequence[SentinelProcess],
        master_name: str,
    ) -> None:
        self.master = master
        self.replica = replica
        self.sentinels = list(sentinels)
        self.master_name = master_name

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """What a Sentinel-aware client needs (e.g. ``redis.sentinel.Sentinel``)."""
        return [s.address for s in self.sentinels]

    def processes(self) -> list[RedisProcess]:
        return [*self.sentinels, self.replica, self.master]

    def __repr__(self) -> str:
        return (
            f"<SentinelSetup {self.master_name} master={self.master.port} "
            f"replica={self.replica.port} sentinels={[s.port for s in self.sentinels]}>"
        )

    def current_master_address(self) -> tuple[str, int]:
        """The master address as the first answering sentinel reports it."""
        errors: list[str] = []
        for sentinel in self.sentinels:
            try:
                address = sentinel.master_address()
            except (redis.RedisError, OSError) as exc:
                errors.append(f"{sentinel.port}: {exc!r}")
                continue
            if address is not None:
                return address
            errors.append(f"{sentinel.port}: unknown master {self.master_name!r}")
        raise RuntimeError(f"no sentinel reports a master: {'; '.join(errors)}")

    def _sentinel_ready(self, sentinel: SentinelProcess) -> bool:
        """This sentinel knows the master, its replica (link ok) and both other sentinels."""
        name = self.master_name
        with _probe_client(sentinel.port) as client:
            master = _as_dict(client.execute_command("SENTINEL", "MASTER", name))
            replicas = [_as_dict(r) for r in client.execute_command("SENTINEL", "REPLICAS", name)]
            if master.get("flags") != "master" or master.get("port") != str(self.master.port):
                return False
            if int(master.get("num-other-sentinels", "0")) < len(self.sentinels) - 1:
                return False
            if not any(
                r.get("port") == str(self.replica.port)
                and r.get("flags") == "slave"
                and r.get("master-link-status") == "ok"
                for r in replicas
            ):
                return False
            # Raises ResponseError (= "not yet") unless quorum and majority are reachable.
            client.execute_command("SENTINEL", "CKQUORUM", name)
        return True

    def _diagnostics(self) -> str:
        return "\n".join(f"{p!r}\n{p.log_tail(15)}" for p in self.processes())

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Bounded wait until replication is up and every sentinel sees the full topology."""
        wait_until(
            lambda: _replica_link_up(self.replica),
            timeout=timeout,
            what=f"replica {self.replica.port} in sync with master {self.master.port}",
            diagnostics=self._diagnostics,
        )
        wait_until(
            lambda: all(self._sentinel_ready(s) for s in self.sentinels),
            timeout=timeout,
            what="every sentinel to see master, replica and the other sentinels",
            diagnostics=self._diagnostics,
        )

    def kill_master_and_wait_failover(self, timeout: float = 30.0) -> tuple[str, int]:
        """SIGKILL the master; wait until all live sentinels name the replica as master
        and the replica reports role:master. Returns the new master address."""
        old, promoted = self.master, self.replica
        expected = promoted.address
        old.kill()

        def failed_over() -> bool:
            for sentinel in self.sentinels:
                if sentinel.is_running() and sentinel.master_address() != expected:
                    return False
            return _role(promoted) == "master"

        wait_until(
            failed_over,
            timeout=timeout,
            what=f"sentinel failover from {old.port} to {promoted.port}",
            interval=0.1,
            diagnostics=self._diagnostics,
        )
        self.master, self.replica = promoted, old
        return expected

    def stop(self) -> None:
        """Stop every process (sentinels first in the same parallel batch); idempotent."""
        stop_all(self.processes())

    def __enter__(self) -> SentinelSetup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_sentinel_setup(
    workdir: Path, master_name: str = "mymaster", *, timeout: float = 20.0
) -> SentinelSetup:
    """Start master, replica and three sentinels (needs the binary); ready when returned."""
    find_redis_server()  # fail with the install hint before starting anything
    workdir = Path(workdir)
    started: list[RedisProcess] = []
    try:
        master = _start_on_free_port(
            lambda port: RedisProcess(workdir / "master", port, extra_args=_FAST_SYNC_ARGS)
        )
        started.append(master)
        replica = _start_on_free_port(
            lambda port: RedisProcess(
                workdir / "replica",
                port,
                extra_args=[*_FAST_SYNC_ARGS, "--replicaof", HOST, str(master.port)],
            )
        )
        started.append(replica)
        # Sentinels learn about replicas from the master's INFO, so wait for the sync
        # first: they then see the replica at their first INFO instead of 10 s later.
        wait_until(
            lambda: _replica_link_up(replica),
            timeout=timeout,
            what=f"replica {replica.port} in sync with master {master.port}",
            diagnostics=lambda: f"{master.log_tail(15)}\n{replica.log_tail(15)}",
        )
        sentinels: list[SentinelProcess] = []
        for _ in range(3):
            sentinel = _start_on_free_port(
                lambda port: SentinelProcess(
                    workdir / "sentinels", port, master_name=master_name, master_port=master.port
                )
            )
            sentinels.append(sentinel)
            started.append(sentinel)
        setup = SentinelSetup(master, replica, sentinels, master_name)
        setup.wait_ready(timeout)
    except BaseException:
        stop_all(started)
        raise
    return setup


# --------------------------------------------------------------------------- Cluster


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    link_state: str
    slots: tuple[str, ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def is_failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    @classmethod
    def parse(cls, line: str) -> ClusterNodeInfo:
        # <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>*
        fields = line.split()
        address = fields[1].split(",", 1)[0].split("@", 1)[0]
        host, _, port = address.rpartition(":")
        return cls(
            node_id=fields[0],
            host=host,
            port=int(port or 0),
            flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3],
            link_state=fields[7],
            slots=tuple(fields[8:]),
        )


def _cluster_info(proc: RedisProcess) -> dict[str, str]:
    with _probe_client(proc.port, proc.password) as client:
        return _kv_lines(str(client.execute_command("CLUSTER", "INFO")))


def _cluster_nodes(proc: RedisProcess) -> list[ClusterNodeInfo]:
    with _probe_client(proc.port, proc.password) as client:
        text = str(client.execute_command("CLUSTER", "NODES"))
    return [ClusterNodeInfo.parse(line) for line in text.splitlines() if line.strip()]


class ClusterSetup:
    """A Redis Cluster of ``masters * (1 + replicas_per_master)`` local nodes."""

    def __init__(self, nodes: Sequence[RedisProcess], replicas_per_master: int) -> None:
        self.nodes = list(nodes)
        self.replicas_per_master = replicas_per_master

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [node.address for node in self.nodes]

    @property
    def url(self) -> str:
        """URL of the first node (cluster clients discover the rest from it)."""
        return self.nodes[0].url

    def __repr__(self) -> str:
        return f"<ClusterSetup nodes={[n.port for n in self.nodes]}>"

    def _by_port(self, port: int) -> RedisProcess | None:
        return next((n for n in self.nodes if n.port == port), None)

    def _observer(self) -> RedisProcess:
        """A running, unpaused node to ask about the cluster."""
        for node in self.nodes:
            if node.is_running() and not node.is_paused:
                return node
        raise RuntimeError(f"{self!r}: no live node to ask")

    def cluster_nodes(self) -> list[ClusterNodeInfo]:
        """``CLUSTER NODES`` as seen by the first live node."""
        return _cluster_nodes(self._observer())

    def masters(self) -> list[RedisProcess]:
        """Nodes that are currently healthy masters, in ``nodes`` order."""
        ports = {i.port for i in self.cluster_nodes() if i.is_master and not i.is_failed}
        return [n for n in self.nodes if n.port in ports]

    def _node_ready(self, node: RedisProcess) -> bool:
        info = _cluster_info(node)
        if info.get("cluster_state") != "ok":
            return False
        if info.get("cluster_known_nodes") != str(len(self.nodes)):
            return False
        with _probe_client(node.port, node.password) as client:
            replication = _info(client, "replication")
        # A replica that never synced is not eligible for failover: wait for its link.
        return replication.get("role") == "master" or replication.get("master_link_status") == "up"

    def _diagnostics(self) -> str:
        return "\n".join(f"{n!r}\n{n.log_tail(10)}" for n in self.nodes)

    def _roles_settled(self) -> bool:
        # Until CLUSTER REPLICATE has reached every view, a replica-to-be shows as a
        # master without slots (and says role:master itself), which _node_ready accepts.
        running = {n.port for n in self.nodes if n.is_running()}
        return all(
            i.slots or not i.is_master
            for i in self.cluster_nodes()
            if i.port in running and not i.is_failed
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Bounded wait until every running node reports cluster_state:ok and is synced."""
        wait_until(
            lambda: (
                all(self._node_ready(n) for n in self.nodes if n.is_running())
                and self._roles_settled()
            ),
            timeout=timeout,
            what="cluster_state:ok and synced replicas on every node",
            interval=0.1,
            diagnostics=self._diagnostics,
        )

    def _caught_up(self, master: RedisProcess, heirs: set[int]) -> bool:
        with _probe_client(master.port, master.password) as client:
            offset = int(_info(client, "replication").get("master_repl_offset", 0))
        for port in heirs:
            heir = self._by_port(port)
            if heir is None or not heir.is_running():
                continue
            with _probe_client(heir.port, heir.password) as client:
                info = _info(client, "replication")
            if (
                info.get("master_link_status") == "up"
                and int(info.get("slave_repl_offset", -1)) >= offset
            ):
                return True
        return False

    def kill_master_and_wait_failover(self, index: int = 0, timeout: float = 30.0) -> float:
        """SIGKILL ``masters()[index]``; return the seconds until a surviving master sees
        cluster_state:ok with a replica of the victim owning the victim's slots."""
        if self.replicas_per_master < 1:
            raise ValueError("failover needs a cluster started with replicas_per_master >= 1")
        infos = self.cluster_nodes()
        live_masters = [i for i in infos if i.is_master and not i.is_failed and i.slots]
        live_masters.sort(key=lambda i: [n.port for n in self.nodes].index(i.port))
        victim_info = live_masters[index]
        victim = self._by_port(victim_info.port)
        if victim is None:
            raise RuntimeError(f"master {victim_info.port} is not one of ours")
        heirs = {i.port for i in infos if i.master_id == victim_info.node_id}
        survivors = [self._by_port(i.port) for i in live_masters if i.port != victim.port]
        observer = next(n for n in survivors if n is not None and n.is_running())
        # Replication is asynchronous: kill only once an heir has every write the victim
        # acknowledged, so a test can tell a lost write from a too-early kill.
        wait_until(
            lambda: self._caught_up(victim, heirs),
            timeout=timeout,
            what=f"a replica of {victim.port} to catch up",
            interval=0.02,
            diagnostics=self._diagnostics,
        )

        victim.kill()
        started = time.monotonic()

        def recovered() -> bool:
            if _cluster_info(observer).get("cluster_state") != "ok":
                return False
            return any(
                i.port in heirs and i.is_master and i.slots == victim_info.slots
                for i in _cluster_nodes(observer)
            )

        wait_until(
            recovered,
            timeout=timeout,
            what=f"cluster failover of master {victim.port} to one of {sorted(heirs)}",
            interval=0.05,
            diagnostics=self._diagnostics,
        )
        elapsed = time.monotonic() - started
        # Not part of the measurement: let every survivor agree, so the caller's next
        # command works whichever node it reaches.
        wait_until(
            lambda: all(
                _cluster_info(n).get("cluster_state") == "ok" for n in self.nodes if n.is_running()
            ),
            timeout=timeout,
            what="cluster_state:ok on every surviving node",
            diagnostics=self._diagnostics,
        )
        return elapsed

    def stop(self) -> None:
        """Stop every node in parallel; idempotent."""
        stop_all(self.nodes)

    def __enter__(self) -> ClusterSetup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _cluster_node_args(port: int) -> list[str]:
    return [
        "--cluster-enabled", "yes",
        "--cluster-config-file", f"nodes-{port}.conf",
        "--cluster-node-timeout", "1000",
        *_FAST_SYNC_ARGS,
    ]  # fmt: skip


def start_cluster(
    workdir: Path, masters: int = 3, replicas_per_master: int = 0, *, timeout: float = 30.0
) -> ClusterSetup:
    """Start and create a cluster (needs the binaries); ready when returned."""
    if masters < 3:
        raise ValueError("Redis Cluster needs at least 3 masters")
    find_redis_server()  # fail with the install hint before starting anything
    cli = find_redis_cli()
    workdir = Path(workdir)
    nodes: list[RedisProcess] = []
    try:
        for _ in range(masters * (1 + replicas_per_master)):
            # Own subdir per node: nodes-<port>.conf and logs never clash.
            node = _start_on_free_port(
                lambda port: RedisProcess(
                    workdir / f"node-{port}", port, extra_args=_cluster_node_args(port)
                ),
                cluster_bus=True,
            )
            nodes.append(node)
        setup = ClusterSetup(nodes, replicas_per_master)
        _create_cluster(cli, setup, timeout)
        setup.wait_ready(timeout)
    except BaseException:
        stop_all(nodes)
        raise
    return setup


def _create_cluster(cli: str, setup: ClusterSetup, timeout: float) -> None:
    addresses = [f"{host}:{port}" for host, port in setup.startup_nodes]
    argv = [cli, "--cluster", "create", *addresses]
    argv += ["--cluster-replicas", str(setup.replicas_per_master), "--cluster-yes"]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise RedisStartError(
            f"`{' '.join(argv)}` did not finish in {timeout}s\n{setup._diagnostics()}"
        ) from exc
    if result.returncode != 0:
        raise RedisStartError(
            f"`{' '.join(argv)}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
