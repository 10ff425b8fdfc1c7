# syntax=docker/dockerfile:1
# One image for the three services, the console and the operator's command line:
#   metering-ingest | metering-ledger | metering-quota | metering-console   (HTTP on $HTTP_PORT, 8000)
#   metering migrate | metering topics create             (one-off operator commands)
# Kubernetes sets the command (deploy/k8s); with none, the image prints the CLI's help.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Every distribution of requirements.lock, each checked against its hash. The lock also pins
# the dev extras (tests, linters) and has no runtime-only subset, and we do not generate a
# second lock that could drift from it. So everything is downloaded and verified here, and the
# install below resolves offline (--no-index) from these verified files only: each package
# gets its locked version, and only the project's runtime dependencies reach the image.
COPY requirements.lock /src/
RUN pip download --require-hashes --no-deps --only-binary=:all: \
        --dest /wheels --requirement /src/requirements.lock
COPY pyproject.toml README.md /src/
COPY metering /src/metering
COPY schemas /src/schemas
COPY services /src/services
COPY metering_litellm /src/metering_litellm
# A venv without pip or setuptools: the build's own pip installs into it. Same path in the
# final stage, since console scripts name their interpreter by absolute path.
RUN python -m venv --without-pip /opt/metering \
    && pip --python /opt/metering/bin/python install --no-index --find-links /wheels /src \
    && pip --python /opt/metering/bin/python check
# The entry points the manifests run (tests/deploy checks this list against pyproject.toml).
RUN for script in metering metering-ingest metering-ledger metering-quota metering-console; do \
        test -x "/opt/metering/bin/$script" || { echo "missing $script" >&2; exit 1; }; \
    done \
    && /opt/metering/bin/metering --help >/dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 metering \
    && useradd --system --uid 10001 --gid metering --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin metering
COPY --from=build /opt/metering /opt/metering
# Bytecode was compiled at install time; the root filesystem is read-only in Kubernetes.
ENV PATH=/opt/metering/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8000
USER 10001:10001
EXPOSE 8000
CMD ["metering", "--help"]
