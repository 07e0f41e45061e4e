# syntax=docker/dockerfile:1
# The Driftline worker image: `driftline worker` by default, any other subcommand with
# `docker run IMAGE <subcommand> ...`.  Every flag can be given as DRIFTLINE_<FLAG>.
#
# Two stages: the builder turns the project and its pinned dependencies (pyproject.toml
# pins every one with ==) into wheels, with a compiler at hand for any sdist; the runtime
# stage installs only those wheels, offline, and runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Metadata first: the dependency wheels stay cached while only the code changes.
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN python -m pip install pip==25.3 \
 && python -m pip wheel --wheel-dir /wheels '.[serve]'

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="driftline" \
      org.opencontainers.image.description="Streaming churn-scoring worker for Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    DRIFTLINE_METRICS_HOST=0.0.0.0 \
    DRIFTLINE_METRICS_PORT=9300 \
    DRIFTLINE_REGISTRY=/app/var/models
COPY --from=builder /wheels /wheels
RUN python -m pip install --no-index --find-links /wheels 'driftline[serve]' \
 && rm -rf /wheels \
 && groupadd --system --gid 10001 driftline \
 && useradd --system --uid 10001 --gid driftline --home-dir /app --shell /usr/sbin/nologin driftline \
 && mkdir -p /app/var/models \
 && chown -R driftline:driftline /app
WORKDIR /app
# /app/var/models is where `driftline train` registers models and the worker loads them;
# a named volume mounted there starts with this ownership.
VOLUME ["/app/var/models"]
USER 10001:10001
EXPOSE 9300
# Liveness only (/healthz: the main loop turns); readiness is /readyz.  One-shot commands
# run from this image (topics, train, simulate) should disable it in their service.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DRIFTLINE_METRICS_PORT', '9300'), timeout=4)"]
ENTRYPOINT ["driftline"]
CMD ["worker"]
