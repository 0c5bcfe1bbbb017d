# syntax=docker/dockerfile:1
# The operator image: the base install only (kopf, kubernetes, pydantic, prometheus-client; no torch), run as
# uid 10001. Build from the repository root: docker build -t finetune-operator:0.1.0 .
#
# Base pinned by version tag: python 3.11 (the project's floor), Debian 13 slim. A digest (tag@sha256:...) would
# make rebuilds bit-for-bit reproducible, but no registry is reachable from where this file was written, so none
# could be looked up: pin it with `docker buildx imagetools inspect python:3.11.14-slim-trixie` when you build.
# tests/integration/test_images.py runs the `pip install` lines below in a fresh venv, so keep them self-contained.
FROM python:3.11.14-slim-trixie AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
COPY trainer_image/src ./trainer_image/src
# A venv so the runtime stage copies exactly what was installed; the source tree and pip's caches stay here.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt .

FROM python:3.11.14-slim-trixie
# The operator is health-checked by Kubernetes probes on its HTTP endpoints (the Helm chart); Docker's
# HEALTHCHECK is ignored by Kubernetes, so none is declared here.
# checkov:skip=CKV_DOCKER_2: Kubernetes probes in the Helm chart check health; Docker HEALTHCHECK is unused there
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin finetune
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["finetune"]
CMD ["operator"]
