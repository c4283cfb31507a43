# syntax=docker/dockerfile:1
# One image for every strongmoose process: the five services, the vendor agent and smctl.
#   docker build -t strongmoose:0.1.0 .
#   docker run --rm -e NATS_URL=... -e DATABASE_URL=... strongmoose:0.1.0 intake
#   docker run --rm -e STRONGMOOSE_SERVICE=settlement ... strongmoose:0.1.0
# deploy/entrypoint.sh maps the name to `python -m services.<name>` (or clients.agent); any other
# command runs as given. deploy/healthcheck.py is the health probe of compose and Kubernetes.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# the lock is a constraints file: the image gets exactly the versions CI tested
COPY pyproject.toml requirements.lock ./
COPY libs ./libs
COPY services ./services
COPY clients ./clients
RUN python -m venv /opt/strongmoose \
 && /opt/strongmoose/bin/pip install -c requirements.lock . \
 && /opt/strongmoose/bin/python -c "import services.intake.app, clients.agent.agent"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="strongmoose" \
      org.opencontainers.image.description="An open compute exchange: intake, matching, placement, metering, settlement and the vendor agent"
# no .pyc writes at run time: the root filesystem is read-only in compose and Kubernetes
ENV PATH=/opt/strongmoose/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# a fixed uid/gid so Kubernetes runAsUser/fsGroup and volume ownership can name it;
# /state is the vendor agent's state dir (a named volume copies this ownership when first mounted)
RUN groupadd --system --gid 10001 strongmoose \
 && useradd --system --uid 10001 --gid strongmoose --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin strongmoose \
 && mkdir -p /state \
 && chown strongmoose:strongmoose /state
COPY --from=build /opt/strongmoose /opt/strongmoose
WORKDIR /app
COPY deploy/entrypoint.sh deploy/healthcheck.py ./deploy/
USER 10001:10001
# through sh, so the script need not keep its executable bit in every checkout
ENTRYPOINT ["/bin/sh", "/app/deploy/entrypoint.sh"]
CMD []
