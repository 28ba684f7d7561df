# syntax=docker/dockerfile:1
# The image the Helm chart (charts/kdp-host) runs.
#
#   docker build -t kdp-host:0.1.0 .
#   docker build --build-arg EXTRA_APT_PACKAGES="pciutils usbutils" -t kdp-host:0.1.0-tools .
#
# Two stages: the builder turns the source into wheels (kdp-host and its dependencies); the
# final stage installs only those wheels, offline, on a slim Python with no compiler and no
# build tools. EXTRA_APT_PACKAGES adds the tools your probe scripts call (lspci, lsusb...).
#
# The process runs as root: registering with the kubelet means creating sockets in its
# root-owned device-plugin directory, and probes often open device nodes. The chart's
# `securityPreset: restricted` still drops every capability, privilege escalation and root
# filesystem writes.
#
# kdp-host is not an init: a probe killed at its timeout may leave orphans, which are
# reparented to PID 1. The chart sets shareProcessNamespace (the pause process reaps them);
# with plain docker, run the image with `docker run --init`.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kdp_host ./kdp_host
# kdp-host[uvloop]: uvloop is an optional, faster event loop (see the design notes).
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[uvloop]"

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG EXTRA_APT_PACKAGES=""
LABEL org.opencontainers.image.title="kdp-host" \
      org.opencontainers.image.description="An asyncio host for Kubernetes device plugins, driven by one YAML file" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN if [ -n "${EXTRA_APT_PACKAGES}" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends ${EXTRA_APT_PACKAGES} \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Install from the builder's wheels only (no index), then drop the packaging tools.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "kdp-host[uvloop]" \
    && pip uninstall -y setuptools wheel pip \
    && kdp-host version

# /metrics, /healthz, /readyz (config metrics.listen)
EXPOSE 9410
ENTRYPOINT ["kdp-host"]
# The chart mounts its ConfigMap at this path.
CMD ["run", "--config", "/etc/kdp-host/config.yaml"]
