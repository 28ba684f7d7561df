# syntax=docker/dockerfile:1
# The image the Helm chart (charts/kdp-host) runs.
#
#   docker build -t kdp-host:dev .
#   docker build --build-arg EXTRA_APT_PACKAGES="pciutils usbutils" -t kdp-host:dev-tools .
#   make image          # the same with podman/buildah, here (see README, "The image")
#
# Two stages: the builder installs the locked dependencies (requirements/image.txt, written by
# `make lock`: exact versions, every artifact's sha256, wheels only) and builds the kdp-host
# wheel; the final stage installs only those wheels, offline, on a slim Python with no compiler
# and no build tools. EXTRA_APT_PACKAGES adds the tools your probe scripts call (lspci, lsusb...).
#
# The base image is pinned by digest (the python-base stage below); Dependabot proposes new
# digests, and `make base-digest` resolves the tag's current digest and rewrites it by hand.
#
# The process runs as root: registering with the kubelet means creating sockets in its
# root-owned device-plugin directory, and probes often open device nodes. The chart's
# `securityPreset: restricted` still drops every capability, privilege escalation and root
# filesystem writes.
#
# kdp-host is not an init: a probe killed at its timeout may leave orphans, which are
# reparented to PID 1. The chart sets shareProcessNamespace (the pause process reaps them);
# with plain docker, run the image with `docker run --init`.

# The base, pinned by digest (tag for humans, digest for machines) in a FROM line of its own:
# Dependabot's docker updater reads FROM lines, not ARG defaults. PYTHON_IMAGE names that
# stage by default; a build argument replaces it (`make image` passes a local stand-in).
ARG PYTHON_IMAGE=python-base
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS python-base

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
# Every dependency and the build backend: pinned, hash-checked wheels, never an sdist; then the
# builder installs exactly that set (the locked setuptools replaces any the base image has).
COPY requirements/image.txt ./requirements/
RUN pip wheel --no-cache-dir --require-hashes --only-binary=:all: --no-deps \
        --wheel-dir /wheels -r requirements/image.txt \
    && pip install --no-cache-dir --no-index --find-links /wheels --require-hashes \
        -r requirements/image.txt
COPY pyproject.toml README.md LICENSE NOTICE ./
COPY kdp_host ./kdp_host
# Built with the locked setuptools just installed (no isolated, unpinned build environment).
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG EXTRA_APT_PACKAGES=""
LABEL org.opencontainers.image.title="kdp-host" \
      org.opencontainers.image.description="An asyncio host for Kubernetes device plugins, driven by one YAML file" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The caller names (and may pin, `name=version`) the extra packages.
# hadolint ignore=DL3008
RUN if [ -n "${EXTRA_APT_PACKAGES}" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends ${EXTRA_APT_PACKAGES} \
        && apt-get clean && rm -rf /var/lib/apt/lists/*; \
    fi

# The PCI and USB ID databases `kdp-host discover` names devices from. `apt-get clean`: a base
# without the official image's docker-clean hook keeps the downloaded archives and apt's
# caches (78 MB here).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends pci.ids usb.ids \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

# Install from the builder's wheels only (no index), then drop the packaging tools. Pinned to
# VERSION, so the label is the version of the package installed (a wrong --build-arg fails).
# kdp-host[uvloop]: uvloop is an optional, faster event loop (see the design notes).
# The last step proves the base image has the exec wrapper commands die with the host
# through (util-linux's setpriv with --pdeathsig, and /bin/sh): the build fails otherwise.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "kdp-host[uvloop]==${VERSION}" \
    && pip uninstall -y setuptools wheel pip \
    && kdp-host version \
    && setpriv --pdeathsig KILL -- /bin/sh -c true

# /metrics, /healthz, /readyz (config metrics.listen)
EXPOSE 9410
ENTRYPOINT ["kdp-host"]
# The chart mounts its ConfigMap at this path.
CMD ["run", "--config", "/etc/kdp-host/config.yaml"]
