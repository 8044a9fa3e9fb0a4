# syntax=docker/dockerfile:1
# Images for the LangGraph sidecar proxy and for the example agent app, from one file:
#   docker build --target proxy -t langgraph-sidecar/proxy:0.1.0 .
#   docker build --target agent -t langgraph-sidecar/agent:0.1.0 .
# Dependencies come from deploy/docker/requirements-*.lock: every transitive package pinned with
# the sha256 of its wheels, installed with --require-hashes (regenerate with
# `python deploy/docker/lock.py` after changing pyproject.toml). Builds install wheels only
# (--only-binary), and the project itself with --no-index --no-build-isolation (its build backend is
# in the lock), so nothing unhashed is fetched and no compiler is needed in any stage.
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz on the admin port (see deploy/kubernetes/).
#
# The base is pinned by tag and by the digest of its multi-architecture index (amd64 + arm64), so a
# re-pushed tag cannot change what we build on. The digest was taken from public Dockerfiles that
# pin this tag (this repository's CI cannot pull images); verify and refresh it with
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm    # "Digest:" of the index
# (or `crane digest python:3.11.14-slim-bookworm`), then update the line below and rebuild;
# tests/deploy/test_deploy_dockerfile.py insists on tag@sha256.

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# Numeric uid/gid so the kubelet can verify runAsNonRoot.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app

# ---- build stages: a venv in /opt/venv; the final stages copy only that venv ----
FROM base AS build-proxy
WORKDIR /src
COPY deploy/docker/requirements-proxy.lock ./requirements.lock
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --no-compile --require-hashes --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# The proxy runs under -OO (no docstrings) with no column tables in its code objects: 1.6 MiB less
# idle RSS. That holds only if it never compiles at start-up, and the base image ships its standard
# library without any .pyc (its user could not write them either). So every module it can import,
# the standard library's and the venv's, is compiled here, at that level, into /opt/pycache; the
# final stage copies that tree and points PYTHONPYCACHEPREFIX at it. unchecked-hash: the image is
# immutable, so the .pyc files are used without looking at source timestamps.
# (tests/deploy/test_deploy_dockerfile.py starts the proxy so and finds no module compiled from source.)
RUN pip install --no-cache-dir --no-compile --no-deps --no-index --no-build-isolation . \
    && pip check \
    && python -c "import proxy, uvloop, httptools" \
    && export PYTHONPYCACHEPREFIX=/opt/pycache PYTHONNODEBUGRANGES=1 \
    && python -m compileall -q -j 0 -o 2 --invalidation-mode unchecked-hash \
       -x '/(test|tests|idle_test|site-packages)/' "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" \
    && python -m compileall -q -j 0 -o 2 --invalidation-mode unchecked-hash /opt/venv/lib

FROM base AS build-agent
WORKDIR /src
COPY deploy/docker/requirements-agent.lock ./requirements.lock
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY agent_app ./agent_app
# The agent extra's packages are already in the lock (lock.py --check proves it), so `.` suffices.
RUN pip install --no-cache-dir --no-deps --no-index --no-build-isolation . \
    && pip check \
    && python -c "import agent_app, langgraph, uvloop"

# ---- the sidecar proxy ----
FROM base AS proxy
COPY --from=build-proxy /opt/venv /opt/venv
COPY --from=build-proxy /opt/pycache /opt/pycache
# -OO and no column tables with the .pyc tree built above (see build-proxy). frozenlist's compiled
# extension is C++ and maps libstdc++ (0.9 MiB resident) for a list type the sidecar only uses at
# start-up (aiohttp's signals): its pure-Python twin does the same.
ENV PYTHONOPTIMIZE=2 \
    PYTHONNODEBUGRANGES=1 \
    PYTHONPYCACHEPREFIX=/opt/pycache \
    FROZENLIST_NO_EXTENSIONS=1
# a minimal safe default (no probes, nothing that costs LLM calls); mount your own over it
COPY deploy/docker/config.yaml /etc/sidecar/config.yaml
COPY deploy/docker/drain_wait.py /opt/sidecar/drain_wait.py
ENV PROXY_CONFIG=/etc/sidecar/config.yaml
USER 10001:10001
WORKDIR /tmp
# 8080 traffic, 9090 admin (/healthz /readyz /metrics /status; never expose it to clients)
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "proxy"]
CMD ["--config", "/etc/sidecar/config.yaml"]

# ---- the example LangGraph agent app ----
FROM base AS agent
COPY --from=build-agent /opt/venv /opt/venv
COPY deploy/docker/drain_wait.py /opt/sidecar/drain_wait.py
# SQLite checkpoints go to a volume (the root filesystem is read-only in Kubernetes).
ENV AGENT_DB=/data/agent.db
USER 10001:10001
WORKDIR /tmp
EXPOSE 2024
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "agent_app"]
CMD ["--host", "0.0.0.0", "--port", "2024"]
