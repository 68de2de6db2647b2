# cachegate: the gRPC cache service, as a container image.
#
#   docker build -t cachegate .
#   docker run --rm -p 127.0.0.1:50051:50051 -p 127.0.0.1:9464:9464 cachegate
#
# Two stages: `build` turns the source into one wheel (hatchling, the `cachegate`
# namespace package from client/ and server/); `runtime` installs that wheel with the
# `server` extra into a virtualenv and runs it as an unprivileged user. No compiler and no
# source tree reach the runtime image: every dependency ships manylinux wheels.
#
# Base image: Python 3.11 on Debian 12 (bookworm), slim, pinned by the digest of its
# multi-platform index, so every build starts from the same bytes on amd64 and arm64.
# The digest was NOT verified on the machine that wrote this file (it had no registry
# access); it is the one public projects pin for this tag. Check or refresh it with
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm
# and pass another base with --build-arg PYTHON_IMAGE=... if needed.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# --- build: source -> wheel --------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is made of (pyproject.toml names README.md as the long description).
COPY pyproject.toml README.md ./
COPY client/cachegate/ client/cachegate/
COPY server/cachegate/ server/cachegate/
# pip builds in an isolated environment with the hatchling that pyproject.toml asks for.
RUN pip wheel --no-deps --wheel-dir /dist .

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="cachegate" \
      org.opencontainers.image.description="A gRPC cache API in front of a circuit-breaker-guarded Redis pool" \
      org.opencontainers.image.licenses="MIT"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/cachegate/bin:$PATH

# A fixed UID/GID (not a name), so Kubernetes' runAsNonRoot can check it and mounted
# volumes can be given to it. No home directory and no login shell: it only runs the server.
RUN groupadd --system --gid 10001 cachegate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin cachegate

# The wheel from the build stage, with the server's dependencies from PyPI, into a
# virtualenv owned by root (the server cannot modify its own code). pip compiles the
# .pyc files now, so nothing is written at run time (read-only root filesystems work).
COPY --from=build /dist/ /tmp/dist/
# (`set --` expands the glob to the one wheel's file name; `[server]` is then appended to it.)
RUN python -m venv /opt/cachegate \
 && set -- /tmp/dist/cachegate-*.whl \
 && /opt/cachegate/bin/pip install "$1[server]" \
 && rm -rf /tmp/dist \
 && cachegate-server --help > /dev/null \
 && cachegate-healthcheck --help > /dev/null

# Inside a container 127.0.0.1 is the container's own loopback: a server bound there (the
# defaults outside containers) could not be reached through a published port, a Service or
# a kubelet probe. So the image listens on every interface; publish ports deliberately
# (compose.yaml publishes them on the host's 127.0.0.1 only).
ENV CACHEGATE_LISTEN=0.0.0.0:50051 \
    CACHEGATE_HTTP_LISTEN=0.0.0.0:9464

# 50051: gRPC (cache API, grpc.health.v1, reflection). 9464: HTTP /metrics, /health/redis.
EXPOSE 50051 9464

USER 10001:10001

# Docker's health: the process ("" in grpc.health.v1), which stays SERVING through a Redis
# outage, so a Redis problem never gets the container restarted. It asks 127.0.0.1:50051:
# if you move CACHEGATE_LISTEN to another port, override the HEALTHCHECK as well.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["cachegate-healthcheck", "--target", "127.0.0.1:50051", "--timeout", "2"]

# SIGTERM starts the graceful stop (health NOT_SERVING, in-flight RPCs get
# CACHEGATE_GRACE_SECONDS, the pool closes). The JSON (exec) form makes cachegate-server
# PID 1 itself: the shell form would run it under `/bin/sh -c`, and sh does not pass
# SIGTERM on, so the server would be SIGKILLed at the end of the stop timeout instead.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cachegate-server"]
